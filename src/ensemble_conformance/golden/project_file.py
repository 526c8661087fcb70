"""A project's own settings for its goldens, in one TOML data file (``conformance.toml`` at
the project's root, or the ini option ``ensemble_project_file``):

    # Tolerance overrides: a lifecycle tolerance class (tolerances.py) widened or narrowed for
    # this project, with the reason; shown in the report header and in every failure.
    [tolerances.out]
    k = 64
    reason = "our head sums 64 logits"

    # Accepted outcomes per release: on the releases ``when`` names, a case matching ``case``
    # is expected to give ``outcome`` instead of its golden, so an accepted change does not
    # fail every later gate.
    [[accepted]]
    case = "mlp.dropout_forward-*"        # fnmatch pattern over case ids
    when = "flax<0.11"                    # requirements on installed packages, comma-separated
    outcome = "raises ValueError"         # "raises", "raises <message prefix>", "unavailable"
    reason = "flax 0.10 shares one Rngs among the members; production pins flax >= 0.11"

A class override replaces the fields it gives (``k``, ``ulps`` or ``exact``). An accepted
entry covers an outcome only (an error or a missing API): values that move on a release are
a new golden, made by regeneration. This module reads and validates the file and knows
nothing of pytest.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from ensemble_conformance.golden.tolerances import LIFECYCLE_CLASSES, ArrayClass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Accepted", "ProjectFile", "ProjectFileError", "load"]

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9_.\-]+)\s*((?:[<>=!~]=?|===)\s*[^,]+)\s*")
_OUTCOMES = ("raises", "unavailable")


class ProjectFileError(ValueError):
    """The project file cannot be used: names the file, the entry and what is accepted."""


@dataclass(frozen=True)
class Accepted:
    """An outcome accepted on some releases for the cases a pattern matches."""

    case: str
    when: tuple[tuple[str, str], ...]  # (package, specifier)
    outcome: str
    reason: str

    def applies(self, case_id: str, versions: dict[str, str] | None = None) -> bool:
        """Whether this entry covers ``case_id`` on the installed releases (or ``versions``)."""
        from packaging.specifiers import SpecifierSet

        if not fnmatch.fnmatchcase(case_id, self.case):
            return False
        for package, specifier in self.when:
            have = (versions or {}).get(package) or _installed(package)
            if have is None or not SpecifierSet(specifier).contains(have, prereleases=True):
                return False
        return True

    def matches(self, kind: str, error: str) -> bool:
        """Whether an outcome (kind, error) is the accepted one."""
        head, _, prefix = self.outcome.partition(" ")
        if kind != head:
            return False
        return error.startswith(prefix.strip()) if prefix.strip() else True

    def describe(self) -> str:
        when = ", ".join(f"{p}{s}" for p, s in self.when)
        return f"{self.case} on {when}: {self.outcome} ({self.reason})"


@dataclass(frozen=True)
class ProjectFile:
    path: Path | None = None
    classes: tuple[tuple[str, ArrayClass], ...] = ()  # overridden tolerance classes
    accepted: tuple[Accepted, ...] = ()

    @property
    def overrides(self) -> dict[str, ArrayClass]:
        return dict(self.classes)

    def accepted_for(self, case_id: str) -> Accepted | None:
        return next((entry for entry in self.accepted if entry.applies(case_id)), None)

    def header(self) -> list[str]:
        """The report header's lines: every override and accepted outcome, with its reason."""
        lines = [f"tolerance {name}: {cls.rule('float32')} ({cls.reason})" for name, cls in self.classes]
        lines += [f"accepted: {entry.describe()}" for entry in self.accepted]
        return lines


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _problem(path: Path, where: str, got: Any, accepted: str) -> ProjectFileError:
    return ProjectFileError(f"{path}: {where}: got {got!r}; accepted: {accepted}")


