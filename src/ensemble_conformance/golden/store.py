"""The golden store: one .npz per case plus golden/manifest.json.

- Files are written byte-for-byte deterministically (fixed zip timestamps, sorted
  members), so an unchanged case rewrites to the same bytes and the same sha256.
- A regeneration is one transaction, all or nothing, under an exclusive lock on the
  directory (``.regen.lock``, which names its holder). It stages every new file beside
  its target, writes a journal (``.regen-journal.json``: the files and the new manifest),
  renames the staged files into place, writes the manifest and deletes the journal. A
  kill before the journal leaves the old goldens (the next transaction deletes the staged
  files); a kill after it leaves an interrupted state that the suite reports and the next
  transaction completes (roll forward). The manifest is re-read under the lock, so two
  regenerations never lose each other's entries.
- Files are read with ``allow_pickle=False`` after their sha256 is checked against the
  manifest, and every member is checked against what the case implies (names, shapes,
  dtypes) and for NaN or infinity. bfloat16 arrays are stored as their uint16 bits.
- This module knows nothing of pytest, flax or the cases: a case is anything with an
  ``id`` and a ``spec`` (what its golden's metadata records of it), its record
  (``Storable``) says what made it and which tolerance class judges it; the caller's
  ``layout`` says what a case's arrays must look like (None: not checked).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import socket
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Protocol

import ml_dtypes
import numpy as np

from ensemble_conformance.golden.compare import non_finite
from ensemble_conformance.golden.pins import REFERENCE, Pins

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".regen.lock"
JOURNAL = ".regen-journal.json"
STAGED_SUFFIX = ".staged"
META_KEY = "__meta__"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
ENTRY_FIELDS = ("file", "sha256", "variant", "tolerance_class", "environment")  # each a string

# What each stored array must look like: member name -> (shape, dtype name).
Layout = Mapping[str, tuple[tuple[int, ...], str]]

# A test's injection point: called with the name of each step of a transaction's commit
# ("stage:<file>", "journal", "rename:<file>", "remove:<file>", "manifest", "done") and
# of each atomic write ("write:<file>", after the data, before the rename). A fault test
# sets it to kill the process or raise an OSError at one step.
FAULT: Callable[[str], None] | None = None


_HELD: set[Path] = set()  # directories whose lock this process holds


def _step(name: str) -> None:
    if FAULT is not None:
        FAULT(name)


class GoldenError(Exception):
    """A golden file or the manifest cannot be used. The message says what to do."""


class GoldenMissingError(GoldenError):
    pass


class GoldenIntegrityError(GoldenError):
    pass


class GoldenLockError(GoldenError):
    """Another regeneration holds the directory's lock."""


class GoldenFormatError(GoldenError):
    """A file written by a newer ensemble-conformance: never overwritten, never read as ours."""


class GoldenBusyError(GoldenError):
    """The directory changed under a reader: a regeneration is running or committed meanwhile."""


def _format_problem(found: Any, what: Path) -> GoldenError | None:
    """None when ``found`` is this tool's format_version; else the error to raise: a newer
    version asks for an upgrade (regenerating would destroy the newer file), anything else is
    damage."""
    if found == FORMAT_VERSION and not isinstance(found, bool):
        return None
    if isinstance(found, int) and not isinstance(found, bool) and found > FORMAT_VERSION:
        return GoldenFormatError(
            f"{what} has format_version {found}; this ensemble-conformance reads format {FORMAT_VERSION}. It was "
            "written by a newer ensemble-conformance: upgrade ensemble-conformance to read it "
            "(pip install -U ensemble-conformance). Do not regenerate over it."
        )
    return GoldenIntegrityError(f"{what}: format_version {found!r} is not one ensemble-conformance writes")


