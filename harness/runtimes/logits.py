"""The reference logits file `llama-perplexity --kl-divergence-base` writes, checked before use.

Layout (tools/perplexity/perplexity.cpp of the pinned llama.cpp): the magic `_logits_`, then
u32 n_ctx, i32 n_vocab, i32 n_chunk, the n_ctx x n_chunk evaluated tokens (i32), then per chunk
the log-probabilities of the scored second half of its window, (n_ctx - 1 - n_ctx/2) rows of
nv = 2*((n_vocab+1)/2) + 4 u16 values. `--kl-divergence` reports a short, foreign or truncated
file in its log but still exits 0, so every check it would make is made here first, on the host,
with an error that says which file and what is wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EdgebenchError

MAGIC = b"_logits_"
_HEADER = struct.Struct("<8sIii")
HEADER_SIZE = _HEADER.size  # the tokens follow it


class LogitsError(EdgebenchError):
    """A reference logits file that cannot be what the quality case needs."""


@dataclass(frozen=True)
class LogitsHeader:
    n_ctx: int
    n_vocab: int
    n_chunk: int

    @property
    def expected_size(self) -> int:
        rows = self.n_ctx - 1 - self.n_ctx // 2
        per_row = 2 * ((self.n_vocab + 1) // 2) + 4
        return HEADER_SIZE + 4 * self.n_ctx * self.n_chunk + 2 * rows * per_row * self.n_chunk

    def to_json(self) -> dict[str, int]:
        return {"n_ctx": self.n_ctx, "n_vocab": self.n_vocab, "n_chunk": self.n_chunk}


def read_header(path: Path) -> LogitsHeader:
    """The header of a complete logits file; LogitsError for anything else (not one, truncated)."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(_HEADER.size)
        size = Path(path).stat().st_size
    except OSError as exc:
        raise LogitsError(f"{path}: cannot read the reference logits ({exc.strerror})") from None
    if len(head) < _HEADER.size or not head.startswith(MAGIC):
        raise LogitsError(f"{path}: not a reference logits file (llama-perplexity --kl-divergence-base writes one)")
    _, n_ctx, n_vocab, n_chunk = _HEADER.unpack(head)
    header = LogitsHeader(n_ctx, n_vocab, n_chunk)
    if n_ctx < 2 or n_vocab < 1 or n_chunk < 1:
        raise LogitsError(f"{path}: implausible reference logits header {header.to_json()}")
    if size != header.expected_size:
        state = "truncated" if size < header.expected_size else "longer than its header says"
        raise LogitsError(f"{path}: reference logits {state}: {size} bytes, but {n_chunk} chunk(s) of {n_ctx} tokens "
                          f"over {n_vocab} tokens of vocabulary take {header.expected_size}; compute it again")
    return header


def check_fits(path: Path, header: LogitsHeader, *, n_vocab: int | None, n_ctx: int, chunks: int, model: str) -> None:
    """The file suits the case: the model's vocabulary, the case's context and chunk count."""
    if n_vocab is not None and header.n_vocab != n_vocab:
        raise LogitsError(f"{path}: the reference has a vocabulary of {header.n_vocab} tokens, {model} has {n_vocab}: "
                          "KL divergence compares the same tokens' probabilities, so the reference must share the model's tokenizer")
    if header.n_ctx != n_ctx:
        raise LogitsError(f"{path}: the reference logits were computed at context {header.n_ctx}, the quality case asks for {n_ctx}")
    if header.n_chunk < chunks:
        raise LogitsError(f"{path}: the reference logits hold {header.n_chunk} chunk(s), the quality case asks for {chunks}")
