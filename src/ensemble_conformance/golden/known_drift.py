"""Known drift: golden comparisons a release is known to fail, each with its reason.

A file holds one entry a line, a case-id pattern (fnmatch: ``*`` and ``?``) and the
reason after ``#``:

    ensemble_bf16-*   # jax 0.4.31 draws bfloat16 values other than jax 0.4.38 does

The suite marks matching golden comparisons as expected failures, strictly: one that
passes is an error, so a fixed drift must leave the list. Patterns that match no case are
reported. Blank lines and lines starting with ``#`` are ignored.
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
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        pattern, sep, reason = text.partition("#")
        if not sep or not reason.strip() or not pattern.strip():
            raise ValueError(f"{path}:{number}: expected 'CASE-PATTERN  # reason', got {raw!r}")
        entries.append(Entry(pattern.strip(), reason.strip(), number))
    return entries


def match(entries: Iterable[Entry], case_id: str) -> Entry | None:
    return next((e for e in entries if fnmatch.fnmatchcase(case_id, e.pattern)), None)


def unused(entries: Iterable[Entry], case_ids: Iterable[str]) -> list[Entry]:
    ids = list(case_ids)
    return [e for e in entries if not any(fnmatch.fnmatchcase(i, e.pattern) for i in ids)]
