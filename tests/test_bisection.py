"""The release bisection logic (the nox session runs the suite as its check)."""

from __future__ import annotations

import pytest
from tools.bisection import between, first_changed, releases_from_pip_index

PIP_OUTPUT = """flax (0.12.12)
Available versions: 0.12.12, 0.12.10, 0.12.2, 0.12.0rc1, 0.11.2, 0.10.7, 0.10.2, 0.9.0, 0.8.5
"""


def test_releases_are_parsed_sorted_and_pre_releases_dropped() -> None:
    releases = releases_from_pip_index(PIP_OUTPUT)
    assert releases == ["0.8.5", "0.9.0", "0.10.2", "0.10.7", "0.11.2", "0.12.2", "0.12.10", "0.12.12"]
    with pytest.raises(ValueError, match="Available versions"):
        releases_from_pip_index("nothing here")


def test_between_includes_both_ends_and_checks_them() -> None:
    releases = releases_from_pip_index(PIP_OUTPUT)
    assert between(releases, "0.10.2", "0.12.10") == ["0.10.2", "0.10.7", "0.11.2", "0.12.2", "0.12.10"]
    with pytest.raises(ValueError, match="older than"):
        between(releases, "0.12.10", "0.10.2")
    with pytest.raises(ValueError, match=r"not a published release: 0\.10\.3"):
        between(releases, "0.10.3", "0.12.10")


@pytest.mark.parametrize("first_bad", range(1, 8))
def test_finds_the_first_changed_release_in_log_steps(first_bad: int) -> None:
    releases = releases_from_pip_index(PIP_OUTPUT)
    calls: list[str] = []

    def changed(version: str) -> bool:
        calls.append(version)
        return releases.index(version) >= first_bad

    assert first_changed(releases, changed, log=lambda _: None) == releases[first_bad]
    assert len(calls) <= 2 + 3  # both ends, then ceil(log2(6)) probes
    assert len(set(calls)) == len(calls)


def test_refuses_when_the_ends_do_not_bracket_a_change() -> None:
    releases = ["1.0", "1.1", "1.2"]
    with pytest.raises(ValueError, match="does not differ"):
        first_changed(releases, lambda v: False, log=lambda _: None)
    with pytest.raises(ValueError, match="already differs"):
        first_changed(releases, lambda v: True, log=lambda _: None)
