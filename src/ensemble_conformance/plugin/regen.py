"""A project's regeneration inside a pytest run (``--regen``, ``--regen-all``): the cases
that are missing, damaged or failing (``--regen-all``: every selected one) are staged while
the run goes, then written in one transaction at its end, under the golden directory's lock.
It runs in one process and, where the project names its reference pins (ini
``ensemble_reference_pins``), only on them unless ``--regen-force``."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ensemble_conformance.golden.compare import non_finite
from ensemble_conformance.golden.pins import pin_mismatches
from ensemble_conformance.golden.store import GoldenError, GoldenStore, atomic_writer

if TYPE_CHECKING:
    from ensemble_conformance.scenarios.lifecycle import ScenarioRecord


def regen_mode(config: pytest.Config) -> str | None:
    """ "all" with --regen-all, "failing" with --regen, None otherwise."""
    if config.getoption("--regen-all"):
        return "all"
    return "failing" if config.getoption("--regen") else None


def project_pin_mismatches(config: pytest.Config) -> list[str]:
    """The project's ``ensemble_reference_pins`` (``name==version`` lines) this environment
    does not have; empty when none are named."""
    wanted, have = {}, {}
    for line in config.getini("ensemble_reference_pins"):
        name, sep, version = (part.strip() for part in line.partition("=="))
        if not sep or not name or not version:
            raise pytest.UsageError(f"ini option ensemble_reference_pins: {line!r} is not NAME==VERSION")
        wanted[name] = version
        try:
            have[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            have[name] = "not installed"
    return pin_mismatches(wanted, have)


@dataclass
class Regeneration:
    mode: str  # "failing" or "all"
    staged: list[tuple[ScenarioRecord, str]] = field(default_factory=list)  # (record, why)
    censuses: list[tuple[Path, bytes, str]] = field(default_factory=list)  # (file, contents, why)
    written: list[str] = field(default_factory=list)
    censuses_written: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, config: pytest.Config, mode: str) -> Regeneration:
        """Refuse a regeneration that could not be one transaction, or is off the reference pins."""
        workers = getattr(config.option, "numprocesses", None)
        if workers not in (None, 0) or hasattr(config, "workerinput"):
            raise pytest.UsageError(
                f"--regen{'-all' if mode == 'all' else ''} writes every golden in one transaction, in one process: "
                "drop -n (pytest-xdist)"
            )
        mismatches = project_pin_mismatches(config)
        if mismatches and not config.getoption("--regen-force"):
            raise pytest.UsageError(
                "refusing to regenerate: this environment is not the project's reference pins "
                "(ini ensemble_reference_pins):\n  " + "\n  ".join(mismatches) + "\ninstall them, or pass --regen-force"
            )
        return cls(mode)

    def stage(self, record: ScenarioRecord, state: str) -> None:
        bad = [key for key, value in record.arrays().items() if non_finite(value)[0]]
        if bad:
            pytest.fail(
                f"ensemble-conformance: {record.case.id}: not regenerated, the run holds NaN or infinity in "
                f"{', '.join(bad)}; a golden must be finite",
                pytrace=False,
            )
        self.staged.append((record, state))

    def stage_census(self, path: Path, data: bytes, state: str) -> None:
        self.censuses.append((path, data, state))

    def commit(self, store: GoldenStore, env: dict[str, Any]) -> bool:
        """Write what the run staged, all at once; False (and a message) when that fails."""
        self.written.clear()
        self.censuses_written.clear()
        if not self.staged and not self.censuses:
            return True
        try:
            store.directory.mkdir(parents=True, exist_ok=True)
            with store.transaction(600.0, on_wait=print) as txn:
                for record, state in self.staged:
                    if txn.write(record, env):
                        self.written.append(f"{record.case.id}: {state}")
                for path, data, state in self.censuses:  # each file atomic, under the same lock
                    with atomic_writer(path) as f:
                        f.write(data)
                    self.censuses_written.append(f"{path.stem} (cost census): {state}")
        except (GoldenError, OSError) as err:
            where = store.directory
            print(f"ensemble-conformance: regeneration failed, the goldens in {where} are as they were: {err}")
            self.written.clear()
            self.censuses_written.clear()
            return False
        return True

    def summary(self, terminalreporter: Any, store: GoldenStore) -> None:
        terminalreporter.section("regenerated goldens", sep="-", green=True)
        for line in self.written:
            terminalreporter.write_line(line)
        kept = len(self.staged) - len(self.written)
        terminalreporter.write_line(
            f"{len(self.written)} golden(s) written to {store.directory}"
            + (f", {kept} rewritten unchanged" if kept else "")
        )
        for line in self.censuses_written:
            terminalreporter.write_line(line)
        if self.censuses_written:
            terminalreporter.write_line(
                f"{len(self.censuses_written)} cost census(es) written to {store.directory / 'cost'}"
            )
        errors = sorted(record.case.id for record, _ in self.staged if record.outcome.kind != "values")
        if errors:
            terminalreporter.write_line(
                f"WARNING: {len(errors)} golden(s) record an error, not values ({', '.join(errors)}): the step gives "
                "no values, so its golden-free checks skip. Fix the step and regenerate, unless the error is what "
                "you mean to pin.",
                red=True,
                bold=True,
            )
