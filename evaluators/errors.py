"""The one error hierarchy of bobx.

It lives in the pure layer because evaluators raise these errors too and must not
import the store package; :mod:`featcache.errors` re-exports every name.
Every user-facing failure is a :class:`BobxError`. The CLI prints its message on
one line (no traceback) and exits with status 2, so each message says what went
wrong *and* how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BobxError(Exception):
    """Root of every error bobx raises on purpose."""


class InvalidNameError(BobxError, ValueError):
    """A name that would become a store key is not a safe slug."""


class UnknownNameError(BobxError, KeyError):
    """A backbone / dataset / feature set / metric name that does not exist."""

    def __init__(self, kind: str, name: str, choices: Iterable[str] = (), hint: str = "") -> None:
        self.kind, self.name = kind, name
        self.choices = sorted(set(choices))
        msg = f"Unknown {kind} {name!r}."
        near = suggest(name, self.choices)
        if near:
            msg += " Did you mean " + ", ".join(repr(c) for c in near) + "?"
        elif self.choices and len(self.choices) <= 12:
            msg += " Known: " + ", ".join(self.choices) + "."
        if hint:
            msg += " " + hint
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class IncompleteError(BobxError):
    """A feature set exists but is not (yet) published complete."""


class StaleCacheError(BobxError):
    """A feature set exists with a different cache key."""


class StoreError(BobxError):
    """The store cannot be opened, read or written."""


class IntegrityError(StoreError):
    """Stored data that is damaged: a lost chunk object, metadata that disagrees with its spec."""


class ShapeError(BobxError, ValueError):
    """Arrays whose shapes or dtypes do not fit together."""


class ManifestError(BobxError):
    """A backbone / dataset manifest (YAML) is invalid."""


class DataError(BobxError):
    """Input data (an image, a pickle, a CSV) is missing, corrupt or malformed."""


class UnavailableError(BobxError):
    """Something known that cannot run here (missing package, offline weights, no GPU)."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` near-miss names for ``name`` (case-insensitive)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]
