"""The one regeneration path (``--regen``, ``--regen-all``): the cases that are missing,
damaged or failing (``--regen-all``: every selected one) are staged while the run goes, then
written in one transaction at its end, under the golden directory's lock. It runs in one
process, and only on the reference pins unless ``--regen-force``: a project's (ini
``ensemble_reference_pins``), or for the reference suite its PRNG epoch's (golden/pins.py;
the repository's ``nox -s regen`` is this run of the suite, tools/regen.py).

All or nothing: where a case cannot be regenerated (a golden of a newer format, a run that
holds NaN or infinity, a golden test that fails to run), its test fails and nothing is
written."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from ensemble_conformance.golden.compare import non_finite
from ensemble_conformance.golden.pins import pin_mismatches
from ensemble_conformance.golden.store import GoldenError, GoldenStore, Storable, atomic_writer


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
    staged: list[tuple[Storable, str]] = field(default_factory=list)  # (record, why)
    censuses: list[tuple[Path, bytes, str]] = field(default_factory=list)  # (file, contents, why)
    prune: list[str] = field(default_factory=list)  # golden ids no case uses, removed in the same transaction
    recovered: list[str] = field(default_factory=list)  # what completing a killed regeneration did
    refused: list[str] = field(default_factory=list)  # "<case id>: why": nothing is written
    lines: list[str] = field(default_factory=list)  # "<case id>: what the commit did", every staged case
    written: list[str] = field(default_factory=list)
    censuses_written: list[str] = field(default_factory=list)
    error: str = ""  # why the commit wrote nothing

    @property
    def unchanged(self) -> int:
        """How many staged cases the commit found already stored byte for byte."""
        return len(self.lines) - len(self.written)

    @classmethod
    def start(cls, config: pytest.Config, mode: str, store: GoldenStore, mismatches: list[str]) -> Regeneration:
        """Refuse a regeneration that could not be one transaction, or is off the reference pins
        (``mismatches``, how this environment differs from them); then, under the directory's
        lock, complete a regeneration that was killed past its commit point, so that every case
        reads the goldens it left."""
        flag = "--regen-all" if mode == "all" else "--regen"
        workers = getattr(config.option, "numprocesses", None)
        if workers not in (None, 0) or hasattr(config, "workerinput"):
            raise pytest.UsageError(
                f"{flag} writes every golden in one transaction, in one process: drop -n (pytest-xdist)"
            )
        if mismatches and not config.getoption("--regen-force"):
            raise pytest.UsageError(
                "refusing to regenerate: this environment is not the reference pins the goldens are made on:\n  "
                + "\n  ".join(mismatches)
                + "\ninstall them, or pass --regen-force to write goldens from this environment anyway"
            )
        try:
            with store.lock(600.0, on_wait=print):
                recovered = store.recover()
        except GoldenError as err:
            raise pytest.UsageError(
                f"{flag}: {err}\nNothing was regenerated: the goldens in {store.directory} are as they were."
            ) from None
        return cls(mode, recovered=recovered)

    def stage(self, record: Storable, state: str) -> None:
        bad = [key for key, value in record.arrays().items() if non_finite(value)[0]]
        if bad:
            self.refuse(record.case.id, f"the run holds NaN or infinity in {', '.join(bad)}; a golden must be finite")
        self.staged.append((record, state))

    def refuse(self, case_id: str, why: str) -> None:
        """Fail this case's test: it cannot be regenerated, so the run writes nothing."""
        self.refused.append(f"{case_id}: {why}")
        pytest.fail(f"ensemble-conformance: {case_id}: not regenerated: {why}", pytrace=False)

    def stage_census(self, path: Path, data: bytes, state: str) -> None:
        self.censuses.append((path, data, state))

    def commit(self, store: GoldenStore, env: dict[str, Any]) -> bool:
        """Write what the run staged, all at once; False (and a message) when that fails or
        a case was refused."""
        self.written.clear()
        self.censuses_written.clear()
        self.lines.clear()
        if self.refused:
            self.error = (
                f"nothing was written, the goldens in {store.directory} are as they were before this run: a "
                "regeneration writes all its cases or none\n  " + "\n  ".join(self.refused)
            )
            print(f"ensemble-conformance: {self.error}")
            return False
        if not self.staged and not self.censuses and not self.prune:
            return True
        try:
            with store.transaction(600.0, on_wait=print) as txn:
                self.recovered += txn.recovered
                for record, state in self.staged:
                    case_id = record.case.id
                    new = not store.path_for(case_id).exists()
                    if not txn.write(record, env):
                        self.lines.append(f"{case_id}: unchanged")
                        continue
                    if not new and txn.same_bytes(case_id):
                        state = "bit-identical; its manifest entry is updated (recorded in another environment)"
                    self.written.append(f"{case_id}: {state}")
                    self.lines.append(self.written[-1])
                for case_id in self.prune:
                    txn.remove(case_id)
                    self.written.append(f"{case_id}: removed (no case uses it)")
                    self.lines.append(self.written[-1])
                for path, data, state in self.censuses:  # each file atomic, under the same lock
                    with atomic_writer(path) as f:
                        f.write(data)
                    self.censuses_written.append(f"{path.stem} (cost census): {state}")
        except (GoldenError, OSError) as err:
            where = store.directory
            as_they_were = "" if store.interrupted() else f"; the goldens in {where} are as they were before this run"
            self.error = f"regeneration failed{as_they_were}: {err}"
            print(f"ensemble-conformance: {self.error}")
            self.written.clear()
            self.censuses_written.clear()
            self.lines.clear()
            return False
        return True

    def summary(self, terminalreporter: Any, store: GoldenStore) -> None:
        terminalreporter.section("regenerated goldens", sep="-", green=not self.error, red=bool(self.error))
        for line in self.recovered:
            terminalreporter.write_line(f"{store.directory}: {line}")
        if self.error:
            terminalreporter.write_line(self.error, red=True)
            return
        for line in self.written:
            terminalreporter.write_line(line)
        terminalreporter.write_line(
            f"{len(self.written)} golden(s) written to {store.directory}"
            + (f", {self.unchanged} rewritten unchanged" if self.unchanged else "")
        )
        for line in self.censuses_written:
            terminalreporter.write_line(line)
        if self.censuses_written:
            terminalreporter.write_line(
                f"{len(self.censuses_written)} cost census(es) written to {store.directory / 'cost'}"
            )
        outcomes = [(record.case.id, getattr(record, "outcome", None)) for record, _ in self.staged]
        errors = sorted(case_id for case_id, outcome in outcomes if outcome is not None and outcome.kind != "values")
        if errors:
            terminalreporter.write_line(
                f"WARNING: {len(errors)} golden(s) record an error, not values ({', '.join(errors)}): the step gives "
                "no values, so its golden-free checks skip. Fix the step and regenerate, unless the error is what "
                "you mean to pin.",
                red=True,
                bold=True,
            )
