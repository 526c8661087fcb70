"""Reports from the suite's JSON results (``pytest conformance --report-json``).

    python -m ensemble_conformance.tooling.report gate RESULT.json [--markdown OUT.md]
    python -m ensemble_conformance.tooling.report matrix R1.json R2.json ... [--markdown OUT.md] [--html OUT.html]

``gate``: one run as a pull-request comment or CI step summary: verdict, versions against
the goldens', drift causes, and every failing case with its cause and figures.
``matrix``: many runs (releases x backends) merged into one table, and a self-contained
HTML page (no scripts, no external files) with a heatmap of the drift per case group and
release: the largest output ULP distance against the goldens, coloured on a log scale;
then the lifecycle compatibility table: each recipe on each release (and transform
mode) against the reference goldens: same, moved, changed, raises, no longer raises,
other error, unavailable. Runs of one release split over several files (the legacy-PRNG
pins run their lifecycle scenarios apart) are merged.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ensemble_conformance.golden.pins import REFERENCE, version_tuple

Result = dict[str, Any]


def load(path: Path) -> Result:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format_version") != 1 or "cases" not in data:
        raise ValueError(f"{path}: not a result written by `pytest conformance --report-json`")
    data["_path"] = str(path)
    return data


def label(result: Result) -> str:
    pins = result["pins"]
    mode = _mode(result)
    return f"flax {pins['flax']} / jax {pins['jax']} ({result.get('backend')}{'' if mode == 'graph' else ', ' + mode})"


def verdict(result: Result) -> str:
    summary = result["summary"]
    ran = summary["cases"] + summary.get("scenarios", 0)
    return "PASS" if summary["failed"] == 0 and ran > 0 else "FAIL"


def _golden_versions(result: Result) -> str:
    envs = result.get("golden_environments", {}).values()
    seen = sorted({f"flax {e.get('flax')} / jax {e.get('jax')} on {e.get('backend')}" for e in envs})
    return "; ".join(seen) or "unknown"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value in (None, "") else str(value)


def _program(case_id: str) -> str:
    return case_id.split("-", 1)[0]


def _project(result: Result) -> bool:
    return result.get("suite") == "project"


def _group(case_id: str, entry: Mapping[str, Any]) -> str:
    """What a row of the verdict names: a scenario's recipe (its program), or an
    ``ensemble_golden`` check by its own id (never the test file it lives in)."""
    return case_id if entry.get("test") else _program(case_id)


def _warnings(result: Result) -> dict[str, set[str]]:
    """recipe -> the DeprecationWarnings and FutureWarnings its cases emitted."""
    out: dict[str, set[str]] = {}
    for case_id, entry in result.get("scenarios", {}).items():
        out.setdefault(_group(case_id, entry), set()).update(entry.get("warnings", []))
    return {program: seen for program, seen in out.items() if seen}


def lifecycle_markdown(result: Result, baseline: Result | None = None) -> list[str]:
    """The gate's lifecycle part: each recipe whose golden comparison failed, what changed
    and the remedy when one is known; then the deprecations the recipes hit (those new
    against ``baseline`` when given), which the future-defaults session turns into errors."""
    scenarios = result.get("scenarios", {})
    if not scenarios:
        return []
    changed: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for case_id, entry in sorted(scenarios.items()):
        if "failed" in (entry.get("golden"), entry.get("expected"), entry.get("oracles")):
            changed.setdefault(_group(case_id, entry), []).append((case_id, entry))
    groups = len({_group(c, e) for c, e in scenarios.items()})
    what, row = (
        ("The project's scenarios and checks", "scenario or check")
        if _project(result)
        else ("Lifecycle recipes", "recipe")
    )
    lines = ["", f"### {what}: {len(changed)} of {groups} changed"]
    if changed:
        lines += ["", f"| {row} | cases | now | outcome | remedy |", "|---|---|---|---|---|"]
        for program, entries in changed.items():
            classes = sorted({str(e.get("compat", "failed")) for _, e in entries})
            outcome = _shorten(str(entries[0][1].get("outcome", "")), 90) if entries[0][1].get("outcome") else "-"
            remedy = next((str(e["remedy"]) for _, e in entries if e.get("remedy")), "-")
            cells = [f"`{program}`", str(len(entries)), ", ".join(classes), outcome, remedy]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    foreseen = sorted(
        {
            _group(case_id, entry)
            for case_id, entry in scenarios.items()
            if entry.get("era") and entry.get("compat") not in ("same", "moved") and entry.get("golden") == "passed"
        }
        - set(changed)
    )
    if foreseen:
        lines += [
            "",
            f"{len(foreseen)} recipe(s) differ from the goldens as this release's era foresees (see the "
            "compatibility table): " + ", ".join(f"`{p}`" for p in foreseen),
        ]
    now = _warnings(result)
    before = _warnings(baseline) if baseline is not None else {}
    new = {p: sorted(w - before.get(p, set())) for p, w in now.items()}
    new = {p: w for p, w in new.items() if w}
    if new:
        against = f" (new against flax {baseline['pins']['flax']})" if baseline is not None else ""
        who, how = (
            ("the project's scenarios", "`--future-warnings`")
            if _project(result)
            else ("the recipes", "`nox -s future_defaults`")
        )
        lines += ["", f"Deprecations {who} hit{against}; {how} makes them errors:", ""]
        lines += [f"- `{p}`: {'; '.join(w)}" for p, w in sorted(new.items())]
    return lines


def gate_markdown(result: Result, baseline: Result | None = None) -> str:
    s = result["summary"]
    lines = [
        f"## ensemble-conformance gate: {verdict(result)}",
        "",
        f"Candidate: **{label(result)}**, Python {result['pins']['python']}, device {result.get('device_kind')}"
        + (f", judged as {result['numerics']}." if result.get("numerics") else "."),
        f"Goldens: `{result['golden_dir']}`, made with {_golden_versions(result)}.",
        "",
        (
            f"The project's scenarios and checks: {s.get('scenarios', 0)} judged, "
            if _project(result)
            else f"{s['cases']} cases, {s.get('scenarios', 0)} scenarios, "
        )
        + f"{s['passed'] + s['failed'] + s.get('known_drift', 0)} {'results' if _project(result) else 'checks'}: "
        f"{s['passed']} passed, {s['failed']} failed"
        + (
            f" ({len(result['failures'])} of them outside any {'scenario or check' if _project(result) else 'case'})"
            if result.get("failures")
            else ""
        )
        + (f", {s['known_drift']} known drift (expected failures)." if s.get("known_drift") else "."),
    ]
    if s["causes"]:
        lines += ["", "| drift cause | cases |", "|---|---|"]
        lines += [f"| {cause} | {count} |" for cause, count in sorted(s["causes"].items(), key=lambda kv: -kv[1])]
    failing = {cid: e for cid, e in result["cases"].items() if "failed" in (e.get("golden"), e.get("oracles"))}
    if failing:
        lines += ["", f"<details><summary>{len(failing)} failing case(s)</summary>"] if len(failing) > 20 else []
        lines += [
            "",
            "| case | golden | oracles | cause | failed oracles | output max rel err | output max ULP |",
            "|---|---|---|---|---|---|---|",
        ]
        for cid, e in sorted(failing.items()):
            cells = [f"`{cid}`"] + [
                _fmt(e.get(k))
                for k in ("golden", "oracles", "drift_cause", "failed_oracles", "output_max_rel", "output_max_ulp")
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "</details>"] if len(failing) > 20 else []
        restore = sorted({e["drift_restore"] for e in failing.values() if e.get("drift_restore")})
        for setting in restore:
            lines += ["", f"The goldens' values come back with `{setting}`."]
    lines += lifecycle_markdown(result, baseline)
    lines += failures_markdown(result)
    return "\n".join(lines) + "\n"


def failures_markdown(result: Result) -> list[str]:
    """Failed tests filed under no case, scenario or check (a test that raised before its
    ``ensemble_golden.check``, a module that does not import): each by its node id."""
    failures = result.get("failures", [])
    if not failures:
        return []
    lines = ["", f"### {len(failures)} failing test(s) outside the scenarios and checks", ""]
    lines += ["| test | phase | error |", "|---|---|---|"]
    for failure in failures:
        cells = [f"`{failure['test']}`", str(failure.get("when", "")), _shorten_error(str(failure.get("error", "")))]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _shorten_error(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _sort_key(result: Result) -> tuple[Any, ...]:
    pins = result["pins"]
    return (
        version_tuple(pins["flax"]),
        version_tuple(pins["jax"]),
        str(result.get("backend")),
        _mode(result) != "graph",
        _mode(result),
    )


def _groups(results: Sequence[Result]) -> list[str]:
    return sorted({e["variant"] for r in results for e in r["cases"].values()})


def _group_drift(result: Result, group: str) -> tuple[float, int, int, int]:
    """(max output ULP distance, failing cases, known-drift cases, cases) over one variant."""
    entries = [e for e in result["cases"].values() if e["variant"] == group]
    ulps = [float(e["output_max_ulp"]) for e in entries if "output_max_ulp" in e]
    failing = sum(1 for e in entries if "failed" in (e.get("golden"), e.get("oracles")))
    known = sum(1 for e in entries if e.get("golden") == "xfailed")
    return (max(ulps) if ulps else math.nan, failing, known, len(entries))


def _table_head(first: str, columns: Sequence[str]) -> list[str]:
    """A markdown table's header and rule: ``first`` then ``columns``."""
    return ["| " + " | ".join([first, *columns]) + " |", "|---|" + "---|" * len(columns)]