def _string(path: Path, where: str, table: dict[str, Any], key: str, accepted: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _problem(path, f"{where}.{key}", value, accepted)
    return value.strip()


def _class(path: Path, name: str, table: Any) -> ArrayClass:
    where = f"tolerances.{name}"
    if name not in LIFECYCLE_CLASSES:
        raise _problem(path, "tolerances", name, f"a table per tolerance class: {', '.join(LIFECYCLE_CLASSES)}")
    if not isinstance(table, dict):
        raise _problem(path, where, table, "a table with k, ulps or exact, and reason")
    unknown = sorted(set(table) - {"k", "ulps", "exact", "reason"})
    if unknown:
        raise _problem(path, where, unknown, "the keys k, ulps, exact and reason")
    reason = _string(path, where, table, "reason", "a non-empty string: why this project needs it")
    given = [key for key in ("k", "ulps", "exact") if key in table]
    if len(given) != 1:
        raise _problem(path, where, given, "exactly one of k (a number > 0), ulps (an int >= 0), exact (true)")
    (key,) = given
    value = table[key]
    base = replace(LIFECYCLE_CLASSES[name], exact=False, ulps=None, k=0.0, reason=f"project: {reason}")
    if key == "k" and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return replace(base, k=float(value))
    if key == "ulps" and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return replace(base, ulps=value)
    if key == "exact" and value is True:
        return replace(base, exact=True)
    raise _problem(path, f"{where}.{key}", value, "k: a number > 0; ulps: an int >= 0; exact: true")


def _accepted(path: Path, i: int, entry: Any) -> Accepted:
    where = f"accepted[{i}]"
    if not isinstance(entry, dict):
        raise _problem(path, where, entry, "a table with case, when, outcome and reason")
    unknown = sorted(set(entry) - {"case", "when", "outcome", "reason"})
    if unknown:
        raise _problem(path, where, unknown, "the keys case, when, outcome and reason")
    case = _string(path, where, entry, "case", "a case id or fnmatch pattern (mlp.train-*)")
    when_text = _string(path, where, entry, "when", 'requirements such as "flax>=0.13" or "jax<0.8, flax==0.10.7"')
    when = []
    for part in when_text.split(","):
        match = _REQUIREMENT.fullmatch(part)
        if match is None:
            raise _problem(path, f"{where}.when", part.strip(), 'NAME followed by a specifier: "flax>=0.13"')
        when.append((match.group(1).lower(), match.group(2).replace(" ", "")))
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    for package, specifier in when:
        try:
            SpecifierSet(specifier)
        except InvalidSpecifier:
            raise _problem(path, f"{where}.when", f"{package}{specifier}", "a PEP 440 specifier") from None
    outcome = _string(path, where, entry, "outcome", '"raises", "raises <message prefix>" or "unavailable"')
    if outcome.split(" ", 1)[0] not in _OUTCOMES:
        raise _problem(
            path,
            f"{where}.outcome",
            outcome,
            '"raises", "raises <message prefix>" or "unavailable" (values that move are a new golden: regenerate)',
        )
    reason = _string(path, where, entry, "reason", "a non-empty string: why this outcome is accepted")
    return Accepted(case, tuple(when), outcome, reason)


def load(path: Path | None) -> ProjectFile:
    """The project file at ``path``; an empty one where there is none."""
    if path is None or not path.exists():
        return ProjectFile(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ProjectFileError(f"{path}: not a text file (a TOML project file is expected)") from None
    except tomllib.TOMLDecodeError as err:
        raise ProjectFileError(f"{path}: not valid TOML: {err}") from None
    unknown = sorted(set(data) - {"tolerances", "accepted"})
    if unknown:
        raise _problem(path, "top level", unknown, "the tables [tolerances.<class>] and [[accepted]]")
    tolerances = data.get("tolerances", {})
    if not isinstance(tolerances, dict):
        raise _problem(path, "tolerances", tolerances, "tables [tolerances.<class>]")
    accepted = data.get("accepted", [])
    if not isinstance(accepted, list):
        raise _problem(path, "accepted", accepted, "an array of tables [[accepted]]")
    classes = tuple((name, _class(path, name, table)) for name, table in tolerances.items())
    return ProjectFile(path, classes, tuple(_accepted(path, i, entry) for i, entry in enumerate(accepted)))
