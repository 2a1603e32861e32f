"""Open a local HTML file in a real headless Chromium (Debian's ``chromium``) via Playwright.

Playwright drives the system browser through ``executable_path``; it downloads nothing.
:func:`open_page` loads the file, records console messages, uncaught page errors and every
network request, and takes a screenshot. ``skip_reason()`` says why the browser tests cannot
run here (no Chromium, or no Playwright), for ``pytest.mark.skipif``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where Chromium is looked for: $BOBX_CHROMIUM, then the PATH (Debian: /usr/bin/chromium).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    env = os.environ.get("BOBX_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if chromium_path() is None:
        return (
            "Chromium not found: apt-get install chromium (as root; `make test` does it when "
            "it can) or set BOBX_CHROMIUM=/path/to/chromium"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[dev]'"
    return None


@dataclass
class PageVisit:
    """What happened while the page loaded."""

    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    errors: list[str] = field(default_factory=list)  # uncaught exceptions
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    failed: list[str] = field(default_factory=list)  # requests that failed

    def external_requests(self, page_url: str) -> list[str]:
        """Requests other than the page itself and inline data."""
        return [u for u in self.requests if u != page_url and not u.startswith(("data:", "blob:"))]


@contextmanager
def open_page(
    path: Path, *, width: int = 1280, height: int = 900
) -> Iterator[tuple[Any, PageVisit, str]]:
    """Load ``path`` in headless Chromium; yields ``(page, visit, url)`` with the page loaded
    (``load`` event and network idle). Requests leaving the machine are aborted, so a page
    that needs the network shows it in ``visit.failed`` as well as in ``visit.requests``."""
    from playwright.sync_api import sync_playwright

    url = path.resolve().as_uri()
    visit = PageVisit()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: visit.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: visit.errors.append(str(e)))
            page.on("requestfailed", lambda r: visit.failed.append(r.url))

            def route(r: Any) -> None:
                visit.requests.append(r.request.url)
                if r.request.url.startswith(("file:", "data:", "blob:")):
                    r.continue_()
                else:
                    r.abort()

            page.route("**/*", route)
            page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            yield page, visit, url
        finally:
            browser.close()


def screenshot_stats(png: bytes) -> dict[str, float]:
    """Grey-level spread and colour count of a screenshot (a blank page has ~0 and 1)."""
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = np.asarray(image)
    grey = pixels.mean(axis=2)
    return {
        "std": float(grey.std()),
        "colours": float(len(np.unique(pixels.reshape(-1, 3), axis=0))),
        "non_white": float((grey < 250).mean()),
        "width": float(image.width),
        "height": float(image.height),
    }


def save_small_png(png: bytes, path: Path, *, colours: int = 96) -> Path:
    """Save a screenshot as a small palette PNG (for the README)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    small = image.quantize(
        colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    small.save(path, optimize=True)
    return path


def rows_of(page: Any, table_id: str, column: int) -> list[str]:
    """The ``data-sort`` (else the text) of one column of a table, top to bottom."""
    return list(
        page.eval_on_selector_all(
            f"#{table_id} tbody tr",
            "(rows, col) => rows.map(r => { const c = r.cells[col];"
            " return c.dataset.sort !== undefined ? c.dataset.sort : c.textContent.trim(); })",
            column,
        )
    )
