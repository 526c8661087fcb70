"""Find the first release where the suite's verdict changes. Standard library only, so
the noxfile can load it before anything is installed.

The caller supplies the releases (oldest first) and a check ``changed(version) -> bool``
that says whether the suite, run on that release, differs from the good release. The
search assumes that once a release differs, every later one does too (as ``git bisect``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_RELEASE = re.compile(r"^\d+(\.\d+)*$")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def releases_from_pip_index(text: str) -> list[str]:
    """Final releases listed by ``pip index versions NAME`` ('Available versions: a, b'),
    oldest first; pre-releases and anything unparsable are left out."""
    for line in text.splitlines():
        if line.strip().startswith("Available versions:"):
            found = [v.strip() for v in line.split(":", 1)[1].split(",")]
            return sorted((v for v in found if _RELEASE.match(v)), key=version_tuple)
    raise ValueError("no 'Available versions:' line in the pip index output")


def between(releases: Sequence[str], good: str, bad: str) -> list[str]:
    """The releases from good to bad, both included, oldest first."""
    lo, hi = version_tuple(good), version_tuple(bad)
    if lo >= hi:
        raise ValueError(f"--good {good} must be older than --bad {bad}")
    chosen = [v for v in releases if lo <= version_tuple(v) <= hi]
    missing = [v for v in (good, bad) if v not in chosen]
    if missing:
        raise ValueError(f"not a published release: {', '.join(missing)}")
    return chosen


def first_changed(releases: Sequence[str], changed: Callable[[str], bool], log: Callable[[str], None] = print) -> str:
    """The oldest release where ``changed`` holds, given that releases[0] is good and
    releases[-1] is bad (checked first). Calls ``changed`` about log2(len) times."""
    if changed(releases[0]):
        raise ValueError(f"the good release {releases[0]} already differs from itself: the check is unstable")
    if not changed(releases[-1]):
        raise ValueError(f"the bad release {releases[-1]} does not differ: nothing to find")
    lo, hi = 0, len(releases) - 1  # releases[lo] good, releases[hi] bad
    while hi - lo > 1:
        mid = (lo + hi) // 2
        verdict = changed(releases[mid])
        log(f"{releases[mid]}: {'changed' if verdict else 'same as good'} ({hi - lo - 1} release(s) left between)")
        if verdict:
            hi = mid
        else:
            lo = mid
    return releases[hi]
