"""Claims data validation, and matching stored runs of the real default model to claims."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types

import pandas as pd
import pytest

from harness.analysis.claims import (
    NOT_MEASURED_BY_EDGEBENCH,
    ClaimsError,
    RatioClaim,
    check_claims,
    check_ratio_claims,
    load_claims,
    nominal_bits,
    parse_claims,
    ratio_checks_for,
    untested_line,
)
from harness.records import Case, Metric, now_iso
from harness.runtimes.models import inspect_model
from harness.store.db import ExecutionRaw, Store

from .conftest import REPO

GOOD = """
[[claim]]
id = "x"
source = "https://example.org/paper"
model = "M-1B"
metric = "decode_tps"
value = 10.5
unit = "tok/s"
"""


def test_repository_claims_hold_the_issue_figures():
    claims = {c.id: c for c in load_claims()}
    assert claims["minicpm4-8b-agx-orin-prefill"].value == 961.54 and claims["qwen3-8b-agx-orin-decode"].value == 6.82
    assert claims["minicpm4-8b-rtx4090-128k-decode"].value == 126.38 and claims["qwen3-8b-rtx4090-128k-prefill"].value == 2745.69
    assert claims["1b-snapdragon-865"].value == 85.0 and claims["1b-snapdragon-865"].model == "unknown"
    assert claims["qwen3-0.6b-4core-cpu"].metric == "runs" and claims["qwen3-0.6b-4core-cpu"].value is None
    before, after = claims["smollm2-orin-nano-mlc-int4"], claims["smollm2-orin-nano-super-mlc-int4"]
    assert (before.value, after.value, before.runtime, before.quantization) == (41.0, 64.5, "MLC", "INT4")
    assert all(c.source for c in claims.values())
    at_140k = {i: claims[i] for i in claims if "rtx4090-140k" in i}
    assert {(i, c.metric, c.value) for i, c in at_140k.items()} == {
        ("minicpm4-8b-rtx4090-140k-prefill", "prefill_tps", 6288.81), ("qwen3-8b-rtx4090-140k-prefill", "prefill_tps", 348.29),
        ("minicpm4-8b-rtx4090-140k-decode", "decode_tps", 121.58), ("qwen3-8b-rtx4090-140k-decode", "decode_tps", 0.55)}
    assert all(c.device == "RTX 4090" and c.context_length == 143360 and "context_length" in c.assumed for c in at_140k.values())
    # nothing the issue does not say: no quantization or runtime for the MiniCPM4/Qwen3 figures
    assert claims["qwen3-8b-agx-orin-decode"].quantization == "unknown" and claims["qwen3-8b-agx-orin-decode"].context_length is None


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('source = "https://example.org/paper"\n', ""), "key 'source': required"),
    (lambda t: t.replace('unit = "tok/s"', 'unit = "tokens per minute"'), "key 'unit'"),
    (lambda t: t.replace('metric = "decode_tps"', 'metric = "speed"'), "key 'metric'"),
    (lambda t: t.replace("value = 10.5", 'value = "fast"'), "key 'value'"),
    (lambda t: t + 'colour = "red"\n', "key 'colour': unknown key"),
    (lambda t: t + "context_length = -1\n", "key 'context_length'"),
    (lambda t: t.replace("[[claim]]", "[[claim]"), "not valid TOML"),
])
def test_malformed_claims_are_clear_errors(edit, message):
    assert parse_claims(GOOD, "mine.toml")[0].value == 10.5
    with pytest.raises(ClaimsError, match=message) as error:
        parse_claims(edit(GOOD), "mine.toml")
    assert "mine.toml" in str(error.value)


def test_every_claim_names_its_published_source():
    """What was seen: every claim's source read "quoted in edgebench issue 9 (document not named there)"."""
    sources = {c.id: c.source for c in load_claims()}
    assert not [s for s in sources.values() if "issue" in s or "not named" in s]
    assert sources["minicpm4-8b-rtx4090-140k-decode"] == sources["qwen3-8b-agx-orin-prefill"] == (
        "MiniCPM4 release by OpenBMB (June 2025), as reported in Chinese tech press")
    assert sources["1b-snapdragon-865"] == "2025 article on Mistral's Le Chat release"
    assert sources["qwen3-0.6b-4core-cpu"] == "Guancha (观察者网) article, May 2025"
    assert sources["smollm2-orin-nano-super-mlc-int4"] == "NVIDIA Jetson AI Lab benchmark tables"


