"""Canonical JSON: one string per value, so equal objects hash and compare equal.

Owned by the pure layer (ranking groups settings by their canonical params) and
re-exported as :func:`featcache.provenance.canonical_json` for cache keys and records.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical_json"]


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