def _mode(result: Result) -> str:
    return str(result.get("environment", {}).get("nnx_mode") or "graph")


def _release(result: Result) -> str:
    mode = _mode(result)
    return f"flax {result['pins']['flax']} / jax {result['pins']['jax']}" + ("" if mode == "graph" else f" ({mode})")


def merge(results: Sequence[Result]) -> list[Result]:
    """One result per (release, backend, precision, mode): the cases and scenarios of runs
    split over several files, with their summaries added up."""
    merged: dict[tuple[Any, ...], Result] = {}
    for r in results:
        pins = r["pins"]
        key = (pins["flax"], pins["jax"], r.get("backend"), r.get("precision"), _mode(r), r.get("emulated"))
        if key not in merged:
            merged[key] = {**r, "cases": dict(r["cases"]), "scenarios": dict(r.get("scenarios", {}))}
            merged[key]["summary"] = {**r["summary"], "causes": dict(r["summary"]["causes"])}
            continue
        into = merged[key]
        into["cases"].update(r["cases"])
        into["scenarios"].update(r.get("scenarios", {}))
        for name, value in r["summary"].items():
            if name == "causes":
                for cause, n in value.items():
                    into["summary"]["causes"][cause] = into["summary"]["causes"].get(cause, 0) + n
            elif isinstance(value, int):
                into["summary"][name] = into["summary"].get(name, 0) + value
    return list(merged.values())