def test_a_missing_claims_folder_is_an_error(tmp_path):
    with pytest.raises(ClaimsError, match="no claims folder"):
        load_claims(tmp_path / "absent")


def test_untested_claims_are_one_line(store_with_default_run):
    store, run_id = store_with_default_run
    checks = check_claims(store, load_claims(), [run_id])
    line = untested_line(checks)
    assert line.startswith(f"{sum(c.run_id is None for c in checks)} more claims no stored run tests; a run would test them on: ")
    for wanted in ("Jetson AGX Orin with MiniCPM4-8B or Qwen3-8B", "RTX 4090 with MiniCPM4-8B or Qwen3-8B",
                   "Snapdragon 865 with any 1B model", "4-core 2.4 GHz CPU with Qwen3-0.6B"):
        assert line.count(wanted) == 1, wanted
    assert untested_line([c for c in checks if c.run_id]) is None


def test_duplicate_ids_across_files(tmp_path):
    (tmp_path / "a.toml").write_text(GOOD)
    (tmp_path / "b.toml").write_text(GOOD)
    with pytest.raises(ClaimsError, match="used twice"):
        load_claims(tmp_path)


@pytest.fixture
def store_with_default_run(tmp_path, default_model):
    """A stored run of the default model on this host: two decode cases, as the runner records them."""
    store = Store(tmp_path / "results")
    model = inspect_model(default_model)
    cases = [Case("llamabench", "decode", 0, 32, 0), Case("llamabench", "decode", 0, 32, 2048)]
    run_id = store.create_run(device="local", suite_name="t", suite_text="", repetitions=1, timeout_s=60, cases=cases,
                              model_sha256=model.sha256, model_info=model.to_json(), runtime_key=None, runtime_manifest=None,
                              facts={"name": "local", "cpu_model": "AMD EPYC", "cores": 2, "extra": {}}, command={}, version="t")
    for case, tps in zip(cases, (80.0, 33.0)):
        store.record_execution(run_id, case, 0, status="ok", exit_code=0, wall_s=1.0, started_at=now_iso(), error=None, build=None,
                               raw=ExecutionRaw(), metrics=[Metric("decode_tps", tps, "tok/s")])
    store.finish_run(run_id, "finished")
    return store, run_id


def test_default_model_run_against_the_claims(store_with_default_run):
    store, run_id = store_with_default_run
    checks = check_claims(store, load_claims(), [run_id])
    smol = {c.claim.id: c for c in checks if c.claim.id.startswith("smollm2")}
    super_ = smol["smollm2-orin-nano-super-mlc-int4"]
    assert super_.run_id == run_id and super_.measured == 80.0 and super_.ratio == pytest.approx(80.0 / 64.5)
    named = "\n".join(super_.mismatches)
    for text in ("quantization: claim INT4, run Q4_1", "runtime: claim MLC", "device: claim Jetson Orin Nano, run local",
                 "power mode: claim Super, run unknown", "context: not stated", "model size"):
        assert text in named, text
    assert super_.verdict == "conditions differ"
    # ratio claims need a sweep, not one run: SuperFly names SmolLM2-135M, yet is no point check
    assert not [c for c in checks if isinstance(c.claim, RatioClaim)]
    others = [c for c in checks if not c.claim.id.startswith("smollm2")]
    assert others and all(c.run_id is None and c.needs.startswith("needs: device ") and ", model " in c.needs for c in others)
    assert {c.needs for c in others} >= {"needs: device Jetson AGX Orin, model MiniCPM4-8B", "needs: device Snapdragon 865, model any 1B model"}


