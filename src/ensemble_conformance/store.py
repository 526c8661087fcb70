"""The golden store: one .npz per case plus golden/manifest.json.

- Files are written atomically (a temporary file in the same directory, fsync, rename)
  and byte-for-byte deterministically (fixed zip timestamps, sorted members), so an
  unchanged case rewrites to the same bytes and the same sha256.
- Files are read with ``allow_pickle=False`` after their sha256 is checked against the
  manifest. bfloat16 arrays are stored as their uint16 bits, since .npy has no bfloat16.
- The manifest records the environment that made each file, its hash and its tolerance
  class. This module knows nothing of pytest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import ml_dtypes
import numpy as np

from ensemble_conformance.cases import Case
from ensemble_conformance.pins import REFERENCE, Pins

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META_KEY = "__meta__"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class GoldenError(Exception):
    """A golden file or the manifest cannot be used. The message says what to do."""


class GoldenMissingError(GoldenError):
    pass


class GoldenIntegrityError(GoldenError):
    pass


@dataclass(frozen=True)
class GoldenRecord:
    """Everything stored for one case: its inputs, its output and every member's params."""

    case: Case
    inputs: dict[str, np.ndarray]
    output: np.ndarray
    params: dict[str, np.ndarray]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"input:{k}": v for k, v in self.inputs.items()}
        out.update({f"param:{k}": v for k, v in self.params.items()})
        out["output"] = self.output
        return out


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
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _encode(a: np.ndarray) -> tuple[np.ndarray, str]:
    if a.dtype == ml_dtypes.bfloat16:
        return a.view(np.uint16), "bfloat16"
    if a.dtype.kind not in "fiu" or a.dtype.hasobject:
        raise GoldenError(f"cannot store dtype {a.dtype}: goldens hold numeric arrays only")
    return a, a.dtype.name


