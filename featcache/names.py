"""Validation of names that become store keys (backbone, dataset, split, task, metric)."""

from __future__ import annotations

import re

from featcache.errors import InvalidNameError

#: A slug: starts with a letter or digit, then letters, digits and ``_ . - @ +``.
#: No separators, nothing absolute, never ``..``; at most 128 characters.
SLUG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}")


def validate_name(name: object, kind: str = "name") -> str:
    """Return ``name`` if it is a safe slug, else raise :class:`InvalidNameError`.

    >>> validate_name("dino_vitb", "backbone")
    'dino_vitb'
    """
    if not isinstance(name, str) or not SLUG_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"Invalid {kind} name {name!r}: use letters, digits and '_ . - @ +' "
            "(no '/', '\\', '..', spaces, or leading punctuation; at most 128 characters)."
        )
    return name