def performance_cell(result: Result, releases: Mapping[str, Any] | None) -> str:
    """This release's seed forward against the reference's, from one interleaved run of
    every pin (``nox -s perf_releases``: results/perf/releases.json)."""
    if releases is None:
        return ""
    pin = f"flax{result['pins']['flax']}-jax{result['pins']['jax']}"
    row = next((p for p in releases["pins"] if p["pin"] == pin), None)
    if row is None or _mode(result) != "graph" or result.get("backend") != "cpu":
        return " - |"
    if row["pin"] == releases["reference"]:
        return " reference |"
    figure = max(row["against_reference"], key=lambda name: int(name.rsplit("_n", 1)[1]))
    i = row["against_reference"][figure]["interval"]
    return f" {i['ratio']:.2f}x [{i['low']:.2f}, {i['high']:.2f}] |"


COST_PROGRAM, COST_FIGURE = "forward (0, None)", "bytes_accessed"


def load_censuses(directory: Path) -> dict[str, Mapping[str, Any]]:
    """``flax<f>-jax<j>`` -> the census file of that release (results/cost/matrix/*.json)."""
    out = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        env = data.get("environment", {})
        out[f"flax{env.get('flax')}-jax{env.get('jax')}"] = data
    return out


def cost_cell(result: Result, censuses: Mapping[str, Mapping[str, Any]] | None) -> str:
    """This release's seed forward bytes accessed (its compiled census) against the reference's."""
    if censuses is None:
        return ""
    pin = f"flax{result['pins']['flax']}-jax{result['pins']['jax']}"
    reference = censuses.get(f"flax{REFERENCE.flax}-jax{REFERENCE.jax}")
    row = censuses.get(pin)
    if row is None or reference is None or _mode(result) != "graph" or result.get("backend") != "cpu":
        return " - |"
    value = row["programs"][COST_PROGRAM]["census"]["figures"][COST_FIGURE]
    base = reference["programs"][COST_PROGRAM]["census"]["figures"][COST_FIGURE]
    if value is None or not base:
        return " n/a |"
    if row is reference:
        return f" reference ({value / 1e6:.0f} MB) |"
    return f" {value / base:.2f}x ({value / 1e6:.0f} MB) |"


