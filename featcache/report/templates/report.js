"use strict";
// Sortable tables: click (or Enter on) a header. Numbers sort as numbers (each cell's
// data-sort holds the exact value), text as text; empty cells stay last either way.
(function () {
  function sortKey(cell) {
    const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    if (raw === "") return null;
    const n = Number(raw);
    return Number.isNaN(n) ? raw.toLowerCase() : n;
  }
  function compare(a, b) {
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === "number" ? -1 : 1;
  }
  function sortTable(table, index, th) {
    const current = th.getAttribute("aria-sort");
    const first = th.dataset.first === "desc" ? "descending" : "ascending";
    const order = current ? (current === "ascending" ? "descending" : "ascending") : first;
    const sign = order === "ascending" ? 1 : -1;
    const body = table.tBodies[0];
    const rows = Array.from(body.rows, (row, i) => ({ row: row, i: i, key: sortKey(row.cells[index]) }));
    rows.sort(function (x, y) {
      if (x.key === null || y.key === null) {
        return (x.key === null) - (y.key === null) || x.i - y.i;
      }
      return sign * compare(x.key, y.key) || x.i - y.i;
    });
    for (const h of table.tHead.rows[0].cells) h.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", order);
    for (const r of rows) body.appendChild(r.row);
  }
  for (const table of document.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach(function (th, index) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortTable(table, index, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          sortTable(table, index, th);
        }
      });
    });
  }
})();