def _decode(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return a.view(ml_dtypes.bfloat16)
    if a.dtype.name != dtype:
        raise GoldenIntegrityError(f"array stored as {a.dtype}, its metadata says {dtype}")
    return a


def encode_npz(record: GoldenRecord) -> bytes:
    """The file's bytes: a deterministic, uncompressed .npz with a JSON metadata member."""
    members: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for key, value in record.arrays().items():
        members[key], dtypes[key] = _encode(np.ascontiguousarray(value))
    meta = {"format_version": FORMAT_VERSION, "case_id": record.case.id, "case": asdict(record.case), "dtypes": dtypes}
    members[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(members):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, members[key], allow_pickle=False)
    return buffer.getvalue()


def decode_npz(path: Path, case: Case) -> GoldenRecord:
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise GoldenIntegrityError(f"{path}: not a readable .npz ({err})") from err
    try:
        meta = json.loads(str(raw.pop(META_KEY)))
        dtypes: dict[str, str] = meta["dtypes"]
    except (KeyError, ValueError) as err:
        raise GoldenIntegrityError(f"{path}: metadata member {META_KEY!r} missing or broken") from err
    if meta.get("case_id") != case.id:
        raise GoldenIntegrityError(f"{path}: holds case {meta.get('case_id')!r}, expected {case.id!r}")
    if meta.get("case") != asdict(case):
        raise GoldenIntegrityError(
            f"{path}: made for case {meta.get('case')}, but the grid now defines {asdict(case)}; regenerate it"
        )
    arrays = {key: _decode(value, dtypes[key]) for key, value in raw.items()}
    return GoldenRecord(
        case=case,
        inputs={k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("input:")},
        output=arrays["output"],
        params={k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("param:")},
    )


def environment_id(env: dict[str, Any]) -> str:
    blob = json.dumps(env, sort_keys=True).encode()
    return "env-" + hashlib.sha256(blob).hexdigest()[:12]


class GoldenStore:
    """A directory of golden files and its manifest."""

    def __init__(self, directory: Path | str, regen_hint: str = "nox -s regen --", reference: Pins = REFERENCE) -> None:
        self.directory = Path(directory)
        self.regen_hint = regen_hint
        self.reference = reference
        self._manifest: dict[str, Any] | None = None

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def path_for(self, case_id: str) -> Path:
        return self.directory / f"{case_id}.npz"

    def regen_command(self, case_ids: Iterable[str]) -> str:
        return " ".join([self.regen_hint, *case_ids])

    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    def _read_manifest(self) -> dict[str, Any]:
        empty: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "reference_pins": self.reference.as_dict(),
            "environments": {},
            "cases": {},
        }
        if not self.manifest_path.exists():
            return empty
        try:
            data = json.loads(self.manifest_path.read_text())
        except ValueError as err:
            raise GoldenIntegrityError(
                f"{self.manifest_path} is not valid JSON ({err}); restore it from version control"
            ) from err
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            found = data.get("format_version") if isinstance(data, dict) else None
            raise GoldenIntegrityError(
                f"{self.manifest_path}: format_version {found!r} is not {FORMAT_VERSION}; "
                f"regenerate the goldens with `{self.regen_command(['--all'])}`"
            )
        return data

    def environment_of(self, case_id: str) -> dict[str, Any]:
        manifest = self.manifest()
        entry = manifest["cases"].get(case_id)
        if entry is None:
            return {}
        return dict(manifest["environments"].get(entry["environment"], {}))

    def load(self, case: Case) -> GoldenRecord:
        """The verified golden of a case. Raises GoldenMissingError / GoldenIntegrityError."""
        path = self.path_for(case.id)
        if not path.exists():
            raise GoldenMissingError(
                f"no golden file {path} for case {case.id}. Create it on the reference pins with:\n"
                f"  {self.regen_command([case.id])}"
            )
        entry = self.manifest()["cases"].get(case.id)
        if entry is None:
            raise GoldenIntegrityError(
                f"{path} is not listed in {self.manifest_path}, so it cannot be trusted. "
                f"Regenerate it with `{self.regen_command([case.id])}`."
            )
        actual = sha256_of(path)
        if actual != entry["sha256"]:
            raise GoldenIntegrityError(
                f"{path} has sha256 {actual}, but {self.manifest_path} records {entry['sha256']}: "
                "the file was changed outside the regeneration command. Restore it from version "
                f"control (git checkout -- {path}) or regenerate it with "
                f"`{self.regen_command([case.id])}`."
            )
        return decode_npz(path, case)

    def write(self, record: GoldenRecord, env: dict[str, Any]) -> bool:
        """Store one case's golden and update the manifest. Returns False when the file
        already held exactly these bytes (nothing rewritten)."""
        data = encode_npz(record)
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(record.case.id)
        manifest = self.manifest()
        env_id = environment_id(env)
        entry = {
            "file": path.name,
            "sha256": digest,
            "variant": record.case.variant,
            "tolerance_class": record.case.dtype,
            "environment": env_id,
        }
        unchanged = path.exists() and sha256_of(path) == digest
        if not unchanged:
            with atomic_writer(path) as f:
                f.write(data)
        if manifest["cases"].get(record.case.id) != entry or env_id not in manifest["environments"]:
            manifest["environments"][env_id] = env
            manifest["cases"][record.case.id] = entry
            self._save_manifest()
        return not unchanged

    def remove(self, case_id: str) -> None:
        self.path_for(case_id).unlink(missing_ok=True)
        if self.manifest()["cases"].pop(case_id, None) is not None:
            self._save_manifest()

    def _save_manifest(self) -> None:
        manifest = self.manifest()
        used = {entry["environment"] for entry in manifest["cases"].values()}
        manifest["environments"] = {k: v for k, v in manifest["environments"].items() if k in used}
        manifest["reference_pins"] = self.reference.as_dict()
        manifest["cases"] = dict(sorted(manifest["cases"].items()))
        text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
        with atomic_writer(self.manifest_path) as f:
            f.write(text.encode())

    def stored_ids(self) -> list[str]:
        """Case ids of every .npz in the directory, sorted."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.npz"))

    def unused(self, case_ids: Iterable[str]) -> list[str]:
        """Golden files that no case uses, plus manifest entries with no case, sorted."""
        known = set(case_ids)
        listed = set(self.manifest()["cases"]) if self.manifest_path.exists() else set()
        return sorted((set(self.stored_ids()) | listed) - known)