@dataclass(frozen=True)
class GoldenRecord:
    """Everything stored for one case: its inputs, its output and every member's params."""

    case: Any  # a core case (program.Case, form "core"): id, program (the variant), its sizes
    inputs: dict[str, np.ndarray]
    output: np.ndarray
    params: dict[str, np.ndarray]

    @classmethod
    def from_arrays(cls, path: Path, case: Any, arrays: Mapping[str, np.ndarray]) -> GoldenRecord:
        if "output" not in arrays:
            raise GoldenIntegrityError(f"{path}: no 'output' array")
        return cls(
            case=case,
            inputs={k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("input:")},
            output=arrays["output"],
            params={k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("param:")},
        )

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"input:{k}": v for k, v in self.inputs.items()}
        out.update({f"param:{k}": v for k, v in self.params.items()})
        out["output"] = self.output
        return out

    def made_by(self) -> tuple[str, str]:
        """The manifest's ``variant`` and ``tolerance_class``: the core case's variant and its
        output's dtype."""
        return self.case.program, self.output.dtype.name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """Write ``path`` through a temporary file that replaces it only once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a golden is an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            _step(f"write:{path.name}")
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def _fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _encode(a: np.ndarray) -> tuple[np.ndarray, str]:
    if a.dtype == ml_dtypes.bfloat16:
        return a.view(np.uint16), "bfloat16"
    if a.dtype.kind not in "fiu" or a.dtype.hasobject:
        raise GoldenError(f"cannot store dtype {a.dtype}: goldens hold numeric arrays only")
    return a, a.dtype.name


def _decode(path: Path, key: str, a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        if a.dtype != np.uint16:
            raise GoldenIntegrityError(f"{path}: array {key!r} stored as {a.dtype}, bfloat16 bits must be uint16")
        return a.view(ml_dtypes.bfloat16)
    if a.dtype.name != dtype:
        raise GoldenIntegrityError(f"{path}: array {key!r} stored as {a.dtype}, its metadata says {dtype}")
    return a


class Storable(Protocol):
    """What the store writes: a case (``id``, and ``spec``: what its metadata records of
    it), its named arrays, and what the manifest says made it and judges it; a scenario's
    record adds its outcome (values, raises, unavailable)."""

    @property
    def case(self) -> Any: ...

    def arrays(self) -> dict[str, np.ndarray]: ...

    def made_by(self) -> tuple[str, str]:
        """The manifest entry's ``variant`` (what made the file) and ``tolerance_class``."""
        ...


def _spec(case: Any) -> Any:
    """A case's ``spec`` as its JSON metadata holds it (tuples become lists)."""
    return json.loads(json.dumps(case.spec))


def encode_npz(record: Storable) -> bytes:
    """The file's bytes: a deterministic, uncompressed .npz with a JSON metadata member."""
    members: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for key, value in record.arrays().items():
        members[key], dtypes[key] = _encode(np.asarray(value, order="C"))  # ascontiguousarray makes 0-d 1-d
    meta = {"format_version": FORMAT_VERSION, "case_id": record.case.id, "case": _spec(record.case), "dtypes": dtypes}
    outcome = getattr(record, "outcome_meta", None)
    if outcome is not None:  # only scenarios: the core cases' files keep their bytes
        meta["outcome"] = outcome
    members[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(members):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, members[key], allow_pickle=False)
    return buffer.getvalue()


def _check_layout(path: Path, arrays: Mapping[str, np.ndarray], layout: Layout) -> None:
    missing = sorted(set(layout) - set(arrays))
    extra = sorted(set(arrays) - set(layout))
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else []
        )
        raise GoldenIntegrityError(
            f"{path}: members do not match the case ({'; '.join(parts)}); expected {', '.join(sorted(layout))}"
        )
    for key, (shape, dtype) in layout.items():
        value = arrays[key]
        if tuple(value.shape) != tuple(shape) or value.dtype.name != dtype:
            raise GoldenIntegrityError(
                f"{path}: array {key!r} is {value.dtype.name}{list(value.shape)}, the case implies {dtype}{list(shape)}"
            )


