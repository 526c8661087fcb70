"""The CI workflow files, the gate's composite action and the example workflow a user copies:
valid for GitHub's schemas and a workflow linter, hardened as GitHub's security guide asks
(least-privilege permissions, nothing spliced into a script, actions pinned by commit), the
action's scripts doing what it promises, and the version matrix coming from the noxfile, not
from a second hand-written list."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ensemble_conformance.golden.pins import MATRIX
from tests.conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def _schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
    )


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "actionlint"), "-no-color", str(path)], capture_output=True, text=True)


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "gate.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
@pytest.mark.integration
def test_workflow_is_valid(path: Path) -> None:
    schema = _schema(path)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    lint = _lint(path)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.integration
def test_the_checks_reject_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    text = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    broken.write_text(text.replace("runs-on: ubuntu-latest", "runs-onn: ubuntu-latest", 1))
    assert _schema(broken).returncode != 0
    assert _lint(broken).returncode != 0
    typo = tmp_path / "typo.yml"
    typo.write_text(text.replace("needs.list-matrix.outputs.sessions", "needs.list-matrx.outputs.sessions"))
    assert _lint(typo).returncode != 0  # an expression naming a job that does not exist


@pytest.mark.integration
def test_matrix_jobs_are_generated_from_the_noxfile() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "nox", "--list", "--json", "-s", "matrix"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    sessions = [s["session"] for s in json.loads(listed.stdout)]
    assert sessions == [f"matrix({p.id})" for p in MATRIX]
    ci = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    assert "nox --list --json -s matrix" in ci
    assert "fromJSON(needs.list-matrix.outputs.sessions)" in ci
    for workflow in WORKFLOWS:
        text = workflow.read_text()
        for pins in MATRIX:  # no release pin is written out by hand in a workflow
            assert f"=={pins.jax}" not in text and f"flax {pins.flax}" not in text and pins.id not in text


@pytest.mark.parametrize("name", ["gate.yml", "ci.yml"])
def test_accelerator_jobs_target_self_hosted_runners(name: str) -> None:
    workflow = (REPO / ".github" / "workflows" / name).read_text()
    for backend in ("cuda12", "cuda13", "tpu"):
        assert f"backend: {backend}" in workflow
    assert workflow.count("runner: [self-hosted") == 3


def test_ci_runs_every_cross_backend_session_that_needs_no_device() -> None:
    ci = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    for session in ('"backend(cpu)"', "emulated", "sharded", "resolve_backends"):
        assert f"nox -s {session}" in ci
    assert 'nox -s "backend($BACKEND)"' in ci and "BACKEND: ${{ matrix.backend }}" in ci


def test_tools_are_installed() -> None:
    assert shutil.which("check-jsonschema", path=str(BIN)) and shutil.which("actionlint", path=str(BIN))


# --- Supply-chain hygiene (GitHub's "Security hardening for GitHub Actions") -------------
#
# Applied to every workflow here, the gate's composite action and the example workflow a
# user copies: least-privilege permissions declared at the top and on every job, no
# expression spliced into a run script (inputs, matrix values and event fields reach a
# script through env: only), pull_request and never pull_request_target, and every
# third-party action pinned by its full commit SHA with the release as a trailing comment.

ACTION = REPO / ".github" / "actions" / "gate" / "action.yml"
EXAMPLE = REPO / "examples" / "user-project" / ".github" / "workflows" / "ensemble-gate.yml"
CHECKED = [*WORKFLOWS, ACTION, EXAMPLE]
FORBIDDEN_EVENTS = {"pull_request_target"}
# (file name, job id) -> scopes the job may write. No job needs to write today.
WRITE_ALLOWED: dict[tuple[str, str], set[str]] = {}

_USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>[^\s#]+)(?P<rest>.*)$")
_SHA_PINNED = re.compile(r"^[\w.-]+/[\w.-]+(?:/[^@\s]+)?@[0-9a-f]{40}$")
_VERSION_COMMENT = re.compile(r"^\s+#\s*v\d+(?:\.\d+)*\b")
_DOCKER_PINNED = re.compile(r"^docker://[^@\s]+@sha256:[0-9a-f]{64}$")


def _load(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict), "not a YAML mapping"
    if True in doc:  # PyYAML reads the key `on` as YAML 1.1's boolean true
        doc["on"] = doc.pop(True)
    return doc


def _steps(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    runs = doc.get("runs")
    if isinstance(runs, dict):
        for i, step in enumerate(runs.get("steps") or []):
            yield f"runs.steps[{i}]", step
    for job_id, job in (doc.get("jobs") or {}).items():
        for i, step in enumerate(job.get("steps") or []):
            yield f"jobs.{job_id}.steps[{i}]", step


def _uses(doc: dict[str, Any]) -> list[str]:
    refs = [step["uses"] for _, step in _steps(doc) if "uses" in step]
    refs += [job["uses"] for job in (doc.get("jobs") or {}).values() if "uses" in job]  # reusable workflows
    return refs


def _events(doc: dict[str, Any]) -> set[str]:
    on = doc.get("on")
    if isinstance(on, str):
        return {on}
    if isinstance(on, list):
        return set(on)
    return set(on or {})


def _permission_violations(value: object, where: str, allowed_writes: set[str]) -> list[str]:
    if not isinstance(value, dict):  # read-all, write-all: not least privilege
        return [f"{where}: permissions must name each scope, not {value!r}"]
    found = []
    for scope, level in value.items():
        if level not in ("read", "write", "none"):
            found.append(f"{where}: permission {scope}: {level!r}")
        elif level == "write" and scope not in allowed_writes:
            found.append(f"{where}: permission {scope}: write is not needed")
    return found


def security_violations(text: str, name: str = "workflow.yml") -> list[str]:
    """What the file breaks of the rules above; empty when it keeps them all."""
    doc = _load(text)
    found: list[str] = []
    if "jobs" in doc:  # a workflow (an action has no permissions of its own)
        if "permissions" not in doc:
            found.append("no top-level permissions")
        else:
            found += _permission_violations(doc["permissions"], "top level", set())
        for job_id, job in doc["jobs"].items():
            if "permissions" not in job:
                found.append(f"jobs.{job_id}: no permissions")
            else:
                allowed = WRITE_ALLOWED.get((name, job_id), set())
                found += _permission_violations(job["permissions"], f"jobs.{job_id}", allowed)
        found += [f"trigger {event}" for event in sorted(_events(doc) & FORBIDDEN_EVENTS)]
    for where, step in _steps(doc):
        if "${{" in str(step.get("run", "")):
            found.append(f"{where}: an expression inside a run script (pass it through env:)")
    for ref in _uses(doc):
        if ref.startswith("./"):
            continue
        if ref.startswith("docker://"):
            if not _DOCKER_PINNED.match(ref):
                found.append(f"{ref}: not pinned by digest")
        elif not _SHA_PINNED.match(ref):
            found.append(f"{ref}: not pinned by a full commit SHA")
    # The release an SHA stands for is a comment, which a YAML parser drops: read the lines.
    lines = [m for m in map(_USES_LINE.match, text.splitlines()) if m]
    if sorted(m["ref"] for m in lines) != sorted(_uses(doc)):
        found.append("a uses: that is not on a line of its own (flow style?)")
    for m in lines:
        if not m["ref"].startswith(("./", "docker://")) and not _VERSION_COMMENT.match(m["rest"]):
            found.append(f"{m['ref']}: no `# vX.Y.Z` comment naming the release")
    return found


def test_the_checked_files_exist() -> None:
    assert ACTION.is_file() and EXAMPLE.is_file()


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(REPO)))
def test_supply_chain_hygiene(path: Path) -> None:
    assert security_violations(path.read_text(), path.name) == []


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(REPO)))
@pytest.mark.integration
def test_run_scripts_are_valid_bash(path: Path) -> None:
    for where, step in _steps(_load(path.read_text())):
        if "run" in step:
            syntax = subprocess.run(["bash", "-n"], input=step["run"], capture_output=True, text=True)
            assert syntax.returncode == 0, f"{where}: {syntax.stderr}"


@pytest.mark.parametrize("path", [*WORKFLOWS, EXAMPLE], ids=lambda p: str(p.relative_to(REPO)))
def test_checkouts_keep_no_credentials(path: Path) -> None:
    for where, step in _steps(_load(path.read_text())):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, where


def _drop_top_permissions(text: str) -> str:
    return re.sub(r"^permissions:\n(?:  .*\n)+", "", text, count=1, flags=re.M)


def _write_all(text: str) -> str:
    return re.sub(r"^permissions:\n(?:  .*\n)+", "permissions: write-all\n", text, count=1, flags=re.M)


def _job_writes(text: str) -> str:
    return text.replace("    permissions:\n      contents: read\n", "    permissions:\n      contents: write\n", 1)


def _tag_pinned(text: str) -> str:
    return re.sub(r"actions/checkout@[0-9a-f]{40} # v\S+", "actions/checkout@v5", text, count=1)


def _short_sha(text: str) -> str:
    return re.sub(r"(actions/checkout@)([0-9a-f]{7})[0-9a-f]{33}", r"\1\2", text, count=1)


def _no_version_comment(text: str) -> str:
    return re.sub(r"(actions/checkout@[0-9a-f]{40}) # v\S+", r"\1", text, count=1)


# (file, mutation, what the checker must name)
NEGATIVE_CONTROLS = {
    "no top-level permissions": (WORKFLOWS[0], _drop_top_permissions, "no top-level permissions"),
    "write-all at the top": (REPO / ".github/workflows/ci.yml", _write_all, "write-all"),
    "a job that writes": (REPO / ".github/workflows/gate.yml", _job_writes, "contents: write is not needed"),
    "a job without permissions": (
        REPO / ".github/workflows/ci.yml",
        lambda t: t.replace("    permissions:\n      contents: read\n", "", 1),
        "jobs.tests: no permissions",
    ),
    "inputs in a run script": (
        REPO / ".github/workflows/gate.yml",
        lambda t: t.replace('if [ -n "$INPUT_FLAX" ]', 'if [ -n "${{ inputs.x }}" ]'),
        "an expression inside a run script",
    ),
    "a matrix value in a run script": (
        REPO / ".github/workflows/ci.yml",
        lambda t: t.replace('run: nox -s "backend($BACKEND)"', 'run: nox -s "backend(${{ matrix.backend }})"'),
        "an expression inside a run script",
    ),
    "inputs in the action's run script": (
        ACTION,
        lambda t: t.replace(
            'python -m pip install "$PLUGIN_SPEC"', 'python -m pip install "${{ inputs.plugin-spec }}"'
        ),
        "runs.steps[1]: an expression inside a run script",
    ),
    "pull_request_target": (
        REPO / ".github/workflows/gate.yml",
        lambda t: t.replace("  pull_request:\n", "  pull_request_target:\n"),
        "trigger pull_request_target",
    ),
    "pull_request_target in the example": (
        EXAMPLE,
        lambda t: t.replace("  pull_request:\n", "  pull_request_target:\n"),
        "trigger pull_request_target",
    ),
    "a tag-pinned checkout": (REPO / ".github/workflows/ci.yml", _tag_pinned, "actions/checkout@v5: not pinned"),
    "a tag-pinned action in the action": (
        ACTION,
        lambda t: re.sub(r"actions/upload-artifact@[0-9a-f]{40}", "actions/upload-artifact@v6", t),
        "actions/upload-artifact@v6: not pinned",
    ),
    "an abbreviated SHA": (EXAMPLE, _short_sha, "not pinned by a full commit SHA"),
    "an SHA without its release": (REPO / ".github/workflows/gate.yml", _no_version_comment, "no `# vX.Y.Z` comment"),
    "a flow-style uses": (
        REPO / ".github/workflows/ci.yml",
        lambda t: re.sub(
            r"- uses: (actions/checkout@[0-9a-f]{40}) # v\S+\n +with:\n +(persist-credentials: false).*\n",
            r"- {uses: \1, with: {\2}}\n",
            t,
            count=1,
        ),
        "not on a line of its own",
    ),
}


@pytest.mark.parametrize("control", NEGATIVE_CONTROLS)
def test_the_hygiene_check_rejects_each_violation(control: str) -> None:
    path, mutate, named = NEGATIVE_CONTROLS[control]
    text = path.read_text()
    broken = mutate(text)
    assert broken != text, "the violation was not injected"
    found = security_violations(broken, path.name)
    assert any(named in violation for violation in found), found


def test_the_pins_are_the_same_everywhere() -> None:
    """One release of each action across the files, so an update is one search and replace."""
    pins: dict[str, set[str]] = {}
    for path in CHECKED:
        for m in map(_USES_LINE.match, path.read_text().splitlines()):
            if m and m["ref"].startswith("actions/"):
                action, sha = m["ref"].split("@")
                pins.setdefault(action, set()).add(f"{sha}{m['rest']}")
    assert set(pins) >= {"actions/checkout", "actions/setup-python", "actions/upload-artifact"}
    assert all(len(found) == 1 for found in pins.values()), pins


# --- The gate's composite action ----------------------------------------------------------

ACTION_INPUTS = {
    "python-version": "3.12",
    "plugin-spec": "",
    "install-args": "-e .",
    "base-ref": "${{ github.event.pull_request.base.sha }}",
    "golden-dir": "tests/golden",
    "pytest-args": "",
    "artifact-name": "ensemble-conformance-verdict",
}


def _action_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-actions", str(path)],
        capture_output=True,
        text=True,
    )


@pytest.mark.integration
def test_the_action_schema_is_known() -> None:
    usage = subprocess.run([str(BIN / "check-jsonschema"), "--help"], capture_output=True, text=True, check=True)
    assert "vendor.github-actions" in usage.stdout


@pytest.mark.integration
def test_the_action_is_valid(tmp_path: Path) -> None:
    schema = _action_schema(ACTION)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    broken = tmp_path / "action.yml"
    text = ACTION.read_text()
    broken.write_text(text.replace("  using: composite\n", ""))
    assert broken.read_text() != text
    assert _action_schema(broken).returncode != 0  # runs: without using:


def test_the_action_interface() -> None:
    action = _load(ACTION.read_text())
    assert action["runs"]["using"] == "composite"
    assert {k: v.get("default") for k, v in action["inputs"].items()} == ACTION_INPUTS
    assert set(action["outputs"]) == {"verdict", "report"}
    ids = {step.get("id") for _, step in _steps(action)}
    for output in action["outputs"].values():  # each output is a step's output that exists
        m = re.fullmatch(r"\$\{\{ steps\.([\w-]+)\.outputs\.[\w-]+ \}\}", output["value"])
        assert m and m[1] in ids, output
    assert "fetch-depth: 0" in action["description"]


def test_the_action_passes_its_inputs_through_env() -> None:
    text = ACTION.read_text()
    action = _load(text)
    used = set()
    for where, step in _steps(action):
        assert "inputs." not in str(step.get("run", "")), where
        if "run" in step:
            assert step.get("shell") == "bash", where  # a composite action's run step names its shell
        for value in [*step.get("env", {}).values(), *step.get("with", {}).values()]:
            used.update(re.findall(r"\$\{\{ inputs\.([\w-]+) \}\}", str(value)))
    assert used == set(ACTION_INPUTS)  # every input is used, and only through env: or with:
    scripts = "\n".join(str(step.get("run", "")) for _, step in _steps(action))
    for needle in ("ensemble-conformance run", "ensemble-conformance report", "GITHUB_STEP_SUMMARY", "git archive"):
        assert needle in scripts
    assert '--golden-dir "$RUNNER_TEMP/ec-base/$GOLDEN_DIR" --report-json "$RUNNER_TEMP/ec/report.json"' in scripts
    assert 'python -m pip install "$GITHUB_ACTION_PATH/../../.."' in scripts
    upload = next(s for _, s in _steps(action) if str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and upload["with"]["name"] == "${{ inputs.artifact-name }}"


def _as_workflow(action: dict[str, Any]) -> dict[str, Any]:
    """The action's steps as a reusable workflow's job, so that the workflow linter checks
    their expressions (the inputs and step ids they name) as it would a workflow's."""
    inputs = {name: {"type": "string", "required": False} for name in action["inputs"]}
    return {
        "name": "composite",
        "on": {"workflow_call": {"inputs": inputs}},
        "permissions": {"contents": "read"},
        "jobs": {"composite": {"runs-on": "ubuntu-latest", "steps": action["runs"]["steps"]}},
    }


