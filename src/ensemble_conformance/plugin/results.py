"""What a session's tests found, gathered on the controlling process (pytest-xdist ships
each report's ``user_properties`` back to it): per case and check its outcome and figures,
the drift causes of failed golden comparisons, and every failed test or collection. The
terminal summaries and the ``--report-json`` file are made from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

# test function -> the check it is, in the report
CHECK_OF_TEST = {
    "test_matches_golden": "golden",
    "test_oracles": "oracles",
    "test_scenario_matches_golden": "golden",
    "test_scenario_expected_outcome": "expected",
    "test_scenario_oracles": "oracles",
    "test_scenario_cost": "cost",
}


def check_of(nodeid: str) -> str | None:
    """The check a test is (CHECK_OF_TEST), from its node id; None for any other test."""
    return CHECK_OF_TEST.get(nodeid.rsplit("::", 1)[-1].split("[", 1)[0])


def case_id(report: pytest.TestReport) -> str:
    return report.nodeid.rsplit("[", 1)[-1].rstrip("]")


def error_line(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The first line of what a failed test or collection raised."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(crash.message) if crash is not None else report.longreprtext
    line = next((line.strip() for line in text.splitlines() if line.strip()), report.outcome)
    return line if len(line) <= 300 else line[:297] + "..."


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(reason).removeprefix("Skipped: ")


@dataclass(eq=False)  # registered as a plugin: hashed by identity
class Results:
    by_case: dict[str, dict[str, Any]] = field(default_factory=dict)  # case id -> figures for --report-json
    scenarios: set[str] = field(default_factory=set)  # the scenario ids among them
    drift: dict[str, list[str]] = field(default_factory=dict)  # drift cause -> case ids
    restore: dict[str, str] = field(default_factory=dict)  # case id -> the settings that restore its golden
    failed: dict[str, dict[str, str]] = field(default_factory=dict)  # node id -> phase and error
    owner: dict[str, set[str]] = field(default_factory=dict)  # node id -> the ids its results are filed under

    # pytest hooks: the session registers this object as a plugin, so that each report reaches it

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.failed.setdefault(report.nodeid or ".", {"when": "collect", "error": error_line(report)})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._file(report)
        if report.when != "call" or not report.failed:
            return
        props = dict(report.user_properties)
        cause = props.get("drift_cause")
        if cause is not None:
            this = case_id(report)
            self.drift.setdefault(str(cause), []).append(this)
            if "drift_restore" in props:
                self.restore[this] = str(props["drift_restore"])

    def _file(self, report: pytest.TestReport) -> None:
        if report.failed:  # every failing test reaches the report, filed under a case or not
            self.failed.setdefault(report.nodeid, {"when": report.when, "error": error_line(report)})
        checked = [value for name, value in report.user_properties if name == "ensemble_golden"]
        if checked:  # ensemble_golden.check in an ordinary test: recorded under its golden's id
            for checked_id in checked:
                self.scenarios.add(str(checked_id))
                self.owner.setdefault(report.nodeid, set()).add(str(checked_id))
                entry = self.by_case.setdefault(str(checked_id), {})
                entry["test"] = report.nodeid
                if report.when == "call" or report.failed or report.skipped:
                    entry["golden"] = report.outcome
                entry.update((k, v) for k, v in report.user_properties if k != "ensemble_golden")
            return
        if "[" not in report.nodeid:
            return
        test = report.nodeid.split("::")[-1].split("[", 1)[0]
        this = case_id(report)
        self.owner.setdefault(report.nodeid, set()).add(this)
        entry = self.by_case.setdefault(this, {})
        if test.startswith("test_scenario_"):
            self.scenarios.add(this)
        kind = CHECK_OF_TEST.get(test, test)
        if report.when == "call" or report.failed or report.skipped:
            entry[kind] = "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome
        if report.skipped and not hasattr(report, "wasxfail"):
            entry[f"{kind}_skipped"] = skip_reason(report)
        for name, value in report.user_properties:
            entry[name] = value

    def drift_summary(self, terminalreporter: Any) -> None:
        if not self.drift:
            return
        total = sum(len(ids) for ids in self.drift.values())
        terminalreporter.section("drift explanations", sep="-", red=True)
        terminalreporter.write_line(f"{total} golden comparison(s) failed; causes:")
        for cause, ids in sorted(self.drift.items(), key=lambda item: -len(item[1])):
            shown = ", ".join(sorted(ids)[:3]) + (", ..." if len(ids) > 3 else "")
            terminalreporter.write_line(f"  {cause}: {len(ids)} ({shown})")
        for restore in sorted(set(self.restore.values())):
            count = sum(1 for v in self.restore.values() if v == restore)
            terminalreporter.write_line(f"  {count} case(s) match the goldens again with {restore}")

    def skipped_checks(self, terminalreporter: Any) -> None:
        """A project's golden-free checks that did not run, and why (a step that raised): never silent."""
        skipped = {this: entry["oracles_skipped"] for this, entry in self.by_case.items() if "oracles_skipped" in entry}
        if not skipped:
            return
        terminalreporter.section("golden-free checks that did not run", sep="-", yellow=True)
        for this, why in sorted(skipped.items()):
            terminalreporter.write_line(f"{this}: {why.removeprefix(f'ensemble-conformance: {this}: ')}", yellow=True)

    def report(self, core_cases: dict[str, str]) -> dict[str, Any]:
        """The cases, scenarios, unfiled failures and summary of the --report-json file;
        ``core_cases`` maps the reference suite's core case ids to their variants (empty for
        a project)."""
        found = self.by_case
        cases = {this: {"variant": variant, **found[this]} for this, variant in core_cases.items() if this in found}
        scenarios = {this: self.by_case[this] for this in sorted(self.scenarios)}
        filed = set(cases) | set(scenarios)
        failures = [  # failed tests whose results are filed under no reported case or scenario
            {"test": nodeid, **failed}
            for nodeid, failed in sorted(self.failed.items())
            if not self.owner.get(nodeid, set()) & filed
        ]
        checks = ("golden", "oracles", "expected")
        entries = [*cases.values(), *scenarios.values()]
        statuses = [v for entry in entries for k, v in entry.items() if k in checks]
        causes: dict[str, int] = {}
        for entry in entries:
            if "drift_cause" in entry:
                causes[entry["drift_cause"]] = causes.get(entry["drift_cause"], 0) + 1
        return {
            "summary": {
                "cases": len(cases),
                "scenarios": len(scenarios),
                "passed": statuses.count("passed"),
                "failed": statuses.count("failed") + len(failures),
                "skipped": statuses.count("skipped"),
                "known_drift": statuses.count("xfailed"),
                "causes": causes,
            },
            "cases": cases,
            "scenarios": scenarios,
            "failures": failures,
        }