def read_npz(path: Path, case: Any, layout: Layout | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify one golden file: metadata, members, shapes, dtypes, finiteness.
    Returns its arrays and its metadata."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise GoldenIntegrityError(f"{path}: not a readable .npz ({err})") from err
    try:
        meta = json.loads(str(raw.pop(META_KEY)))
        dtypes: dict[str, str] = meta["dtypes"]
        if not isinstance(dtypes, dict):
            raise TypeError("dtypes is not a mapping")
    except (KeyError, ValueError, TypeError) as err:
        raise GoldenIntegrityError(f"{path}: metadata member {META_KEY!r} missing or broken ({err})") from err
    problem = _format_problem(meta.get("format_version"), path)
    if problem is not None:
        raise problem
    if meta.get("case_id") != case.id:
        raise GoldenIntegrityError(f"{path}: holds case {meta.get('case_id')!r}, expected {case.id!r}")
    if meta.get("case") != _spec(case):
        raise GoldenIntegrityError(f"{path}: made for case {meta.get('case')}, but the grid now defines {_spec(case)}")
    if set(dtypes) != set(raw):
        raise GoldenIntegrityError(f"{path}: the metadata lists arrays {sorted(dtypes)}, the file holds {sorted(raw)}")
    arrays = {key: _decode(path, key, value, dtypes[key]) for key, value in raw.items()}
    if layout is not None:
        _check_layout(path, arrays, layout)
    for key, value in arrays.items():
        count, first = non_finite(value)
        if count:
            raise GoldenIntegrityError(
                f"{path}: array {key!r} holds {count} NaN or infinite value(s), the first at index {first}; "
                "a golden must be finite"
            )
    return arrays, meta


def decode_npz(path: Path, case: Any, layout: Layout | None = None) -> GoldenRecord:
    """One core case's golden: its inputs, output and parameters."""
    return GoldenRecord.from_arrays(path, case, read_npz(path, case, layout)[0])


def environment_id(env: dict[str, Any]) -> str:
    blob = json.dumps(env, sort_keys=True).encode()
    return "env-" + hashlib.sha256(blob).hexdigest()[:12]


def validate_manifest(data: Any, path: Path) -> dict[str, Any]:
    """The manifest's structure, checked key by key; a GoldenIntegrityError names the key."""

    def bad(where: str, what: str) -> GoldenIntegrityError:
        return GoldenIntegrityError(
            f"{path}: {where} {what}. Restore the manifest from version control (git checkout -- {path})."
        )

    if not isinstance(data, dict):
        raise bad("the top level", f"is a {type(data).__name__}, not an object")
    for key in ("environments", "cases"):
        if not isinstance(data.get(key), dict):
            raise bad(f"key {key!r}", "is missing or not an object")
    for case_id, entry in data["cases"].items():
        if not isinstance(entry, dict):
            raise bad(f"cases[{case_id!r}]", "is not an object")
        for name in ENTRY_FIELDS:
            if not isinstance(entry.get(name), str):
                raise bad(f"cases[{case_id!r}]", f"has no {name!r} string")
        if not _SHA256.match(entry["sha256"]):
            raise bad(f"cases[{case_id!r}]['sha256']", "is not 64 lowercase hex digits")
        if entry["environment"] not in data["environments"]:
            raise bad(f"cases[{case_id!r}]['environment']", f"names {entry['environment']!r}, not in 'environments'")
    return data


def _holder_text() -> str:
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:6]))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}: {command}"