@pytest.mark.integration
def test_the_linter_accepts_the_actions_steps(tmp_path: Path) -> None:
    good = tmp_path / "composite.yml"
    good.write_text(yaml.safe_dump(_as_workflow(_load(ACTION.read_text())), sort_keys=False))
    lint = _lint(good)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    typo = tmp_path / "typo.yml"
    text = ACTION.read_text().replace("steps.run.outputs.verdict", "steps.rn.outputs.verdict")
    typo.write_text(yaml.safe_dump(_as_workflow(_load(text)), sort_keys=False))
    assert "steps.rn" in typo.read_text() and _lint(typo).returncode != 0  # a step that does not exist


# --- The example workflow a user copies ---------------------------------------------------


@pytest.mark.integration
def test_the_example_workflow_is_valid(tmp_path: Path) -> None:
    schema = _schema(EXAMPLE)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    lint = _lint(EXAMPLE)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    broken = tmp_path / "ensemble-gate.yml"
    broken.write_text(EXAMPLE.read_text().replace("runs-on: ubuntu-latest", "runs-onn: ubuntu-latest"))
    assert _schema(broken).returncode != 0 and _lint(broken).returncode != 0


def test_the_example_calls_the_gate_on_a_pin_change() -> None:
    text = EXAMPLE.read_text()
    workflow = _load(text)
    assert workflow["on"] == {"pull_request": {"paths": ["pyproject.toml", "requirements*.txt", "uv.lock"]}}
    assert workflow["permissions"] == {"contents": "read"}
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    checkout, gate = job["steps"]
    assert checkout["uses"].startswith("actions/checkout@") and checkout["with"]["fetch-depth"] == 0
    assert "ref" not in checkout["with"]  # the pull request's head, the default
    owner_repo, _, ref = gate["uses"].partition("/.github/actions/gate@")
    assert owner_repo.endswith("/ensemble-conformance") and re.fullmatch(r"[0-9a-f]{40}", ref)
    assert set(gate.get("with", {})) <= set(ACTION_INPUTS)
    assert "git ls-remote" in text  # how to find the commit to pin


