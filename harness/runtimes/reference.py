"""Reference logits: the reference model's token probabilities over the corpus, on the host CPU.

A quality case on the device compares its own probabilities with these (`llama-perplexity
--kl-divergence`), so they are computed once per (reference sha256, corpus sha256, context,
chunks, host runtime key) with the host runtime's `llama-perplexity --kl-divergence-base`, kept
in `cache_dir()/references/<key>/`, and checked (header, exact size) every time they are used.
About 25 MB per chunk of 512 tokens for a 49k vocabulary, so device checks use few chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.credentials import child_env
from harness.errors import EdgebenchError, exited
from harness.hashing import sha256_file
from harness.paths import cache_dir
from harness.runtimes.build import Runtime
from harness.runtimes.corpus import Corpus
from harness.runtimes.logits import LogitsError, LogitsHeader, read_header
from harness.runtimes.source import file_lock

PERPLEXITY = "llama-perplexity"
_TOO_SHORT = re.compile(r"tokenizes to only (\d+) tokens")
_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Reference:
    """A checked logits file on the host and what it was computed from."""

    path: Path
    sha256: str
    header: LogitsHeader
    model_sha256: str | None  # the reference model; None for a logits file given as --reference
    corpus_sha256: str | None
    runtime_key: str | None
    seconds: float  # what computing it took (0 when it was given)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, **self.header.to_json(), "model_sha256": self.model_sha256,
                "corpus_sha256": self.corpus_sha256, "runtime_key": self.runtime_key, "seconds": self.seconds}


def reference_key(model_sha256: str, corpus_sha256: str, n_ctx: int, chunks: int, runtime_key: str) -> str:
    payload = json.dumps([model_sha256, corpus_sha256, n_ctx, chunks, runtime_key], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def given_reference(path: Path) -> Reference:
    """A logits file computed elsewhere (e.g. from an F16 model on a bigger machine)."""
    header = read_header(path)
    return Reference(Path(path).resolve(), sha256_file(path), header, None, None, None, 0.0)


def host_reference(runtime: Runtime, model: Path, model_sha256: str, corpus: Corpus, *, n_ctx: int, chunks: int,
                   on_status: Callable[[str], None] = lambda message: None) -> Reference:
    """The cached reference for these inputs, computed first when there is none (or the cached
    one no longer checks out)."""
    key = reference_key(model_sha256, corpus.sha256, n_ctx, chunks, runtime.manifest.key)
    folder = cache_dir() / "references" / key
    with file_lock(folder.parent / f"{key}.lock"):
        cached = _cached(folder, on_status)
        if cached is not None:
            return cached
        on_status(f"computing reference logits: {model.name} on {corpus.name} ({chunks} chunk(s) of {n_ctx}) on the host CPU")
        started = time.monotonic()
        work = folder.with_name(f".{key}.partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        logits = work / "base.logits"
        argv = [str(runtime.binary(PERPLEXITY)), "-m", str(model), "-f", str(corpus.path), "-c", str(n_ctx), "-b", str(n_ctx),
                "--chunks", str(chunks), "--kl-divergence-base", str(logits)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, env=child_env())
        (work / "perplexity.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        header = _checked(done, logits, corpus, n_ctx, chunks)
        reference = Reference(folder / "base.logits", sha256_file(logits), header, model_sha256, corpus.sha256,
                              runtime.manifest.key, round(time.monotonic() - started, 3))
        (work / "reference.json").write_text(json.dumps(reference.to_json(), indent=2), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(work, folder)
        return reference


def _cached(folder: Path, on_status: Callable[[str], None]) -> Reference | None:
    try:
        meta = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
        header = read_header(folder / "base.logits")
    except (OSError, ValueError):
        return None
    except LogitsError as exc:
        on_status(f"cached reference unusable ({exc}): computing it again")
        return None
    return Reference(folder / "base.logits", meta["sha256"], header, meta["model_sha256"], meta["corpus_sha256"],
                     meta["runtime_key"], float(meta["seconds"]))


def _checked(done: subprocess.CompletedProcess[str], logits: Path, corpus: Corpus, n_ctx: int, chunks: int) -> LogitsHeader:
    """The header of what llama-perplexity wrote, or the reason it wrote nothing usable (it exits 0
    on a corpus too short for one chunk, leaving a file of 12 bytes)."""
    log = done.stdout + done.stderr
    if short := _TOO_SHORT.search(log):
        raise EdgebenchError(f"corpus {corpus.name} ({corpus.path}) tokenizes to only {short.group(1)} tokens; a quality case at "
                             f"context {n_ctx} needs at least {2 * n_ctx} (llama-perplexity scores the second half of each window "
                             "and wants two windows): give a longer --corpus or a smaller context")
    tail = "\n".join(log.strip().splitlines()[-15:])
    if done.returncode != 0:
        raise EdgebenchError(f"computing the reference logits failed: llama-perplexity {exited(done.returncode)}; last lines:\n{tail}")
    try:
        header = read_header(logits)
    except LogitsError as exc:
        raise EdgebenchError(f"computing the reference logits gave no usable file ({exc}); last lines:\n{tail}") from None
    if header.n_chunk < chunks:
        raise EdgebenchError(f"corpus {corpus.name} holds only {header.n_chunk} chunk(s) of {n_ctx} tokens; the quality case asks for "
                             f"{chunks}: give a longer --corpus or fewer chunks")
    return header