@dataclass
class Transaction:
    """The writes and removals of one regeneration, committed together on exit."""

    store: GoldenStore
    recovered: list[str] = field(default_factory=list)  # what completing an interrupted one did
    env: dict[str, dict[str, Any]] = field(default_factory=dict)
    staged: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)

    def write(self, record: Storable, env: dict[str, Any]) -> bool:
        """Stage one case's golden. Returns False when the file already holds exactly these
        bytes and the manifest already lists them (nothing to rewrite)."""
        data = encode_npz(record)
        digest = hashlib.sha256(data).hexdigest()
        env_id = environment_id(env)
        variant, tolerance_class = record.made_by()
        entry = {
            "file": self.store.path_for(record.case.id).name,
            "sha256": digest,
            "variant": variant,
            "tolerance_class": tolerance_class,
            "environment": env_id,
        }
        self.env[env_id] = env
        self.staged[record.case.id] = (data, entry)
        self.removed.discard(record.case.id)
        path = self.store.path_for(record.case.id)
        current = self.store.manifest()["cases"].get(record.case.id)
        return not (current == entry and path.exists() and sha256_of(path) == digest)

    def same_bytes(self, case_id: str) -> bool:
        """Whether the staged golden of ``case_id`` is the file already there, byte for byte."""
        path = self.store.path_for(case_id)
        return case_id in self.staged and path.exists() and sha256_of(path) == self.staged[case_id][1]["sha256"]

    def remove(self, case_id: str) -> None:
        self.staged.pop(case_id, None)
        self.removed.add(case_id)


