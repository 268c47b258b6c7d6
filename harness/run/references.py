"""What a run's quality cases are scored against: the corpus and each reference, checked up front.

Every input error a quality case can have (a reference with another tokenizer, a truncated
or foreign logits file, a context the logits were not computed at, a corpus too short for the
chunks asked) is found here or while computing the reference on the host, so it is reported
before the device runs anything and before a run is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.errors import EdgebenchError
from harness.plan.planner import QualityInputs
from harness.plan.suites import Suite
from harness.records import Case
from harness.runtimes.build import Runtime
from harness.runtimes.corpus import Corpus, resolve_corpus
from harness.runtimes.logits import MAGIC, LogitsError, check_fits
from harness.runtimes.models import ModelInfo, inspect_model, resolve_model
from harness.runtimes.reference import Reference, given_reference, host_reference

SELF = "self"


@dataclass(frozen=True)
class ReferenceSource:
    """One reference as the suite or `--reference` named it: a model (its logits are computed
    on the host) or a logits file computed elsewhere (`given`)."""

    spec: str
    path: Path
    sha256: str
    info: ModelInfo | None = None
    given: Reference | None = None


@dataclass(frozen=True)
class QualitySources:
    corpus: Corpus
    model: ModelInfo
    references: dict[str, ReferenceSource]  # by the name the suite gives (with --reference, all are that one)

    @property
    def inputs(self) -> QualityInputs:
        return QualityInputs(self.corpus.sha256, {name: source.sha256 for name, source in self.references.items()})

    def source(self, case: Case) -> ReferenceSource:
        return next(s for s in self.references.values() if s.sha256 == case.quality_value("reference"))

    def check_cases(self, cases: Sequence[Case]) -> None:
        """A given logits file must suit each case using it (context, chunks, vocabulary)."""
        for case in (c for c in cases if c.kind == "quality"):
            source = self.source(case)
            if source.given is not None:
                check_fits(source.path, source.given.header, n_vocab=self.model.vocab_size, n_ctx=case.n_prompt,
                           chunks=int(case.quality_value("chunks")), model=self.model.filename)

    def facts(self, references: dict[str, Reference]) -> dict[str, Any]:
        """Stored with the run: the corpus, and per quality case the reference it was scored against."""
        return {"corpus": self.corpus.to_json(),
                "references": {key: {**ref.to_json(), "is_model_under_test": ref.model_sha256 == self.model.sha256}
                               for key, ref in references.items()}}


def quality_sources(suite: Suite, corpus: str | None, reference: str | None, model: ModelInfo,
                    on_status: Callable[[str], None] | None = None) -> QualitySources | None:
    """The corpus and references of the suite's quality cases (None when it has none)."""
    specs = [spec for spec in suite.tests if spec.kind == "quality"]
    if not specs:
        return None
    names = {name for spec in specs for name in spec.values["reference"]}
    sources: dict[str, ReferenceSource] = {}
    for name in sorted(names):
        chosen = reference or name
        sources[name] = sources.get(chosen) or _source(chosen, model, on_status)
    return QualitySources(resolve_corpus(corpus), model, sources)


def _source(spec: str, model: ModelInfo, on_status: Callable[[str], None] | None) -> ReferenceSource:
    if spec == SELF:
        return ReferenceSource(spec, Path(model.path), model.sha256, model)
    path = Path(spec)
    if path.is_file() and _starts_with(path, MAGIC):
        given = given_reference(path)
        if model.vocab_size is not None and given.header.n_vocab != model.vocab_size:
            raise LogitsError(f"--reference {spec}: computed over a vocabulary of {given.header.n_vocab} tokens, {model.filename} has "
                              f"{model.vocab_size}: the reference must share the model's tokenizer")
        return ReferenceSource(spec, given.path, given.sha256, given=given)
    info = inspect_model(resolve_model(spec, on_status=on_status))
    if (info.vocab_size, info.vocab_sha256) != (model.vocab_size, model.vocab_sha256):
        raise EdgebenchError(f"reference {info.filename} has another vocabulary than {model.filename} ({info.vocab_size} vs "
                             f"{model.vocab_size} tokens{', same count, other tokens' if info.vocab_size == model.vocab_size else ''}): "
                             "KL divergence compares the same tokens' probabilities, so the reference must share the model's tokenizer")
    return ReferenceSource(spec, Path(info.path), info.sha256, info)


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(magic)) == magic


def references_for(quality: QualitySources | None, cases: Sequence[Case], host_runtime: Callable[[], Runtime],
                   on_status: Callable[[str], None]) -> dict[str, Reference]:
    """Per quality case key: its reference logits on the host, computed (or found cached) now."""
    if quality is None:
        return {}
    runtime = cache(host_runtime)
    out = {}
    for case in (c for c in cases if c.kind == "quality"):
        source = quality.source(case)
        out[case.key] = source.given or host_reference(runtime(), source.path, source.sha256, quality.corpus, n_ctx=case.n_prompt,
                                                       chunks=int(case.quality_value("chunks")), on_status=on_status)
    return out
