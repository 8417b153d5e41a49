"""The policy glob: ``*`` is the only metacharacter (control.md §6.2).

``*`` matches any run of characters, including the empty run, and crosses
``/``. There is no escaping, no ``?`` and no character class; matching is on
raw, case-sensitive strings.
"""

from __future__ import annotations


def has_wildcard(pattern: str) -> bool:
    """True if ``pattern`` contains a ``*`` (it is not an exact literal)."""
    return "*" in pattern


def glob_match(pattern: str, subject: str) -> bool:
    """Return whether ``subject`` matches ``pattern``.

    The empty pattern matches only the empty string; a pattern without ``*``
    is compared for equality; otherwise the subject must start with the
    first piece, end with the last, and contain the middle pieces in order,
    without overlap (leftmost search).
    """
    if "*" not in pattern:
        return pattern == subject
    if pattern == "*":
        return True
    pieces = pattern.split("*")
    first, last = pieces[0], pieces[-1]
    if len(subject) < len(first) + len(last):
        return False
    if not subject.startswith(first) or not subject.endswith(last):
        return False
    pos = len(first)
    end = len(subject) - len(last)
    for piece in pieces[1:-1]:
        if not piece:
            continue
        found = subject.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True
