"""Lifecycle compatibility across flax releases: what each recipe does on each release,
relative to the goldens made on the reference pins, as data with reasons (``ERAS``), how
a run is classified against its golden (``classify``), and what to do about a change
(``REMEDIES``).

The classes, from the goldens' point of view:

    same              values bit-equal to the golden (or the same error, the same API gone)
    moved             values within the tolerance classes, not bit-equal
    changed           values outside them (or other arrays, other shapes)
    raises            the golden has values (or another outcome); the run raises
    no longer raises  the golden raises; the run gives values
    other error       both raise, with different messages
    unavailable       the run lacks an API the recipe needs
    available         the golden lacked it; the run has it

On the reference pins the goldens are the expectation (lifecycle.EXPECTED adds the
transform modes). On any other flax release, ``expectation`` gives the era that release
falls in, and a run that does not do what the era says fails with both named. The eras were
measured on the matrix's pins (flax 0.9.0, 0.10.2, 0.10.7, 0.11.2, 0.12.0, each with the
jax, optax and orbax-checkpoint of its time; lifecycle values under the partitionable PRNG),
so a boundary between two measured pins is placed at the later one unless flax's changelog
names the release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ensemble_conformance.golden.pins import REFERENCE, version_tuple
from ensemble_conformance.scenarios.program import Outcome, Verdict

CLASSES = ("same", "moved", "changed", "raises", "no longer raises", "other error", "unavailable", "available")
FINE = ("same", "moved")  # what a gate lets through


def classify(golden: Outcome, now: Outcome, verdict: Verdict) -> str:
    """The class of a run against its golden (see the module's docstring)."""
    if now.kind == "unavailable":
        return "same" if golden.kind == "unavailable" and golden.error == now.error else "unavailable"
    if golden.kind == "unavailable":
        return "available"
    if golden.kind == "values" and now.kind == "values":
        if not verdict.ok:
            return "changed"
        exact = all(r.max_ulp == 0 and r.n_bad == 0 for r in verdict.reports)
        return "same" if exact else "moved"
    if now.kind == "raises":
        if golden.kind == "raises":
            return "same" if golden.error == now.error else "other error"
        return "raises"
    return "no longer raises"


@dataclass(frozen=True)
class Era:
    """What a recipe does from flax release ``since`` on (until the next era), relative to
    the reference goldens: its outcome, the start of its error (or the missing API), whether
    its values are the goldens' ("same", within tolerance) or not ("changed"), and why."""

    since: str
    outcome: str  # "values", "raises" or "unavailable"
    error: str = ""
    values: str = "same"
    reason: str = ""
    oracles_fail: tuple[str, ...] = ()  # golden-free checks of a later era's semantics that fail here

    def holds(self, now: Outcome, cls: str) -> bool:
        if now.kind != self.outcome or not now.error.startswith(self.error):
            return False
        if now.kind != "values":
            return True
        return (cls in FINE) == (self.values == "same")

    def describe(self) -> str:
        if self.outcome == "values":
            return "values (the goldens', within tolerance)" if self.values == "same" else "values (changed)"
        return f"{self.outcome} {self.error}".rstrip() + ("..." if self.outcome == "raises" else "")


AS_REFERENCE = Era("0.9.0", "values")  # a program with no eras behaves as on the reference pins

_SHARED_RNGS = (
    "before flax 0.11 a Dropout member holds no RNG state of its own: the members share one Rngs "
    "whose key has shape (), so vmapping the members over axis 0 reaches a rank-0 key"
)
_VMAP_RANK0 = "ValueError: vmap was requested to map its argument along axis 0"
_OWN_KEYS = "from flax 0.11 each member keeps its own (N,) key: the recipe gives the goldens' values"
_RESPLIT_WORKED = (
    "before flax 0.11 re-splitting on the forward is how members get their own dropout keys: the "
    "recipe runs, where the goldens (0.12.12) record its error"
)
_FOLD_IN = "ValueError: fold_in accepts a single key"
_RESPLIT_RAISES = "from flax 0.11 the members' own (N,) keys reach fold_in on the re-split and it raises"
_RNG_STATE = (
    "before flax 0.11 the members' RNG state is one shared key (shape ()), not (N,): the rng/ and shapes/ "
    "arrays differ from the goldens'"
)


def _eras(*eras: Era) -> tuple[Era, ...]:
    return eras


ERAS: Mapping[str, tuple[Era, ...]] = {
    "dropout_own_keys": _eras(
        Era("0.9.0", "raises", _VMAP_RANK0, reason=_SHARED_RNGS),
        Era("0.11.0", "values", reason=_OWN_KEYS),
    ),
    "dropout_split_rngs_forward": _eras(
        Era("0.9.0", "values", values="changed", reason=_RESPLIT_WORKED),
        Era("0.11.0", "raises", _FOLD_IN, reason=_RESPLIT_RAISES),
    ),
    "dropout_split_only_state_axes": _eras(
        Era("0.9.0", "values", values="changed", reason=_RESPLIT_WORKED),
        Era("0.11.0", "raises", _FOLD_IN, reason=_RESPLIT_RAISES),
    ),
    "dropout_call_keys_fork": _eras(
        Era("0.9.0", "raises", "AttributeError: type object 'Rngs' has no attribute 'fork'", reason="no Rngs.fork"),
        Era("0.10.7", "values", reason="Rngs.fork(split=N) exists (measured on 0.10.7, absent on 0.10.2)"),
    ),
    "dropout_call_keys_split": _eras(
        Era("0.9.0", "unavailable", "Rngs.split", reason="Rngs.split arrived in flax 0.12.6"),
        Era("0.12.6", "values", reason="Rngs.split(N) gives the same keys as fork(split=N)"),
    ),
    "scan_layers_dropout": _eras(
        Era("0.9.0", "raises", "ValueError: axis 0 is out of bounds", reason=_SHARED_RNGS + " (the scanned layers)"),
        Era("0.11.0", "values", reason=_OWN_KEYS),
    ),
    "scan_resplit_forward": _eras(
        Era("0.9.0", "raises", "TypeError: Scanned function carry", reason="flax 0.9's scan rejects the RNG carry"),
        Era(
            "0.10.0",
            "values",
            values="changed",
            reason=_RESPLIT_WORKED + " (measured on 0.10.2 and 0.10.7); the layers share one key of shape ()",
            oracles_fail=("oracle_layer_keys_distinct", "oracle_scan_equals_loop"),
        ),
        Era("0.11.0", "raises", _FOLD_IN, reason=_RESPLIT_RAISES + " (flax #5158)"),
    ),
    "ensemble_of_stacks": _eras(
        Era("0.9.0", "raises", _VMAP_RANK0, reason=_SHARED_RNGS),
        Era("0.11.0", "values", reason=_OWN_KEYS),
    ),
    "eval_shape_constructor": _eras(
        Era("0.9.0", "values", values="changed", reason=_RNG_STATE, oracles_fail=("oracle_eval_shape_member_axis",)),
        Era("0.11.0", "values", reason=_OWN_KEYS),
    ),
    "jit_constructor": _eras(
        Era("0.9.0", "values", values="changed", reason=_RNG_STATE),
        Era("0.11.0", "values", reason=_OWN_KEYS),
    ),
    "split_rngs_context_init": _eras(
        Era("0.9.0", "values", values="changed", reason=_RNG_STATE),
        Era("0.11.0", "values", reason=_OWN_KEYS),
    ),
    "state_axes_init": _eras(
        Era("0.9.0", "raises", "ValueError: Inconsistent aliasing detected", reason=_SHARED_RNGS),
        Era("0.11.0", "values", reason=_OWN_KEYS),
    ),
    "checkpoint_params": _eras(
        Era("0.9.0", "raises", _VMAP_RANK0, reason=_SHARED_RNGS + " (the checkpointed members have Dropout)"),
        Era("0.11.0", "values", reason=_OWN_KEYS),
    ),
    "checkpoint_full_state": _eras(
        Era("0.9.0", "raises", _VMAP_RANK0, reason=_SHARED_RNGS + " (the checkpointed members have Dropout)"),
        Era(
            "0.11.0",
            "raises",
            "TypeError: Cannot interpret 'key<fry>' as a data type",
            reason="orbax-checkpoint of flax 0.11's time (0.11.25) cannot save typed PRNG keys",
        ),
        Era("0.12.0", "values", reason="orbax-checkpoint 0.11.28 (flax 0.12.0's time) restores typed keys"),
    ),
    "batchnorm_shared_stats": _eras(
        Era("0.9.0", "raises", "ValueError: at vmap out_axes", reason="a broadcast BatchStat is updated per member"),
    ),
}


def expectation(program: str, flax: str) -> Era | None:
    """The era flax release ``flax`` falls in for ``program``; None on the reference
    release (and later ones), where the goldens themselves are the expectation."""
    if version_tuple(flax) >= version_tuple(REFERENCE.flax):
        return None
    eras = ERAS.get(program, (AS_REFERENCE,))
    now = version_tuple(flax)
    fitting = [e for e in eras if version_tuple(e.since) <= now]
    return fitting[-1] if fitting else eras[0]


_FORWARD = (
    "drop split_rngs (and StateAxes) on the forward: members keep their own keys; call nnx.vmap(in_axes=(0, None))"
)
_OLD_FLAX = "flax < 0.11: members share one Rngs; "
_MEMBER_AXIS = "code reading the members' RNG state must expect its member axis (N,) from flax 0.11"
_TREE_STATE_AXES = (
    "tree mode (and graph mode without updates) refuses StateAxes: build with the @nnx.split_rngs decorator and "
    "nnx.vmap(in_axes=0), or nnx.with_rngs"
)

# What to do when a recipe's class against the goldens is not fine: by program, then by
# class ("*" for any other).
REMEDIES: Mapping[str, Mapping[str, str]] = {
    "dropout_split_rngs_forward": {"*": "flax >= 0.11: " + _FORWARD + " (recipe dropout_own_keys)"},
    "dropout_split_only_state_axes": {"*": "flax >= 0.11 and tree mode: " + _FORWARD + " (recipe dropout_own_keys)"},
    "scan_resplit_forward": {
        "*": "flax >= 0.11: drop split_rngs(splits=L) on the scanned forward; layers keep their own keys "
        "(recipe scan_layers_dropout; flax #5158)"
    },
    "dropout_own_keys": {
        "*": _OLD_FLAX + "re-split on the forward with nnx.split_rngs(splits=N) (recipe dropout_split_rngs_forward)",
        "no longer raises": "works from flax 0.11: remove the split_rngs re-split from the forward",
    },
    "ensemble_of_stacks": {
        "*": _OLD_FLAX + "re-split the layer keys on the forward",
        "no longer raises": "works from flax 0.11: vmap over scan needs no re-split",
    },
    "scan_layers_dropout": {
        "*": _OLD_FLAX + "nnx.split_rngs(splits=L) on the scanned forward",
        "no longer raises": "works from flax 0.11: remove split_rngs(splits=L) from the scanned forward",
    },
    "dropout_call_keys_fork": {"*": "Rngs.fork(split=N) is deprecated from flax 0.12.6: use Rngs(...).split(N)"},
    "dropout_call_keys_split": {"*": "before flax 0.12.6 there is no Rngs.split: use Rngs(...).fork(split=N)"},
    "checkpoint_full_state": {
        "*": "saving typed PRNG keys needs orbax-checkpoint >= 0.11.28: save nnx.Param state only, or store "
        "jax.random.key_data of the keys"
    },
    "checkpoint_params": {
        "*": _OLD_FLAX + "members with Dropout cannot be vmapped over their RNG state; checkpoint without Dropout",
        "no longer raises": "works from flax 0.11 (members keep their own RNG state)",
    },
    "state_axes_init": {"*": _TREE_STATE_AXES, "no longer raises": "StateAxes at init works from flax 0.11"},
    "split_rngs_context_init": {
        "*": "tree mode: Rngs is no context manager; use the @nnx.split_rngs(splits=N) decorator",
        "changed": _MEMBER_AXIS,
    },
    "batchnorm_shared_stats": {
        "*": "statistics shared across members are not supported by nnx.vmap: keep per-member batch_stats "
        "(recipe batchnorm_members)"
    },
    "jit_constructor": {"*": _MEMBER_AXIS},
    "eval_shape_constructor": {"*": _MEMBER_AXIS},
}


# A project's own scenarios (scenarios/user.py, "<name>.<step>") are any module: their
# remedies go by the error a release raises, (what the message contains, what to do).
ERROR_REMEDIES: tuple[tuple[str, str], ...] = (
    (
        "requested to map its argument along axis 0",
        _OLD_FLAX + "their Dropout keys have no member axis, so the stacked ensemble cannot be vmapped "
        "whole: move to flax >= 0.11, or re-split on the forward with nnx.split_rngs(splits=N) "
        "(recipe dropout_split_rngs_forward)",
    ),
    (
        "fold_in accepts a single key",
        "flax >= 0.11: each member keeps its own (N,) key; drop the nnx.split_rngs re-split from the forward "
        "(recipe dropout_own_keys)",
    ),
    ("StateAxes", _TREE_STATE_AXES),
)


def remedy(program: str, cls: str, error: str = "") -> str | None:
    """What to do about ``program`` now classed ``cls`` (raising ``error``); None when fine
    or unknown."""
    if cls in FINE:
        return None
    table = REMEDIES.get(program)
    if table is None:
        return next((text for needle, text in ERROR_REMEDIES if needle in error), None)
    return table.get(cls, table.get("*"))