@pytest.mark.integration
def test_the_linter_checks_the_example_against_the_action(tmp_path: Path) -> None:
    """With the action as a local one, the linter reads its metadata and checks the inputs
    the example passes; a misspelt input and an action without runs.using are caught."""
    (tmp_path / ".git").mkdir()  # the project root, where the linter resolves ./ actions
    local = tmp_path / ".github" / "actions" / "gate" / "action.yml"
    local.parent.mkdir(parents=True)
    (tmp_path / ".github" / "workflows").mkdir()
    text = re.sub(r"uses: \S+/\.github/actions/gate@.*", "uses: ./.github/actions/gate", EXAMPLE.read_text())
    assert "uses: ./.github/actions/gate\n" in text
    workflow = tmp_path / ".github" / "workflows" / "ensemble-gate.yml"
    workflow.write_text(text)
    local.write_text(ACTION.read_text())
    lint = _lint(workflow)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    workflow.write_text(text.replace("golden-dir:", "golden-dirr:"))
    assert "golden-dirr" in _lint(workflow).stdout
    workflow.write_text(text)
    local.write_text(ACTION.read_text().replace("  using: composite\n", ""))
    assert _lint(workflow).returncode != 0


# --- The action's scripts, run as the runner runs them -----------------------------------
#
# Each run step in the order of the action, under `bash --noprofile --norc -eo pipefail`
# (the runner's bash), in a scratch repository whose base commit and pull request head hold
# different goldens, with stand-ins for python (pip) and the ensemble-conformance command
# that record their arguments. The action's two uses: steps (setup-python, upload) are not run.