def matrix_markdown(
    results: Sequence[Result],
    releases: Mapping[str, Any] | None = None,
    censuses: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    ordered = sorted(merge(results), key=_sort_key)
    perf_head = " forward time vs reference |" if releases is not None else ""
    perf_head += " forward bytes vs reference |" if censuses is not None else ""
    extra = (releases is not None) + (censuses is not None)
    lines = [
        "| release | Python | backend | verdict | cases | checks failed | known drift | drift causes |" + perf_head,
        "|---|---|---|---|---|---|---|---|" + "---|" * extra,
    ]
    for r in ordered:
        s = r["summary"]
        causes = ", ".join(f"{c}: {n}" for c, n in sorted(s["causes"].items())) or "-"
        lines.append(
            f"| {_release(r)} | {r['pins']['python']} "
            f"| {r.get('backend')} | {verdict(r)} | {s['cases']} | {s['failed']} "
            f"| {s.get('known_drift', 0)} | {causes} |" + performance_cell(r, releases) + cost_cell(r, censuses)
        )
    if releases is not None:
        lines += [
            "",
            "*forward time vs reference*: the seed's jitted forward at the largest N, this release / the reference, "
            f"with its {releases['level']:.0%} interval, from one run of every pin ({releases['rounds']} interleaved "
            "rounds; `nox -s perf_releases`).",
        ]
    if censuses is not None:
        lines += [
            "",
            "*forward bytes vs reference*: bytes accessed by the compiled seed forward (N = D_in = F = 256), from "
            "XLA's cost analysis of each release's program, this release / the reference (`python -m "
            "tools.cost census`: no clock, the same on every run).",
        ]
    groups = _groups(ordered)
    lines += [
        "",
        "Largest output ULP distance against the goldens, per case group (failing cases in brackets):",
        "",
        *_table_head("release", groups),
    ]
    for r in ordered:
        cells = []
        for g in groups:
            ulp, failing, _, total = _group_drift(r, g)
            cells.append(("-" if math.isnan(ulp) else f"{ulp:.3g}") + (f" [{failing}/{total}]" if failing else ""))
        lines.append(f"| {_release(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _colour(ulp: float) -> str:
    """White at 0 ULP through yellow to red at 2**31 ULP (log scale)."""
    if math.isnan(ulp):
        return "#dddddd"
    t = min(1.0, math.log10(1 + ulp) / math.log10(1 + 2.0**31))
    red, green, blue = 255, int(255 - 200 * t), int(255 - 255 * min(1.0, 2 * t))
    return f"#{red:02x}{green:02x}{blue:02x}"


def matrix_html(results: Sequence[Result]) -> str:
    ordered = sorted(merge(results), key=_sort_key)
    groups = _groups(ordered)
    head = "".join(f"<th>{html.escape(g)}</th>" for g in groups)
    rows = []
    for r in ordered:
        cells = []
        for g in groups:
            ulp, failing, known, total = _group_drift(r, g)
            text = "no data" if math.isnan(ulp) else f"{ulp:.3g} ULP"
            if failing:
                text += f"<br><small>{failing}/{total} failing</small>"
            if known:
                text += f"<br><small>{known}/{total} known drift</small>"
            cells.append(f'<td style="background:{_colour(ulp)}">{text}</td>')
        causes = ", ".join(f"{html.escape(c)}: {n}" for c, n in sorted(r["summary"]["causes"].items())) or "none"
        rows.append(
            f"<tr><th>{html.escape(label(r))}<br><small>Python {html.escape(str(r['pins']['python']))}, "
            f"{verdict(r)}, known drift: {r['summary'].get('known_drift', 0)}, causes: {causes}</small></th>"
            f"{''.join(cells)}</tr>"
        )
    marks = ((0, "0"), (16, "16"), (2**10, "2^10"), (2**20, "2^20"), (2**31, "2^31"))
    legend = "".join(f'<span style="background:{_colour(v)}">{text} ULP</span>' for v, text in marks)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ensemble-conformance matrix</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #999; padding: 0.4em 0.7em; text-align: center; }}
th {{ background: #f4f4f4; text-align: left; }}
.legend span {{ display: inline-block; width: 7em; padding: 0.2em; text-align: center; }}
</style></head><body>
<h1>ensemble-conformance: drift per case group and release</h1>
<p>Each cell: the largest ULP distance between an output and its golden over the group's cases
(0 = bit-identical), and how many cases fail (golden comparison or golden-free checks).</p>
<table><tr><th>release</th>{head}</tr>
{chr(10).join(rows)}
</table>
<p class="legend">Scale: {legend}</p>
{compat_html_table(results)}</body></html>
"""


# --- the lifecycle compatibility table -------------------------------------------------

# How bad a class is, for a recipe whose cases differ: the worst one is shown.
_SEVERITY = ("same", "moved", "available", "no longer raises", "other error", "unavailable", "changed", "raises")
_COMPAT_COLOURS = {
    "same": "#e8f5e9",
    "moved": "#fff9c4",
    "available": "#c8e6c9",
    "no longer raises": "#bbdefb",
    "other error": "#ffe0b2",
    "unavailable": "#e0e0e0",
    "changed": "#ffcc80",
    "raises": "#ef9a9a",
}


def _column(result: Result) -> str:
    mode = _mode(result)
    return f"flax {result['pins']['flax']}" + ("" if mode == "graph" else f" ({mode})")


def _shorten(outcome: str, width: int = 60) -> str:
    """'raises ValueError: fold_in accepts ...' -> 'ValueError: fold_in accepts ...' cut at ``width``."""
    text = outcome.split(" ", 1)[1] if " " in outcome else outcome
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def compat_cells(results: Sequence[Result]) -> tuple[list[str], list[str], dict[tuple[str, str], tuple[str, str]]]:
    """(programs, columns, (program, column) -> (class, detail)) over the runs that hold
    lifecycle scenarios. A recipe's cell is the worst class over its cases; the detail is
    the shortened error (raises, other error), the missing API (unavailable) or the
    largest ULP distance (moved)."""
    runs = [r for r in sorted(merge(results), key=_sort_key) if r.get("scenarios")]
    columns = [_column(r) for r in runs]
    cells: dict[tuple[str, str], tuple[str, str]] = {}
    programs: set[str] = set()
    for r, column in zip(runs, columns, strict=True):
        for case_id, entry in r["scenarios"].items():
            program = case_id.split("-", 1)[0]
            programs.add(program)
            cls = str(entry.get("compat", "unknown"))
            detail = ""
            if cls in ("raises", "other error", "unavailable"):
                detail = _shorten(str(entry.get("outcome", "")))
            elif cls == "moved":
                detail = f"{max(entry.get('max_ulp_by_class', {}).values(), default=0):.0f} ULP"
            old = cells.get((program, column))
            rank = _SEVERITY.index(cls) if cls in _SEVERITY else len(_SEVERITY)
            if old is None or rank > (_SEVERITY.index(old[0]) if old[0] in _SEVERITY else len(_SEVERITY)):
                cells[(program, column)] = (cls, detail)
    return sorted(programs), columns, cells


def compat_markdown(results: Sequence[Result]) -> str:
    programs, columns, cells = compat_cells(results)
    if not programs:
        return ""
    lines = [
        "Lifecycle compatibility: each recipe against the goldens of the reference pins "
        "(same, moved within tolerance, changed, raises, no longer raises, other error, unavailable):",
        "",
        *_table_head("recipe", columns),
    ]
    for program in programs:
        row = []
        for column in columns:
            cls, detail = cells.get((program, column), ("-", ""))
            row.append(cls + (f": {detail}" if detail else ""))
        lines.append(f"| `{program}` | " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def compat_html_table(results: Sequence[Result]) -> str:
    programs, columns, cells = compat_cells(results)
    if not programs:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for program in programs:
        tds = []
        for column in columns:
            cls, detail = cells.get((program, column), ("-", ""))
            colour = _COMPAT_COLOURS.get(cls, "#ffffff")
            small = f"<br><small>{html.escape(detail)}</small>" if detail else ""
            tds.append(f'<td style="background:{colour}" title="{html.escape(cls)}">{html.escape(cls)}{small}</td>')
        rows.append(f"<tr><th><code>{html.escape(program)}</code></th>{''.join(tds)}</tr>")
    legend = "".join(f'<span style="background:{c}">{html.escape(k)}</span>' for k, c in _COMPAT_COLOURS.items())
    return (
        "<h2>Lifecycle compatibility</h2>\n<p>Each recipe on each release against the goldens of the reference "
        "pins; a recipe's cell is the worst class over its cases.</p>\n"
        f'<table class="compat"><tr><th>recipe</th>{head}</tr>\n' + "\n".join(rows) + "\n</table>\n"
        f'<p class="legend">{legend}</p>\n'
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ensemble_conformance.tooling.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gate = sub.add_parser("gate", help="one result as markdown")
    gate.add_argument("result", type=Path)
    gate.add_argument("--markdown", type=Path)
    gate.add_argument("--baseline", type=Path, help="the run on the current pins: deprecations new in the candidate")
    matrix = sub.add_parser("matrix", help="many results as one markdown table and an HTML heatmap")
    matrix.add_argument("results", type=Path, nargs="+")
    matrix.add_argument("--markdown", type=Path)
    matrix.add_argument("--html", type=Path)
    matrix.add_argument("--perf", type=Path, help="results/perf/releases.json: adds a performance column")
    matrix.add_argument("--cost", type=Path, help="results/cost/matrix: the releases' censuses, adds a cost column")
    args = parser.parse_args(argv)
    try:
        if args.command == "gate":
            result = load(args.result)
            text = gate_markdown(result, load(args.baseline) if args.baseline else None)
            if args.markdown:
                args.markdown.write_text(text)
            print(text)
            return 0 if verdict(result) == "PASS" else 1
        results = [load(p) for p in args.results]
    except (OSError, ValueError) as err:
        parser.error(str(err))
    releases = None
    if args.perf:
        try:
            releases = json.loads(args.perf.read_text())
        except (OSError, ValueError) as err:
            parser.error(f"--perf {args.perf}: {err}")
    censuses = None
    if args.cost:
        try:
            censuses = load_censuses(args.cost)
        except (OSError, ValueError) as err:
            parser.error(f"--cost {args.cost}: {err}")
    text = matrix_markdown(results, releases, censuses)
    table = compat_markdown(results)
    text += f"\n{table}" if table else ""
    if args.markdown:
        args.markdown.write_text(text)
    if args.html:
        args.html.write_text(matrix_html(results))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
