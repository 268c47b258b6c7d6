"""Suite files: the built-in suites load, and every malformed input names file, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.plan.suites import builtin_suites, load_suite, parse_setting_overrides, parse_suite

MINIMAL = '[[prefill]]\nprompt = 16\n'


def test_builtin_suites_load_and_quick_matches_the_issue():
    assert {"quick", "context-sweep"} <= set(builtin_suites())
    quick = load_suite("quick")
    kinds = {t.kind: t.values for t in quick.tests}
    assert kinds["prefill"]["prompt"] == (128, 512, 2048)
    assert kinds["decode"] == {"tokens": (64,), "depth": (0, 512, 2048)}
    assert quick.repetitions >= 2


def test_top_level_suites_folder_is_the_packaged_one():
    repo = Path(__file__).resolve().parent.parent
    assert (repo / "suites" / "quick.toml").read_text() == load_suite("quick").text


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("[[prefill]]\nprompt = -3\n", "prefill[0].prompt", "positive integer"),
        ("[[prefill]]\nprompt = []\n", "prefill[0].prompt", "positive integer"),
        ("[[decode]]\ndepth = 5\n", "decode[0].tokens", "positive integer"),
        ("[[decode]]\ntokens = 4\nfoo = 1\n", "decode[0].foo", "one of"),
        ("repetitions = 0\n" + MINIMAL, "repetitions", "positive integer"),
        (MINIMAL + "repetitions = 0\n", "prefill[0].repetitions", "one of"),
        ("repetitions = 'x'\n" + MINIMAL, "repetitions", "positive integer"),
        (MINIMAL + "[settings]\nflash_attn = 'maybe'\n", "settings.flash_attn", "on, off, auto"),
        (MINIMAL + "[settings]\nthreads = [1, 0]\n", "settings.threads", "positive integer"),
        (MINIMAL + "[settings]\ncpu_mask = 'ff'\n", "settings.cpu_mask", "hex mask"),
        (MINIMAL + "[settings]\ncache_type_k = 'q3'\n", "settings.cache_type_k", "q8_0"),
        (MINIMAL + "[settings]\nbogus = 1\n", "settings.bogus", "setting among"),
        ("colour = 'red'\n" + MINIMAL, "colour", "one of"),
        ("contention_threshold_pct = 0\n" + MINIMAL, "contention_threshold_pct", "positive number"),
        ("quiet_max_s = -1\n" + MINIMAL, "quiet_max_s", "seconds >= 0"),
        ("name = 'x'\n", "(tests)", "at least one of"),
        ("[[prefill]\nprompt = 1", "(syntax)", "valid TOML"),
    ],
)
def test_validation_errors_name_file_key_and_expectation(text, key, expected):
    with pytest.raises(ConfigError) as info:
        parse_suite(text, "my-suite.toml")
    message = str(info.value)
    assert info.value.file == "my-suite.toml" and info.value.key == key
    assert "my-suite.toml" in message and key in message and expected in message


def test_settings_sweep_and_per_test_overrides():
    suite = parse_suite(
        MINIMAL + "[settings]\nthreads = [1, 2]\nflash_attn = 'on'\n[[decode]]\ntokens = 8\ndepth = [0, 64]\nbatch = 256\n",
        "s.toml",
    )
    assert suite.settings == {"threads": (1, 2), "flash_attn": ("on",)}
    decode = [t for t in suite.tests if t.kind == "decode"][0]
    assert decode.settings == {"batch": (256,)}


def test_missing_suite_file_and_unknown_builtin():
    with pytest.raises(ConfigError, match="no such file"):
        load_suite("does/not/exist.toml")
    with pytest.raises(ConfigError, match="built-in suite"):
        load_suite("nonesuch")


def test_command_line_overrides_are_typed_and_validated():
    assert parse_setting_overrides(["threads=1,2", "flash_attn=on", "cpu_strict=true"]) == {
        "threads": (1, 2),
        "flash_attn": ("on",),
        "cpu_strict": (True,),
    }
    with pytest.raises(ConfigError, match="--set"):
        parse_setting_overrides(["threads=0"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_setting_overrides(["threads"])


def test_contention_keys_reach_the_plan_and_the_option_overrides_them():
    from harness.plan.planner import build_plan

    suite = parse_suite("contention_threshold_pct = 25\nquiet_max_s = 5\n" + MINIMAL, "s.toml")
    policy = build_plan(suite, context_length=None, host=True).policy
    assert (policy.contention_threshold_pct, policy.quiet_max_s) == (25, 5)
    assert build_plan(parse_suite(MINIMAL, "s.toml"), context_length=None, host=True).policy.contention_threshold_pct == 10
    assert suite.with_overrides(contention_threshold_pct=40.0).contention_threshold_pct == 40.0
    with pytest.raises(ConfigError, match="--contention-threshold"):
        suite.with_overrides(contention_threshold_pct=0.0)