_STAND_IN = """#!{python}
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["EC_LOG"], "a") as log:
    log.write(json.dumps([Path(sys.argv[0]).name, *args]) + "\\n")
if args[:1] == ["run"]:
    golden = Path(args[args.index("--golden-dir") + 1])
    report = Path(args[args.index("--report-json") + 1])
    seen = {{p.name: p.read_text() for p in sorted(golden.iterdir())}}
    report.write_text(json.dumps({{"goldens": seen, "args": args}}))
    sys.exit(int(os.environ["EC_RUN_STATUS"]))
if args[:1] == ["report"]:
    Path(args[args.index("--markdown") + 1]).write_text("## verdict from " + args[1] + "\\n")
    sys.exit(int(os.environ["EC_RUN_STATUS"]))  # like the real one: exit 1 on a FAIL verdict
"""


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _user_repo(root: Path, goldens_on_base: bool = True) -> tuple[Path, str]:
    repo = root / "user"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "pyproject.toml").write_text('[project]\nname = "user"\ndependencies = ["flax==0.11.2"]\n')
    if goldens_on_base:
        (repo / "tests" / "golden").mkdir(parents=True)
        (repo / "tests" / "golden" / "mlp.npz").write_text("base")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    base = _git(repo, "rev-parse", "HEAD")
    (repo / "pyproject.toml").write_text('[project]\nname = "user"\ndependencies = ["flax==0.12.0"]\n')
    (repo / "tests" / "golden").mkdir(parents=True, exist_ok=True)
    (repo / "tests" / "golden" / "mlp.npz").write_text("head")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "the pull request: new pins and new goldens")
    for name in (".t", ".e", ".s"):  # what the glob .[test] would match, were globs expanded
        (repo / name).write_text("")
    return repo, base


