"""Claims data validation, and matching stored runs of the real default model to claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.results.claims import ClaimsError, check_claims, load_claims, parse_claims, untested_line
from harness.runtimes.models import inspect_model
from harness.plan.cases import Case
from harness.results.records import Metric
from harness.results.store import Store, now_iso

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
                              facts={"name": "local", "cpu_model": "AMD EPYC", "cores": 2, "extra": {}}, command=[], version="t")
    for case, tps in zip(cases, (80.0, 33.0)):
        store.record_execution(run_id, case, 0, status="ok", exit_code=0, wall_s=1.0, started_at=now_iso(), error=None, build=None,
                               raw={"records": []}, metrics=[Metric("decode_tps", tps, "tok/s")])
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
