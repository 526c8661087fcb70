"""--impl files and modules that fail while importing: a ValueError that names the spec
and shows the failure's last lines (the plugin, src/ensemble_conformance/plugin/, makes it a usage error, exit
4), never pytest's INTERNALERROR (exit 3)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ensemble_conformance.scenarios.runner import load_impl
from ensemble_conformance.tooling.mutation import SuiteRun

RAISES = """\
import math


def _setup():
    raise RuntimeError("no device table for this build")


TABLE = _setup()


def f(seed, x, num_models, features):
    return x
"""

BAD_SYNTAX = """\
def f(seed, x, num_models, features:
    return x
"""

BAD_IMPORT = """\
from ensemble_conformance.scenarios.core import vmap_over_ensembel


def f(seed, x, num_models, features):
    return vmap_over_ensembel(seed, x, num_models, features)
"""


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_file_that_raises_at_import_names_the_spec_the_line_and_the_error(tmp_path: Path) -> None:
    path = _file(tmp_path, "raises.py", RAISES)
    spec = f"{path}:f"
    with pytest.raises(ValueError) as err:
        load_impl(spec)
    message = str(err.value)
    assert message.startswith(f"--impl {spec!r}: importing {path} failed:")
    assert f'File "{path}", line 8, in <module>' in message and "TABLE = _setup()" in message
    assert f'File "{path}", line 5, in _setup' in message
    assert message.rstrip().endswith("RuntimeError: no device table for this build")
    assert "importlib" not in message and "runner.py" not in message  # only the user's frames
    assert isinstance(err.value.__cause__, RuntimeError)
    assert not any(name.startswith("_ensemble_conformance_impl_raises") for name in sys.modules)


def test_a_file_with_a_syntax_error_names_the_spec_the_line_and_the_caret(tmp_path: Path) -> None:
    path = _file(tmp_path, "bad_syntax.py", BAD_SYNTAX)
    with pytest.raises(ValueError) as err:
        load_impl(f"{path}:f")
    message = str(err.value)
    assert message.startswith(f"--impl '{path}:f': importing {path} failed:")
    assert f'File "{path}", line 1' in message and "def f(seed, x, num_models, features:" in message
    assert "^" in message and "SyntaxError: '(' was never closed" in message


def test_a_file_whose_own_import_fails_shows_that_import(tmp_path: Path) -> None:
    path = _file(tmp_path, "bad_import.py", BAD_IMPORT)
    with pytest.raises(ValueError) as err:
        load_impl(f"{path}:f")
    message = str(err.value)
    assert f'File "{path}", line 1, in <module>' in message
    assert "ImportError: cannot import name 'vmap_over_ensembel'" in message


def test_a_module_that_does_not_exist_names_the_spec_and_the_module() -> None:
    with pytest.raises(ValueError) as err:
        load_impl("no_such_package_xyz.impl:f")
    message = str(err.value)
    assert message.startswith("--impl 'no_such_package_xyz.impl:f': cannot import module 'no_such_package_xyz.impl':")
    assert "ModuleNotFoundError: No module named 'no_such_package_xyz'" in message


def test_a_module_that_raises_at_import_is_a_value_error_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _file(tmp_path, "raising_impl_module.py", RAISES)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as err:
        load_impl("raising_impl_module:f")
    message = str(err.value)
    assert message.startswith("--impl 'raising_impl_module:f': cannot import module 'raising_impl_module':")
    assert "TABLE = _setup()" in message and "RuntimeError: no device table for this build" in message


@pytest.mark.integration
def test_the_suite_stops_with_a_usage_error_and_the_cause(suite: Callable[..., SuiteRun], tmp_path: Path) -> None:
    path = _file(tmp_path, "bad.py", RAISES)
    run = suite("--impl", f"{path}:f", "-k", "nothing")
    assert run.returncode == 4, run.output[-3000:]
    assert "INTERNALERROR" not in run.output
    assert f"--impl '{path}:f': importing {path} failed:" in run.output
    assert "RuntimeError: no device table for this build" in run.output


HELPER = """\
def level(n):
    if n == 0:
        raise KeyError("deep inside a helper")
    return level(n - 1)
"""

CALLS_HELPER = """\
import deep_helper_module

deep_helper_module.level(8)
"""


def test_an_error_raised_deep_in_another_module_still_shows_the_files_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = _file(tmp_path, "deep_helper_module.py", HELPER)
    path = _file(tmp_path, "calls_helper.py", CALLS_HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "deep_helper_module", raising=False)
    with pytest.raises(ValueError) as err:
        load_impl(f"{path}:f")
    message = str(err.value)
    assert f'File "{path}", line 3, in <module>' in message and "deep_helper_module.level(8)" in message
    assert f'File "{helper}", line 3, in level' in message  # where it was raised
    assert message.count(", in level") == 3  # the innermost frames, not all nine
    assert message.rstrip().endswith("KeyError: 'deep inside a helper'")