def _expand(value: object, inputs: dict[str, str], outputs: dict[str, dict[str, str]]) -> str:
    def one(m: re.Match[str]) -> str:
        ctx, name, key = m["ctx"], m["name"], m["key"]
        if ctx == "inputs":
            return inputs[name]
        return outputs.get(name, {}).get(key, "")

    text = str(value)
    expanded = re.sub(r"\$\{\{ (?P<ctx>inputs|steps)\.(?P<name>[\w-]+)(?:\.outputs\.(?P<key>[\w-]+))? \}\}", one, text)
    assert "${{" not in expanded, f"the stand-in runner cannot evaluate {text!r}"
    return expanded


def _should_run(condition: object, failed: bool, outcomes: dict[str, str]) -> bool:
    if condition is None:
        return not failed
    if condition == "always()":
        return True
    m = re.fullmatch(r"\$\{\{ !cancelled\(\) && steps\.([\w-]+)\.outcome == 'success' \}\}", str(condition))
    assert m, f"the stand-in runner cannot evaluate {condition!r}"
    return outcomes.get(m[1]) == "success"


def _run_action(root: Path, repo: Path, status: int, **given: str) -> dict[str, Any]:
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "ensemble-conformance"):
        (bin_dir / name).write_text(_STAND_IN.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    temp, log = root / "runner-temp", root / "calls.jsonl"
    temp.mkdir(exist_ok=True)
    summary, output = root / "summary.md", root / "output"
    inputs = {**ACTION_INPUTS, **given}
    outputs: dict[str, dict[str, str]] = {}
    outcomes: dict[str, str] = {}
    failed, logs = False, []
    for _, step in _steps(_load(ACTION.read_text())):
        if "run" not in step or not _should_run(step.get("if"), failed, outcomes):
            continue
        output.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
            RUNNER_TEMP=str(temp),
            GITHUB_OUTPUT=str(output),
            GITHUB_STEP_SUMMARY=str(summary),
            GITHUB_ACTION_PATH=str(ACTION.parent),
            EC_LOG=str(log),
            EC_RUN_STATUS=str(status),
        )
        env.update({k: _expand(v, inputs, outputs) for k, v in step.get("env", {}).items()})
        script = root / "step.sh"
        script.write_text(step["run"])
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
        )
        logs.append(done.stdout + done.stderr)
        failed = failed or done.returncode != 0
        if "id" in step:
            outcomes[step["id"]] = "success" if done.returncode == 0 else "failure"
            outputs[step["id"]] = dict(line.split("=", 1) for line in output.read_text().splitlines())
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    report = temp / "ec" / "report.json"
    return {
        "failed": failed,
        "log": "".join(logs),
        "calls": calls,
        "outputs": outputs.get("run", {}),
        "summary": summary.read_text() if summary.exists() else "",
        "report": json.loads(report.read_text()) if report.exists() else None,
        "temp": temp,
    }