class GoldenStore:
    """A directory of golden files and its manifest."""

    def __init__(
        self,
        directory: Path | str,
        regen_hint: str = "nox -s regen --",
        reference: Pins = REFERENCE,
        layout: Callable[[Any], Layout | None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.regen_hint = regen_hint
        self.reference = reference
        self.layout = layout
        self._manifest: dict[str, Any] | None = None

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    @property
    def journal_path(self) -> Path:
        return self.directory / JOURNAL

    def path_for(self, case_id: str) -> Path:
        return self.directory / f"{case_id}.npz"

    def regen_command(self, case_ids: Iterable[str]) -> str:
        return " ".join([self.regen_hint, *case_ids])

    # Reading ------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    def _empty_manifest(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "reference_pins": self.reference.as_dict(),
            "environments": {},
            "cases": {},
        }

    def _read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return self._empty_manifest()
        try:
            data = json.loads(self.manifest_path.read_text())
        except ValueError as err:
            raise GoldenIntegrityError(
                f"{self.manifest_path} is not valid JSON ({err}); restore it from version control"
            ) from err
        except OSError as err:
            raise GoldenError(f"cannot read {self.manifest_path}: {err.strerror or err}") from err
        problem = _format_problem(data.get("format_version") if isinstance(data, dict) else None, self.manifest_path)
        if isinstance(problem, GoldenIntegrityError):
            raise GoldenIntegrityError(
                f"{problem}. Restore the manifest from version control (git checkout -- {self.manifest_path})."
            )
        if problem is not None:
            raise problem
        return validate_manifest(data, self.manifest_path)

    def interrupted(self) -> bool:
        """A regeneration was killed after its commit point: the next one completes it."""
        return self.journal_path.exists()

    def _interrupted_error(self) -> GoldenIntegrityError:
        return GoldenIntegrityError(
            f"{self.directory}: an interrupted regeneration ({self.journal_path} is still there), so its "
            f"goldens are half old, half new. Rerun `{self.regen_command([])}`: it completes the interrupted "
            "one first."
        )

    def problems(self) -> list[str]:
        """What stops every comparison in this directory, each with what to do; empty when usable."""
        if not self.directory.is_dir():
            what = "is not a directory" if self.directory.exists() else "does not exist"
            if self.directory.is_symlink() and not self.directory.exists():
                what = f"is a symbolic link to {os.readlink(self.directory)}, which does not exist"
            return [
                f"golden directory {self.directory} {what}. Check --golden-dir; to create goldens there run "
                f"`{self.regen_command(['--all'])}`."
            ]
        if self.interrupted():
            return [str(self._interrupted_error())]
        if not self.manifest_path.exists():
            return [
                f"{self.manifest_path} is missing, so no golden in {self.directory} can be trusted. Restore it "
                f"from version control (git checkout -- {self.manifest_path}) or rewrite every golden with "
                f"`{self.regen_command(['--all'])}`."
            ]
        try:
            self.manifest()
        except GoldenError as err:
            return [str(err)]
        return []

    def leftovers(self) -> list[Path]:
        """Temporary and staged files a killed write left behind (the next regeneration removes them)."""
        if not self.directory.is_dir() or self.interrupted():
            return []
        found = [*self.directory.glob(".*.tmp"), *self.directory.glob(f".*{STAGED_SUFFIX}")]
        return sorted(found)

    def environment_of(self, case_id: str) -> dict[str, Any]:
        manifest = self.manifest()
        entry = manifest["cases"].get(case_id)
        if entry is None:
            return {}
        return dict(manifest["environments"].get(entry["environment"], {}))

    def load(self, case: Any) -> GoldenRecord:
        """The verified golden of a core case. Raises GoldenMissingError / GoldenIntegrityError."""
        return GoldenRecord.from_arrays(self.path_for(case.id), case, self.load_arrays(case)[0])

    def load_arrays(self, case: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The verified arrays and metadata of any case's golden (a core case or a scenario).

        Readers take no lock (a regeneration holds it for minutes); a file that does not
        fit the manifest read at the start of the run is first checked against a
        regeneration running now (GoldenBusyError) or one committed since (the manifest on
        disk lists the file as it is): neither is damage."""
        if self.interrupted():
            raise self._busy(case.id) or self._interrupted_error()
        path = self.path_for(case.id)
        if not path.exists():
            raise self._busy(case.id) or GoldenMissingError(
                f"no golden file {path} for case {case.id}. Create it on the reference pins with:\n"
                f"  {self.regen_command([case.id])}"
            )
        entry = self.manifest()["cases"].get(case.id)
        actual = sha256_of(path)
        if entry is None or actual != entry["sha256"]:
            busy = self._busy(case.id, actual)
            if busy is not None:
                raise busy
        if entry is None:
            raise GoldenIntegrityError(
                f"{path} is not listed in {self.manifest_path}, so it cannot be trusted. "
                f"Regenerate it with `{self.regen_command([case.id])}`."
            )
        if actual != entry["sha256"]:
            raise GoldenIntegrityError(
                f"{path} has sha256 {actual}, but {self.manifest_path} records {entry['sha256']}: "
                "the file was changed outside the regeneration command. Restore it from version "
                f"control (git checkout -- {path}) or regenerate it with "
                f"`{self.regen_command([case.id])}`."
            )
        layout = self.layout(case) if self.layout is not None else None
        try:
            return read_npz(path, case, layout)
        except GoldenIntegrityError as err:
            raise GoldenIntegrityError(
                f"{err}. If the file was damaged, restore it and the manifest from version control "
                f"(git checkout -- {path} {self.manifest_path}); if the case changed, regenerate it with "
                f"`{self.regen_command([case.id])}`."
            ) from err

    def regenerating(self) -> str | None:
        """Who holds the regeneration lock now (its holder line), or None. Takes no lock of
        its own beyond a non-blocking probe, and creates nothing."""
        lock = self.directory / LOCK
        if self.directory.resolve() in _HELD:
            return None  # this process is the regeneration: it reads its own directory
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return lock.read_text(errors="replace").strip() or "another process"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _busy(self, case_id: str, actual: str | None = None) -> GoldenBusyError | None:
        """Why a golden that does not fit this run's manifest is no damage: a regeneration of
        the directory is running now, or one committed after the manifest was read."""
        holder = self.regenerating()
        if holder is not None:
            return GoldenBusyError(
                f"{self.directory} is being regenerated right now ({holder}), so {self.path_for(case_id).name} "
                "was read mid-change. Nothing is damaged: rerun the suite once the regeneration has finished."
            )
        if self._manifest is None or actual is None:
            return None
        try:
            fresh = self._read_manifest()
        except GoldenError:
            return None
        entry = fresh["cases"].get(case_id)
        if fresh != self._manifest and entry is not None and entry["sha256"] == actual:
            return GoldenBusyError(
                f"{self.directory} was regenerated while this run read it ({self.manifest_path} changed after the "
                f"run started; {self.path_for(case_id).name} is the regenerated file). Nothing is damaged: rerun "
                "the suite to judge every case by the new goldens."
            )
        return None

    def stored_ids(self) -> list[str]:
        """Case ids of every .npz in the directory, sorted."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.npz") if not p.name.startswith("."))

    def unused(self, case_ids: Iterable[str]) -> list[str]:
        """Golden files that no case uses, plus manifest entries with no case, sorted."""
        known = set(case_ids)
        listed = set(self.manifest()["cases"]) if self.manifest_path.exists() else set()
        return sorted((set(self.stored_ids()) | listed) - known)

    # Writing ------------------------------------------------------------------------

    @contextmanager
    def lock(self, timeout: float = 0.0, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the directory's exclusive lock. Waits up to ``timeout`` seconds for another
        holder (telling ``on_wait`` who it is), then raises GoldenLockError naming it."""
        dangling = self.directory.is_symlink() and not self.directory.exists()
        if dangling:
            raise GoldenError(
                f"golden directory {self.directory} is a symbolic link to {os.readlink(self.directory)}, which does "
                "not exist. Create the target directory or point the link (or --golden-dir) at an existing one."
            )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except FileExistsError as err:
            raise GoldenError(f"golden directory {self.directory} exists but is not a directory") from err
        except OSError as err:
            raise _io_error("lock", self.directory / LOCK, err) from err
        try:
            # A reader's probe (regenerating()) holds a shared lock for microseconds and
            # writes no holder line: a lock without one is waited for a moment longer.
            deadline = time.monotonic() + timeout
            grace = time.monotonic() + 2.0
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = Path(self.directory / LOCK).read_text(errors="replace").strip()
                    if time.monotonic() >= deadline and (holder or time.monotonic() >= grace):
                        raise GoldenLockError(
                            f"{self.directory} is being regenerated by another process ({holder or 'unknown holder'})"
                            ". Wait for it to finish, or stop it, then run the regeneration again."
                        ) from None
                    if on_wait is not None and holder and not told:
                        on_wait(f"waiting for the regeneration lock on {self.directory}, held by {holder}")
                        told = True
                    time.sleep(0.01 if not holder else 0.1)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
            except OSError as err:
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise _io_error("lock", self.directory / LOCK, err) from err
            held = self.directory.resolve()
            _HELD.add(held)
            try:
                yield
            finally:
                _HELD.discard(held)
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextmanager
    def transaction(self, timeout: float = 0.0, on_wait: Callable[[str], None] | None = None) -> Iterator[Transaction]:
        """Lock the directory, complete an interrupted regeneration, remove leftovers,
        re-read the manifest; on a clean exit commit the staged writes all at once."""
        with self.lock(timeout, on_wait):
            txn = Transaction(self, recovered=self.recover())
            yield txn
            self._commit(txn)

    def write(self, record: Storable, env: dict[str, Any]) -> bool:
        """Store one case's golden in a transaction of its own."""
        with self.transaction() as txn:
            return txn.write(record, env)

    def remove(self, case_id: str) -> None:
        with self.transaction() as txn:
            txn.remove(case_id)

    def recover(self) -> list[str]:
        """Under the lock: roll an interrupted regeneration forward, delete the files a killed
        one left, re-read the manifest. Returns what it did, one line each."""
        done: list[str] = []
        if self.interrupted():
            try:
                journal = json.loads(self.journal_path.read_text())
                newer = _format_problem(journal.get("format_version"), self.journal_path)
                if isinstance(newer, GoldenFormatError):
                    raise newer
                files: dict[str, str | None] = journal["files"]
                manifest = validate_manifest(journal["manifest"], self.journal_path)
            except GoldenFormatError:
                raise
            except (OSError, ValueError, KeyError, TypeError, AttributeError, GoldenError) as err:
                raise GoldenIntegrityError(
                    f"{self.journal_path} cannot be read ({err}); restore {self.directory} from version control"
                ) from err
            for name, digest in files.items():
                target, staged = self.directory / name, self.directory / f".{name}{STAGED_SUFFIX}"
                if digest is None:
                    _guard("remove", target, partial(target.unlink, missing_ok=True))
                elif staged.exists():
                    _guard("rename", staged, partial(os.replace, staged, target))
                elif not target.exists() or sha256_of(target) != digest:
                    raise GoldenIntegrityError(
                        f"{target}: the interrupted regeneration's new file is gone; restore {self.directory} "
                        "from version control"
                    )
            self._write_manifest(manifest)
            _guard("remove", self.journal_path, lambda: self.journal_path.unlink())
            done.append(f"completed an interrupted regeneration ({len(files)} file(s))")
        for path in self.leftovers():
            _guard("remove", path, partial(path.unlink, missing_ok=True))
            done.append(f"removed {path.name}, left by a killed regeneration")
        self._manifest = None
        self.manifest()
        return done

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
        _guard("write", self.manifest_path, lambda: _write_bytes(self.manifest_path, text.encode()), "manifest")

    def _commit(self, txn: Transaction) -> None:
        manifest = self._read_manifest()  # fresh: never a copy cached before the lock
        files: dict[str, str | None] = {}
        writes: list[tuple[Path, bytes]] = []
        for case_id, (data, entry) in sorted(txn.staged.items()):
            path = self.path_for(case_id)
            if not (path.exists() and sha256_of(path) == entry["sha256"]):
                files[path.name] = entry["sha256"]
                writes.append((path, data))
            manifest["cases"][case_id] = entry
            manifest["environments"][entry["environment"]] = txn.env[entry["environment"]]
        for case_id in sorted(txn.removed):
            path = self.path_for(case_id)
            if path.exists():
                files[path.name] = None
            manifest["cases"].pop(case_id, None)
        used = {entry["environment"] for entry in manifest["cases"].values()}
        manifest["environments"] = {k: v for k, v in sorted(manifest["environments"].items()) if k in used}
        manifest["reference_pins"] = self.reference.as_dict()
        manifest["cases"] = dict(sorted(manifest["cases"].items()))
        if not files and manifest == self._read_manifest():
            self._manifest = manifest
            return
        staged: list[Path] = []
        try:
            for path, data in writes:
                stage = path.with_name(f".{path.name}{STAGED_SUFFIX}")
                staged.append(stage)
                _guard("write", stage, partial(_write_bytes, stage, data), f"stage:{path.name}")
            journal = json.dumps({"format_version": FORMAT_VERSION, "files": files, "manifest": manifest}, indent=1)
            _guard("write", self.journal_path, lambda: _write_bytes(self.journal_path, journal.encode()), "journal")
        except BaseException:
            for leftover in [*staged, self.journal_path]:  # before the commit point: the old goldens stand
                leftover.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        # Past the commit point: a failure leaves the journal, and the next transaction
        # completes it (the suite says so meanwhile).
        try:
            for name, digest in files.items():
                target = self.directory / name
                if digest is None:
                    _guard("remove", target, partial(target.unlink, missing_ok=True), f"remove:{name}")
                else:
                    stage = self.directory / f".{name}{STAGED_SUFFIX}"
                    _guard("rename", stage, partial(os.replace, stage, target), f"rename:{name}")
            _fsync_dir(self.directory)
            self._write_manifest(manifest)
            _guard("remove", self.journal_path, lambda: self.journal_path.unlink())
        except GoldenError as err:
            raise GoldenError(
                f"{err}. The regeneration is interrupted past its commit point; once the cause is fixed, "
                f"rerun `{self.regen_command([])}` to complete it."
            ) from err
        _step("done")
        self._manifest = manifest


def _io_error(action: str, path: Path, err: OSError) -> GoldenError:
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        reason += " (the disk is full)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += " (the directory is not writable)"
    return GoldenError(f"cannot {action} {path}: {reason}")


def _guard(action: str, path: Path, op: Callable[[], object], step: str = "") -> None:
    """Run one I/O step (then the injection point ``step``); an OSError becomes one
    GoldenError naming the path and the cause."""
    try:
        op()
        if step:
            _step(step)
    except OSError as err:
        raise _io_error(action, path, err) from err
