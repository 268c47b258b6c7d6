"""Planning: sweeps expand into cases, over-long and host-only cases are skipped with reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.engines.llamabench import LlamaBench
from harness.errors import ConfigError
from harness.plan.planner import QualityInputs, build_plan
from harness.plan.suites import load_suite, parse_suite
from harness.records import Case

QUALITY = QualityInputs("c" * 64, {"self": "a" * 64})


def test_quick_suite_plans_prefill_decode_latency_and_one_quality_case():
    plan = build_plan(load_suite("quick"), context_length=8192, host=True, quality=QUALITY)
    labels = [c.label for c in plan.cases]
    assert labels[:6] == ["prefill p128", "prefill p512", "prefill p2048", "decode n64", "decode n64 @d512", "decode n64 @d2048"]
    assert labels[-1] == "quality c512 x1"
    assert {c.engine for c in plan.cases} == {"llamabench", "pyllama", "perplexity"}
    assert plan.skipped == ()
    assert dict(plan.cases[-1].quality) == {"chunks": 1, "corpus": "c" * 64, "reference": "a" * 64}


def test_no_quality_skips_the_quality_case_saying_so():
    plan = build_plan(load_suite("quick"), context_length=8192, host=True, quality=None)
    assert "quality" not in {c.kind for c in plan.cases}
    assert plan.skipped == (("quality c512", "quality cases are off (--no-quality)"),)


def test_quality_case_keeps_only_the_settings_that_change_the_output():
    suite = parse_suite('[settings]\ncache_type_k = ["f16", "q4_0"]\nbatch = [128, 256]\nload_mode = "mmap"\n'
                        "[[decode]]\ntokens = 8\n[[quality]]\ncontext = 256\n", "t.toml")
    plan = build_plan(suite, context_length=8192, host=True, quality=QUALITY)
    quality = [c for c in plan.cases if c.kind == "quality"]
    assert [dict(c.settings) for c in quality] == [{"cache_type_k": "f16"}, {"cache_type_k": "q4_0"}]  # one per KV type, not per batch
    assert len({c.key for c in quality}) == 2 and all(c.runs_once for c in quality)
    assert len([c for c in plan.cases if c.kind == "decode"]) == 4


def test_a_quality_context_longer_than_the_model_is_an_error_naming_the_key():
    suite = parse_suite("[[quality]]\ncontext = 4096\n", "q.toml")
    with pytest.raises(ConfigError, match=r"q.toml: key 'quality.context': expected at most the model's context length \(2048\)"):
        build_plan(suite, context_length=2048, host=True, quality=QUALITY)


def test_another_reference_or_corpus_is_another_case():
    suite = load_suite("quick")
    mine = build_plan(suite, context_length=8192, host=True, quality=QUALITY).cases[-1]
    other_ref = build_plan(suite, context_length=8192, host=True, quality=QualityInputs("c" * 64, {"self": "b" * 64})).cases[-1]
    other_corpus = build_plan(suite, context_length=8192, host=True, quality=QualityInputs("d" * 64, {"self": "a" * 64})).cases[-1]
    assert len({mine.key, other_ref.key, other_corpus.key}) == 3
    assert Case.from_json(mine.to_json()) == mine


def test_speed_case_keys_do_not_change_with_the_quality_field():
    case = Case("llamabench", "decode", 0, 64, 0)
    assert "quality" not in case.to_json()
    assert case.key == "fdfde54f6a3a0366"  # as before quality cases existed: stored runs still match


def test_context_sweep_is_cut_at_the_model_context_with_reasons():
    plan = build_plan(load_suite("context-sweep"), context_length=8192, host=True)
    assert max(c.n_prompt + c.depth + c.n_gen for c in plan.cases) <= 8192
    reasons = dict(plan.skipped)
    assert "prefill p16384" in reasons and "8192" in reasons["prefill p16384"]
    assert "decode n64 @d8192" in reasons


def test_host_only_engine_is_skipped_on_a_remote_device():
    plan = build_plan(load_suite("quick"), context_length=8192, host=False)
    assert all(c.engine == "llamabench" for c in plan.cases)
    assert any("host only" in reason for _, reason in plan.skipped)


def test_sweeps_multiply_and_keys_change_with_settings():
    suite = parse_suite("[settings]\nthreads = [1, 2]\n[[prefill]]\nprompt = [16, 32]\n", "s.toml")
    plan = build_plan(suite, context_length=None, host=True)
    assert len(plan.cases) == 4
    assert len({c.key for c in plan.cases}) == 4
    assert Case.from_json(plan.cases[0].to_json()) == plan.cases[0]


def test_llamabench_argv_carries_every_setting():
    suite = parse_suite(
        "inprocess_repetitions = 3\nwarmup = false\n[settings]\nthreads = 2\ncpu_mask = '0x3'\ncpu_strict = true\n"
        "poll = 0\nn_gpu_layers = 0\nflash_attn = 'off'\ncache_type_k = 'q8_0'\ncache_type_v = 'q8_0'\n"
        "batch = 256\nubatch = 128\nload_mode = 'none'\n[[decode]]\ntokens = 4\ndepth = 16\n",
        "s.toml",
    )
    case = build_plan(suite, context_length=None, host=True).cases[0]
    argv = LlamaBench().argv(case, runtime_dir="/rt", model_path="/m.gguf")
    assert argv[:8] == ["/rt/bin/llama-bench", "-m", "/m.gguf", "-o", "jsonl", "-r", "3", "-p"]
    pairs = dict(zip(argv[::1], argv[1::1]))
    expected = {"-t": "2", "-C": "0x3", "--cpu-strict": "1", "--poll": "0", "-ngl": "0", "-fa": "off",
                "-ctk": "q8_0", "-ctv": "q8_0", "-b": "256", "-ub": "128", "-lm": "none", "-d": "16", "-n": "4", "-p": "0"}
    for flag, value in expected.items():
        assert pairs[flag] == value, flag
    assert argv[-1] == "--no-warmup"


def test_latency_cases_with_settings_llama_cpp_python_cannot_apply_are_skipped():
    suite = parse_suite("[settings]\ncpu_mask = '0x1'\n[[prefill]]\nprompt = 16\n[[latency]]\nprompt = 16\ntokens = 4\n", "s.toml")
    plan = build_plan(suite, context_length=None, host=True)
    assert [c.kind for c in plan.cases] == ["prefill"]
    assert "cpu_mask=0x1" in dict(plan.skipped)["latency p16+n4 [cpu_mask=0x1]"]


# --- threads resolved at plan time, per engine, from the device's clusters ------------------

# A 4+4 big.LITTLE CPU folder as sysfs shows it (cpu_capacity and cpuinfo_max_freq per core).
MIXED_CORES = {"online": "0-7\n"} | {
    f"cpu{cpu}/{name}": value
    for cpus, capacity, khz in (((0, 1, 2, 3), "410", "1804800"), ((4, 5, 6, 7), "1024", "2841600"))
    for cpu in cpus
    for name, value in (("cpu_capacity", capacity + "\n"), ("cpufreq/cpuinfo_max_freq", khz + "\n"))
}


def mixed_core_folder(root: Path) -> Path:
    """The synthetic /sys/devices/system/cpu of a two-cluster device, under `root`."""
    folder = root / "sys" / "devices" / "system" / "cpu"
    for rel, text in MIXED_CORES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def test_latency_cases_on_two_core_clusters_get_a_thread_count_llama_cpp_python_takes(tmp_path):
    from harness.drivers.local import LocalDriver
    from harness.engines.pyllama import PyLlama, _parser
    from harness.telemetry.clusters import read_clusters

    mixed_core_folder(tmp_path)
    clusters = read_clusters(LocalDriver(), 8, root=str(tmp_path))  # through the driver, as the session reads them
    assert [c.cpus for c in clusters] == [(4, 5, 6, 7), (0, 1, 2, 3)]
    plan = build_plan(load_suite("quick"), context_length=8192, host=True, clusters=clusters, quality=QUALITY)
    latency = [c for c in plan.cases if c.kind == "latency"]
    assert len(latency) == 2 and plan.skipped == ()
    for case in latency:
        assert dict(case.settings) == {"threads": 4}  # the big cluster's size; no mask, which the engine lacks
        assert PyLlama().unsupported(case) is None
        args, unknown = _parser().parse_known_args(PyLlama().argv(case, runtime_dir="/opt/runtime", model_path=__file__)[3:])
        assert unknown == [] and args.threads == 4
        assert plan.cores[case.key].cpus == (4, 5, 6, 7) and "takes a thread count, not a mask" in plan.cores[case.key].why
    for case in (c for c in plan.cases if c.engine == "llamabench"):
        assert dict(case.settings) == {"threads": 4, "cpu_mask": "0xf0"}
        argv = LlamaBench().argv(case, runtime_dir="/rt", model_path="/m.gguf")
        assert argv[argv.index("-C") + 1] == "0xf0" and argv[argv.index("-t") + 1] == "4"
    alike = build_plan(load_suite("quick"), context_length=8192, host=True, clusters=clusters[:1], quality=QUALITY)
    assert all("cpu_mask" not in dict(c.settings) for c in alike.cases if c.engine == "pyllama")


def test_threads_big_without_readable_cores_is_skipped_with_the_reason():
    suite = parse_suite('[settings]\nthreads = "big"\n[[prefill]]\nprompt = 16\n', "s.toml")
    plan = build_plan(suite, context_length=None, host=True, clusters=[])
    assert plan.cases == () and "cores could not be read" in plan.skipped[0][1]


LATENCY_ONLY = """
name = "latency-only"
repetitions = 1
inprocess_repetitions = 1
[[latency]]
prompt = 16
tokens = 4
"""


def test_a_real_latency_case_on_two_core_clusters_runs_as_it_was_stored(tmp_path, default_model):
    """`edgebench run` on this host seen through a synthetic 4+4 CPU folder (bind-mounted over
    /sys/devices/system/cpu in a private mount namespace: a mixed-core host cannot exist here):
    the latency case runs with the plan's thread count, and the stored case is what ran."""
    import os
    import shutil
    import subprocess
    import sys

    from harness.store.db import Store

    from .conftest import REPO

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private mount namespace (unshare -m) needs root and util-linux")
    folder = mixed_core_folder(tmp_path / "fake")
    (tmp_path / "latency.toml").write_text(LATENCY_ONLY)
    results = tmp_path / "results"
    mounted = ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount --bind "$0" /sys/devices/system/cpu && exec "$@"', str(folder)]
    done = subprocess.run([*mounted, sys.executable, "-m", "harness", "run", "--suite", str(tmp_path / "latency.toml"), "--mode", "none",
                           "--results", str(results)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr + done.stdout
    store = Store(results)
    run_id = store.run("latest").id
    (case,), (execution,) = store.cases(run_id), store.executions(run_id)
    assert dict(case.settings) == {"threads": 4} and execution.status == "ok"
    argv = execution.raw.argv
    assert argv[argv.index("--threads") + 1] == "4" and "--cpu-mask" not in argv
    assert execution.raw.records[0]["settings"]["n_threads"] == 4  # what llama-cpp-python ran with
    assert store.case_cores(run_id)[case.key].cpus == (4, 5, 6, 7)


def test_a_quality_case_scoring_too_few_tokens_for_statistics_is_an_error():
    """llama-perplexity prints no KLD statistics under 100 scored tokens (and still exits 0)."""
    with pytest.raises(ConfigError, match=r"quality.chunks': expected enough chunks to score at least 100 tokens .*63 at context 128"):
        build_plan(parse_suite("[[quality]]\ncontext = 128\n", "q.toml"), context_length=2048, host=True, quality=QUALITY)
    plan = build_plan(parse_suite("[[quality]]\ncontext = 128\nchunks = 2\n", "q.toml"), context_length=2048, host=True, quality=QUALITY)
    assert [c.label for c in plan.cases] == ["quality c128 x2"]