@pytest.mark.integration
def test_the_action_passes_on_a_passing_run(tmp_path: Path) -> None:
    repo, base = _user_repo(tmp_path)
    ran = _run_action(tmp_path, repo, 0, **{"base-ref": base, "install-args": "-e .[test] -r req.txt"})
    assert not ran["failed"], ran["log"]
    pips = [call[1:] for call in ran["calls"] if call[0] == "python" and call[3] == "install"]
    assert Path(pips[0][-1]).resolve() == REPO  # the plugin from the action's own checkout
    assert pips[1] == ["-m", "pip", "install", "-e", ".[test]", "-r", "req.txt"]  # split, no glob
    (run,) = [call[1:] for call in ran["calls"] if call[:2] == ["ensemble-conformance", "run"]]
    temp = ran["temp"]
    assert run == ["run", "--golden-dir", f"{temp}/ec-base/tests/golden", "--report-json", f"{temp}/ec/report.json"]
    assert ran["report"]["goldens"] == {"mlp.npz": "base"}  # the base branch's goldens, not the head's
    assert ran["outputs"]["verdict"] == "pass" and ran["outputs"]["report"] == f"{temp}/ec/report.json"
    assert ran["summary"] == f"## verdict from {temp}/ec/report.json\n"
    assert (temp / "ec" / "verdict.md").read_text() == ran["summary"]