def test_claims_command(store_with_default_run):
    store, run_id = store_with_default_run
    env = {**os.environ, "COLUMNS": "250", "PYTHONPATH": str(REPO)}
    shown = subprocess.run([sys.executable, "-m", "harness", "claims", "--results", str(store.root)], capture_output=True, text=True,
                           timeout=300, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "smollm2-orin-nano-super-mlc-int4" in shown.stdout and "quantization: claim INT4, run Q4_1" in shown.stdout
    assert "NVIDIA Jetson AI Lab benchmark tables" in shown.stdout
    # as in the report: the claims no run tests are one line, not a row each
    assert "needs: device" not in shown.stdout and "qwen3-8b-rtx4090-128k-decode" not in shown.stdout
    assert shown.stdout.count("RTX 4090 with MiniCPM4-8B or Qwen3-8B") == 1
    rows = json.loads(subprocess.run([sys.executable, "-m", "harness", "claims", "--run", run_id, "--json", "--results", str(store.root)],
                                     capture_output=True, text=True, timeout=300, env=env).stdout)
    assert {r["verdict"] for r in rows} == {"conditions differ", "untested"}
    broken = store.root / "claims"
    broken.mkdir()
    (broken / "bad.toml").write_text(GOOD.replace('source = "https://example.org/paper"\n', ""))
    failed = subprocess.run([sys.executable, "-m", "harness", "claims", "--claims", str(broken), "--results", str(store.root)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert failed.returncode == 2 and "bad.toml" in failed.stderr and "source" in failed.stderr


GOOD_RATIO = """
[[claim]]
id = "r"
kind = "ratio"
source = "https://example.org/paper"
metric = "size_ratio"
value_low = 0.05
value_high = 0.2
"""


def test_compression_claims_hold_the_published_figures():
    claims = {c.id: c for c in load_claims() if c.file == "compression.toml"}
    assert all(isinstance(c, RatioClaim) for c in claims.values()) and len(claims) == 7
    assert claims["compactifai-size"].bounds == (0.05, 0.2) and claims["compactifai-size"].stated == "reduces model size by 80-95%"
    assert claims["compactifai-speedup"].bounds == (4.0, 12.0) and claims["compactifai-speedup"].metric == "decode_speedup"
    assert claims["compactifai-accuracy-drop"].bounds == (2.0, 3.0) and claims["compactifai-accuracy-drop"].metric == "accuracy_drop_points"
    superfly = claims["compactifai-superfly-params"]
    assert (superfly.model, superfly.metric, superfly.value, superfly.claimed) == ("SmolLM2-135M", "params_ratio", 0.6963, "0.6963 (±5%)")
    assert claims["bitcpm-size"].value == 0.10 and claims["bitcpm-size"].variant_bits == 1.58
    assert claims["bitcpm-performance"].bounds == (0.85, None) and claims["bitcpm-performance"].claimed == "≥ 0.85"
    int4 = claims["int4-vs-fp16-size"]
    assert (int4.value, int4.variant_bits, int4.base_bits, int4.bounds) == (0.25, 4.0, 16.0, (0.2375, 0.2625))
    # nothing the sources do not say: no device, and no base precision but the rule of thumb's
    assert all(c.device == "unknown" for c in claims.values())
    assert [i for i, c in claims.items() if c.base_bits is not None] == ["int4-vs-fp16-size"]
    assert {c.source for c in claims.values()} == {
        "Multiverse Computing, CompactifAI press releases and announcements, 2025", "MiniCPM4 release by OpenBMB (June 2025): BitCPM",
        int4.source}
    assert int4.source.startswith("Rule of thumb from bits per weight, 4 vs 16")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("value_low = 0.05", "value_low = 0.5"), "key 'value_low': above value_high"),
    (lambda t: t.replace('metric = "size_ratio"', 'metric = "smaller"'), "key 'metric': a ratio claim's metric is one of size_ratio"),
    (lambda t: t.replace("value_low = 0.05\nvalue_high = 0.2\n", ""), "key 'value': required"),
    (lambda t: t + "value = 0.1\n", "key 'value': .*not both"),
    (lambda t: t.replace("value_high = 0.2", "value_high = nan"), "key 'value_high': a number"),
    (lambda t: t.replace("value_low = 0.05", 'value_low = "5%"'), "key 'value_low': a number"),
    (lambda t: t.replace('kind = "ratio"', 'kind = "rate"'), "key 'kind'"),
    (lambda t: t + 'unit = "x"\n', "key 'unit': unknown key"),
    (lambda t: t + 'variant_bits = "four"\n', "key 'variant_bits'"),
    (lambda t: t + 'assumed = ["unit"]\n', "key 'assumed'"),
])
def test_malformed_ratio_claims_are_clear_errors(edit, message):
    assert parse_claims(GOOD_RATIO, "mine.toml")[0].bounds == (0.05, 0.2)
    with pytest.raises(ClaimsError, match=message) as error:
        parse_claims(edit(GOOD_RATIO), "mine.toml")
    assert str(error.value).startswith("mine.toml: claim #1 (r): key ")


