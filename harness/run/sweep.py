"""A speed-quality sweep (`--quantize Q8_0,Q4_K_M,...`): the base and its variants, one run each.

The variants are made on the host (harness.runtimes.quantize) before any device is touched,
and every run of the sweep is scored against the base's reference logits, so their KLD is the
cost of each quantization; the base's own run is scored against itself, which is the device
check. The runs share a sweep id, which the frontier (harness.analysis.quality) groups by.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timezone

from harness.run.session import Callbacks, RunOptions, build_host
from harness.runtimes.models import inspect_model, resolve_model
from harness.runtimes.quantize import check_requantize, make_variants


def sweep_options(options: RunOptions, types: list[str], *, allow_requantize: bool, callbacks: Callbacks) -> list[RunOptions]:
    """The options of each run of the sweep: the base first, then each variant."""
    base_path = resolve_model(options.model, on_status=callbacks.status)
    base = inspect_model(base_path)
    if check_requantize(base, allow_requantize):
        callbacks.status(f"requantizing: {base.filename} is {base.quantization}; each variant's KLD is against that quantized base, "
                         "so it leaves out the base's own loss against the original weights")
    if not options.quality:
        callbacks.status("--no-quality: the sweep measures speed only, and its frontier has no KLD")
    variants = make_variants(build_host(callbacks.build), base, types, allow_requantize=allow_requantize, on_status=callbacks.status)
    sweep = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    shared = replace(options, reference=options.reference or str(base_path), sweep=sweep)
    return [replace(shared, model=str(base_path))] + [replace(shared, model=str(v.path), variant=v.qtype) for v in variants]
