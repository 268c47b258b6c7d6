"""The text a quality case scores the model on, identified by its sha256.

The default ships with the interpreter: CPython's language reference as `pydoc_data.topics`
holds it (about 466 KB of English prose and code), so no run ever downloads a dataset. Its
topics are joined in sorted order, so the same CPython gives the same bytes everywhere; a
different CPython gives other text and so another sha256, which keys every reference built
on it. `--corpus FILE` takes any UTF-8 text instead (the WikiText-2 test file gives figures
comparable with published perplexities).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EdgebenchError
from harness.paths import cache_dir, write_atomic

DEFAULT_NAME = "pydoc"


@dataclass(frozen=True)
class Corpus:
    """A corpus as a file on the host: its name (`pydoc` or the file's), path and sha256."""

    name: str
    path: Path
    sha256: str
    size: int

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256, "size": self.size}


def pydoc_text() -> str:
    """The language reference's topics in sorted order, each headed by its name."""
    from pydoc_data.topics import topics

    return "\n\n".join(f"{name}\n\n{topics[name].strip()}" for name in sorted(topics)) + "\n"


def resolve_corpus(spec: str | None = None) -> Corpus:
    """None / "pydoc": the default corpus (written once into the cache by content); else a text file."""
    if spec in (None, DEFAULT_NAME):
        data = pydoc_text().encode("utf-8")
        sha = hashlib.sha256(data).hexdigest()
        path = cache_dir() / "corpus" / f"pydoc-{sys.version_info[0]}.{sys.version_info[1]}-{sha[:16]}.txt"
        if not path.is_file() or path.stat().st_size != len(data):
            write_atomic(path, data)
        return Corpus(DEFAULT_NAME, path, sha, len(data))
    path = Path(spec)
    if not path.is_file():
        raise EdgebenchError(f"--corpus {spec}: no such file (a UTF-8 text file, e.g. WikiText-2's wiki.test.raw)")
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EdgebenchError(f"--corpus {spec}: not UTF-8 text ({exc})") from None
    if not data.strip():
        raise EdgebenchError(f"--corpus {spec}: the file is empty")
    return Corpus(path.name, path.resolve(), hashlib.sha256(data).hexdigest(), len(data))