@pytest.mark.integration
def test_the_action_fails_on_a_failing_run_after_the_verdict(tmp_path: Path) -> None:
    repo, base = _user_repo(tmp_path)
    spec = "ensemble-conformance==0.2.0"
    ran = _run_action(tmp_path, repo, 1, **{"base-ref": base, "pytest-args": "-k mlp -x", "plugin-spec": spec})
    assert ran["failed"]
    assert ["python", "-m", "pip", "install", spec] in ran["calls"]
    (run,) = [call for call in ran["calls"] if call[:2] == ["ensemble-conformance", "run"]]
    assert run[-3:] == ["-k", "mlp", "-x"]
    assert ran["outputs"]["verdict"] == "fail"
    assert ran["summary"].startswith("## verdict")  # written before the step fails
    assert "::error title=ensemble-conformance gate::the candidate pins fail" in ran["log"]
    assert f"{ran['temp']}/ec/verdict.md" in ran["log"]


@pytest.mark.parametrize("case", ["no goldens on the base", "base not fetched", "no base"])
@pytest.mark.integration
def test_the_action_names_a_missing_baseline(tmp_path: Path, case: str) -> None:
    repo, base = _user_repo(tmp_path, goldens_on_base=case != "no goldens on the base")
    base_ref = {"no goldens on the base": base, "base not fetched": "1" * 40, "no base": ""}[case]
    ran = _run_action(tmp_path, repo, 0, **{"base-ref": base_ref})
    assert ran["failed"] and not any(call[0] == "ensemble-conformance" for call in ran["calls"])
    expected = {
        "no goldens on the base": "has no directory tests/golden",
        "base not fetched": "fetch-depth: 0",
        "no base": "set the base-ref input",
    }[case]
    assert "::error title=ensemble-conformance gate::" in ran["log"] and expected in ran["log"]


def test_only_the_example_has_a_placeholder_pin() -> None:
    """The example's zeros stand for the release the user picks (its comment says how);
    every other pin is a real commit."""
    zeros = "@" + "0" * 40
    for path in CHECKED:
        for line in path.read_text().splitlines():
            if zeros in line:
                assert path == EXAMPLE and "/.github/actions/gate@" in line, f"{path.name}: {line}"
    assert zeros in EXAMPLE.read_text()
