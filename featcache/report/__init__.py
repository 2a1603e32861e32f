"""The HTML report (``bobx report``): one self-contained page from a store.

>>> from featcache.report import build_report
>>> build_report(store, "report.html")  # doctest: +SKIP
"""

from featcache.report.build import build_report, redact_url, render_report, report_context

__all__ = ["build_report", "redact_url", "render_report", "report_context"]
