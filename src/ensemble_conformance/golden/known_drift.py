"""Known drift: golden comparisons a release is known to fail, each with its reason.

A file holds one entry a line, a case-id pattern and the reason after ``#``:

    ensemble_bf16-*          # jax 0.4.31 draws bfloat16 values other than jax 0.4.38 does
    per_input-s0-n[28]-d7-*  # ...

Patterns are shell-style (fnmatch): ``*`` any text, ``?`` one character, ``[28]`` one of
the characters listed, ``[!28]`` one not listed; an unbalanced ``[`` is an error. They
match core case ids and lifecycle scenario ids alike.

The suite marks matching golden comparisons as expected failures, strictly: one that
passes is an error, so a fixed drift must leave the list. Only value drift is expected: a
golden that cannot be read or trusted (a changed sha256, NaN, a newer format) fails
whatever the list says. Patterns that match no case are reported. Blank lines and lines
starting with ``#`` are ignored.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    pattern: str
    reason: str
    line: int


def parse(path: Path) -> list[Entry]:
    """The entries of a known-drift file; a line without a reason is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not a text file ({err.reason} at byte {err.start}); expected lines 'CASE-PATTERN  # reason'"
        ) from err
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition("#")
        if not sep or not reason.strip() or not pattern.strip():
            raise ValueError(f"{path}:{number}: expected 'CASE-PATTERN  # reason', got {raw!r}")
        if _unbalanced(pattern.strip()):
            raise ValueError(
                f"{path}:{number}: pattern {pattern.strip()!r} opens a '[' class it never closes; "
                "write [abc] for one of a, b, c, or [[] for a literal ["
            )
        entries.append(Entry(pattern.strip(), reason.strip(), number))
    return entries


def _unbalanced(pattern: str) -> bool:
    """Whether a '[' starts no class (fnmatch would then match it literally, silently)."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            close = pattern.find("]", j)
            if close < 0:
                return True
            i = close
        i += 1
    return False


def match(entries: Iterable[Entry], case_id: str) -> Entry | None:
    return next((e for e in entries if fnmatch.fnmatchcase(case_id, e.pattern)), None)


def unused(entries: Iterable[Entry], case_ids: Iterable[str]) -> list[Entry]:
    ids = list(case_ids)
    return [e for e in entries if not any(fnmatch.fnmatchcase(i, e.pattern) for i in ids)]