def test_nominal_bits_of_llama_cpp_types():
    assert [nominal_bits(q) for q in ("Q4_0", "Q4_K_M", "IQ4_XS", "Q8_0", "Q2_K", "TQ1_0", "F16", "BF16", "F32", "base")] == [
        4.0, 4.0, 4.0, 8.0, 2.0, 1.58, 16.0, 16.0, 32.0, None]


SMOL_PARAMS = 134_515_008


def _row(sweep: str, variant: str, size_mb: float, tps: float, energy: float = math.nan, file_type: str | None = None) -> dict:
    """One frontier-frame row of SmolLM2-135M, as `frontier_frame` gives it; a base's file is
    named for its `file_type`, a variant's for its quantization."""
    return {"sweep": sweep, "run_id": f"{sweep}-{variant}", "device": "local", "model": f"SmolLM2-135M-Instruct-{file_type or variant}.gguf", "variant": variant,
            "is_base": variant == "base", "size_bytes": int(size_mb * 1e6), "n_params": SMOL_PARAMS, "decode_tps": tps,
            "energy_j_per_token": energy, "kld_mean": math.nan, "top1_agreement": math.nan, "ppl": math.nan, "pareto": True}


@pytest.fixture
def frontier() -> pd.DataFrame:
    """Sweep s1: a Q4_1 SmolLM2 base of 100 MB (itself quantized) with variants of 50 and 30 MB,
    no energy sensor; s2: an F16 base of 270 MB with a Q4_K_M of 70 MB and energy figures;
    s3: a base alone, which no ratio can be taken from."""
    return pd.DataFrame([
        _row("s1", "base", 100, 100.0, file_type="Q4_1"), _row("s1", "Q4_0", 50, 150.0), _row("s1", "Q2_K", 30, 480.0),
        _row("s2", "base", 270, 40.0, energy=0.02, file_type="F16"), _row("s2", "Q4_K_M", 70, 100.0, energy=0.008),
        _row("s3", "base", 270, 40.0, file_type="F16")])


def _by_key(checks: list) -> dict:
    return {(c.claim.id, c.sweep, c.variant): c for c in checks}


