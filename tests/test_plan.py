"""Planning: sweeps expand into cases, over-long and host-only cases are skipped with reasons."""

from __future__ import annotations

from harness.plan.suites import load_suite, parse_suite
from harness.engines.llamabench import LlamaBench
from harness.plan.cases import Case, build_plan


def test_quick_suite_plans_prefill_decode_and_latency_cases():
    plan = build_plan(load_suite("quick"), context_length=8192, host=True)
    labels = [c.label for c in plan.cases]
    assert labels[:6] == ["prefill p128", "prefill p512", "prefill p2048", "decode n64", "decode n64 @d512", "decode n64 @d2048"]
    assert {c.engine for c in plan.cases} == {"llamabench", "pyllama"}
    assert plan.skipped == ()


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
