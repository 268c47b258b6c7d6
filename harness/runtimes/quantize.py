"""Quantized variants of a base model, made on the host with the runtime's `llama-quantize`.

A variant is cached as `cache_dir()/variants/<base sha256[:16]>/<stem>.<TYPE>.gguf` (written
under a temporary name and renamed last), so a sweep made twice quantizes once. Quantizing a
base that is itself quantized compounds two losses, and the variant's KLD then measures both
against the base rather than against the original weights: it needs `--allow-requantize`,
and the sweep says so.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf

from harness.credentials import child_env
from harness.errors import EdgebenchError, exited
from harness.paths import cache_dir, replacing
from harness.runtimes.build import Runtime
from harness.runtimes.models import ModelInfo, inspect_model
from harness.runtimes.source import file_lock

QUANTIZE = "llama-quantize"
UNQUANTIZED = ("F32", "F16", "BF16")
# The types llama-quantize takes by name, from the gguf package's file types.
TYPES = tuple(sorted(name.removeprefix("MOSTLY_") for name in gguf.LlamaFileType.__members__
                     if name.startswith("MOSTLY_") and name != "MOSTLY_Q4_1_SOME_F16"))
_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Variant:
    qtype: str
    path: Path
    requantized: bool  # made from a base that was already quantized
    cached: bool


def parse_types(text: str) -> list[str]:
    """`Q8_0,Q4_K_M` -> the types, upper-cased, each once, each one llama-quantize knows."""
    types = list(dict.fromkeys(t.strip().upper() for t in text.split(",") if t.strip()))
    unknown = [t for t in types if t not in TYPES]
    if not types or unknown:
        raise EdgebenchError(f"--quantize {text!r}: {'unknown type(s) ' + ', '.join(unknown) if unknown else 'no type'}; "
                             f"llama-quantize takes {', '.join(TYPES)}")
    return types


def check_requantize(base: ModelInfo, allow_requantize: bool) -> bool:
    """Whether the sweep requantizes (the base is already quantized); an error unless allowed."""
    requantize = base.quantization.upper() not in UNQUANTIZED
    if requantize and not allow_requantize:
        raise EdgebenchError(f"{base.filename} is already quantized ({base.quantization}): its variants would carry both "
                             "losses, and their KLD would be measured against a quantized base. Give an F16/BF16/F32 base, "
                             "or pass --allow-requantize to sweep it anyway")
    return requantize


def make_variants(runtime: Runtime, base: ModelInfo, types: Sequence[str], *, allow_requantize: bool,
                  on_status: Callable[[str], None] = lambda message: None) -> list[Variant]:
    requantize = check_requantize(base, allow_requantize)
    return [_variant(runtime, base, qtype, requantize, on_status) for qtype in types]


def _variant(runtime: Runtime, base: ModelInfo, qtype: str, requantize: bool, on_status: Callable[[str], None]) -> Variant:
    folder = cache_dir() / "variants" / base.sha256[:16]
    target = folder / f"{Path(base.filename).stem}.{qtype}.gguf"
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / f"{qtype}.lock"):
        if target.is_file():
            inspect_model(target)  # a damaged cached variant fails here, by name, not on the device
            return Variant(qtype, target, requantize, True)
        on_status(f"quantizing {base.filename} to {qtype}" + (" (requantizing a quantized base)" if requantize else ""))
        with replacing(target) as partial:
            argv = [str(runtime.binary(QUANTIZE)), *(["--allow-requantize"] if requantize else []), base.path, str(partial), qtype]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, env=child_env())
            if done.returncode != 0 or not partial.is_file():
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
                raise EdgebenchError(f"llama-quantize {qtype} of {base.filename} {exited(done.returncode)}:\n{tail}")
    inspect_model(target)
    return Variant(qtype, target, requantize, False)