def test_ratio_claims_against_a_frontier_frame(frontier):
    checks = _by_key(check_ratio_claims(load_claims(), frontier))
    assert len(checks) == 17 and not [k for k in checks if k[1] == "s3"]
    measured = {k: (round(c.measured, 4), c.verdict) for k, c in checks.items() if c.measured is not None}
    assert measured == {
        ("compactifai-size", "s1", "Q4_0"): (0.5, "outside the claimed range"),
        ("compactifai-size", "s1", "Q2_K"): (0.3, "outside the claimed range"),
        ("compactifai-size", "s2", "Q4_K_M"): (0.2593, "outside the claimed range"),
        ("compactifai-speedup", "s1", "Q4_0"): (1.5, "outside the claimed range"),
        ("compactifai-speedup", "s1", "Q2_K"): (4.8, "within the claimed range"),
        ("compactifai-speedup", "s2", "Q4_K_M"): (2.5, "outside the claimed range"),
        ("compactifai-superfly-params", "s1", "Q4_0"): (1.0, "outside the claimed range"),
        ("compactifai-superfly-params", "s1", "Q2_K"): (1.0, "outside the claimed range"),
        ("compactifai-superfly-params", "s2", "Q4_K_M"): (1.0, "outside the claimed range"),
        ("int4-vs-fp16-size", "s1", "Q4_0"): (0.5, "outside the claimed range"),
        ("int4-vs-fp16-size", "s2", "Q4_K_M"): (0.2593, "within the claimed range"),
    }
    fast = checks[("compactifai-speedup", "s1", "Q2_K")]
    assert fast.run_ids == ("s1-base", "s1-Q2_K") and fast.model == "SmolLM2-135M-Instruct-Q4_1.gguf"
    assert fast.mismatches == (
        "model: the claim names none; sweep: SmolLM2-135M-Instruct-Q4_1.gguf",
        "method: claim CompactifAI (tensor-network compression), variant llama.cpp quantization Q2_K",
        "base: precision not stated by the claim; the sweep's base SmolLM2-135M-Instruct-Q4_1.gguf stores 5.9 bits per weight (size x 8 / parameters)",
        "device: not stated by the claim; sweep: local",
        "read from the source as: metric (the source says: compressed models 4-12x faster (inference speed))")
    assert fast.describe().startswith("compactifai-speedup (decode_speedup) on sweep s1, Q2_K of SmolLM2-135M-Instruct-Q4_1.gguf on local: "
                                      "measured 4.8, claimed 4-12: within the claimed range; conditions differ: model: ")
    # sizes do not depend on the device; the claim names SmolLM2-135M, which the sweep has
    superfly = "\n".join(checks[("compactifai-superfly-params", "s1", "Q4_0")].mismatches)
    assert "device:" not in superfly and "model:" not in superfly
    # the INT4 rule: a quantized base is named, an F16 one is what the rule compares against
    assert ("base: claim a 16-bit base, the sweep's base SmolLM2-135M-Instruct-Q4_1.gguf stores 5.9 bits per weight (size x 8 / parameters)"
            in checks[("int4-vs-fp16-size", "s1", "Q4_0")].mismatches)
    assert not [m for m in checks[("int4-vs-fp16-size", "s2", "Q4_K_M")].mismatches if m.startswith("base:")]
    int4 = checks[("int4-vs-fp16-size", "s2", "Q4_K_M")]
    assert int4.to_json() | {"mismatches": None} == {
        "claim": "int4-vs-fp16-size", "source": int4.claim.source,
        "metric": "size_ratio", "claimed": "0.25 (±5%)", "claimed_low": 0.2375, "claimed_high": 0.2625, "sweep": "s2",
        "run_ids": ["s2-base", "s2-Q4_K_M"], "device": "local", "model": "SmolLM2-135M-Instruct-F16.gguf", "variant": "Q4_K_M",
        "measured": pytest.approx(70 / 270), "verdict": "within the claimed range", "mismatches": None, "reason": None}


def test_ratio_claims_edgebench_cannot_measure_are_not_testable(frontier):
    checks = _by_key(check_ratio_claims(load_claims(), frontier))
    for key in (("compactifai-accuracy-drop", "s1", None), ("compactifai-accuracy-drop", "s2", None), ("bitcpm-performance", "s1", None)):
        check = checks[key]
        assert (check.measured, check.verdict, check.reason) == (None, "not testable", NOT_MEASURED_BY_EDGEBENCH)
    assert NOT_MEASURED_BY_EDGEBENCH.startswith("edgebench measures KLD, perplexity and top-1 agreement against the base, not task accuracy")
    assert checks[("compactifai-accuracy-drop", "s1", None)].describe() == (
        "compactifai-accuracy-drop (accuracy_drop_points) on sweep s1, its variants of SmolLM2-135M-Instruct-Q4_1.gguf on local: "
        f"not testable: {NOT_MEASURED_BY_EDGEBENCH}")
    # BitCPM is about ternary variants; a sweep of none is not held to it
    ternary = checks[("bitcpm-size", "s1", None)]
    assert (ternary.measured, ternary.verdict) == (None, "not testable")
    assert ternary.reason == "the claim is about 1.58-bit variants; this sweep has none (it has Q4_0, Q2_K)"


def test_a_figure_not_measured_is_never_a_number(frontier):
    energy = parse_claims(GOOD_RATIO.replace('"size_ratio"', '"energy_ratio"').replace("value_low = 0.05\nvalue_high = 0.2", "value_high = 0.5")
                          + 'device = "Jetson Orin Nano"\n', "mine.toml")
    checks = _by_key(check_ratio_claims(energy, frontier))
    unmeasured = checks[("r", "s1", "Q4_0")]
    assert (unmeasured.measured, unmeasured.verdict, unmeasured.to_json()["measured"]) == (None, "not testable", None)
    assert unmeasured.reason == "energy_j_per_token was not measured for the base and the variant Q4_0 in this sweep"
    assert unmeasured.describe() == ("r (energy_ratio) on sweep s1, Q4_0 of SmolLM2-135M-Instruct-Q4_1.gguf on local: not testable: "
                                     "energy_j_per_token was not measured for the base and the variant Q4_0 in this sweep")
    measured = checks[("r", "s2", "Q4_K_M")]
    assert measured.measured == pytest.approx(0.4) and measured.verdict == "within the claimed range"
    assert "device: claim Jetson Orin Nano, sweep local" in measured.mismatches
    no_params = frontier.assign(n_params=None)
    superfly = [c for c in load_claims() if c.id == "compactifai-superfly-params"]
    check = _by_key(check_ratio_claims(superfly, no_params))[("compactifai-superfly-params", "s2", "Q4_K_M")]
    assert (check.measured, check.reason) == (None, "n_params was not measured for the base and the variant Q4_K_M in this sweep")
    assert ("base: precision not stated by the claim; the sweep's base SmolLM2-135M-Instruct-F16.gguf has no parameter count, "
            "so its precision is not known") in check.mismatches


def test_ratio_checks_for_reads_the_frontier_frame_of_the_runs(frontier, monkeypatch):
    asked = []
    quality = types.ModuleType("harness.analysis.quality")
    quality.frontier_frame = lambda store, run_ids: asked.append((store, run_ids)) or frontier
    monkeypatch.setitem(sys.modules, "harness.analysis.quality", quality)
    checks = ratio_checks_for("the store", load_claims(), ["s1-base", "s1-Q4_0"])
    assert asked == [("the store", ["s1-base", "s1-Q4_0"])]
    assert [(c.variant, c.verdict) for c in checks if c.claim.id == "int4-vs-fp16-size"] == [
        ("Q4_0", "outside the claimed range"), ("Q4_K_M", "within the claimed range")]


def test_a_sweep_with_two_bases_is_an_error(frontier):
    doubled = pd.concat([frontier, frontier[frontier["run_id"] == "s1-base"]])
    with pytest.raises(ValueError, match="sweep s1 has 2 base rows"):
        check_ratio_claims(load_claims(), doubled)
