"""The runner and the store: interleaved rounds, failures recorded without losing finished
cases, and resume after a crash between cases.

The llama-bench here is a stand-in script that replays llama-bench's JSONL shape and can be
told to crash, hang or be SIGKILLed on its Nth start, or what figure its Nth start reports; the
real binary is exercised by the slow end-to-end tests.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from harness.drivers.base import DeviceUnreachable
from harness.drivers.local import LocalDriver
from harness.errors import StoreError
from harness.records import Case
from harness.run.runner import RunTargets, execute, pending_steps
from harness.store.db import SCHEMA_VERSION, Store
from harness.store.schema import schema_version
from harness.telemetry.state import DeviceState

from .conftest import runtime_folder

FAKE = textwrap.dedent(
    """\
    #!{python}
    import json, os, signal, sys, time
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    count = int((root / "count").read_text() or 0) + 1 if (root / "count").exists() else 1
    (root / "count").write_text(str(count))
    mode = json.loads((root / "modes.json").read_text()).get(str(count), "ok") if (root / "modes.json").exists() else "ok"
    given = json.loads((root / "values.json").read_text()) if (root / "values.json").exists() else {{}}
    args = sys.argv[1:]
    val = lambda flag: int(args[args.index(flag) + 1]) if flag in args else 0
    if mode == "crash":
        print("ggml_abort: injected failure", file=sys.stderr); sys.exit(134)
    if mode == "hang":
        time.sleep(60)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    reps = val("-r")
    print(json.dumps({{"build_commit": "fake", "build_number": 0, "n_prompt": val("-p"), "n_gen": val("-n"),
                      "n_depth": val("-d"), "avg_ts": given.get(str(count), 100.0 + count), "samples_ts": [given.get(str(count), 100.0 + count)] * reps,
                      "n_threads": 2, "backends": "CPU", "progress": "--progress" in args}}))
    """
)


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    return runtime_folder(tmp_path / "runtime", FAKE.format(python=sys.executable))


CASES = [Case("llamabench", "prefill", 16, 0, 0, inprocess_reps=2), Case("llamabench", "decode", 0, 4, 16, inprocess_reps=2)]


def _new_run(store: Store, repetitions: int = 2, cases: list[Case] = CASES) -> str:
    return store.create_run(
        device="local", suite_name="t", suite_text="", repetitions=repetitions, timeout_s=30, cases=cases,
        model_sha256="0" * 64, model_info={"filename": "m.gguf"}, runtime_key=None, runtime_manifest=None,
        facts={"name": "local"}, command={}, version="test",
    )


def _run(store: Store, run_id: str, runtime: Path, timeout: float = 30, **kw):
    steps = pending_steps(store, run_id, store.cases(run_id), store.run(run_id).repetitions)
    return execute(store, run_id, LocalDriver(), steps, RunTargets(str(runtime), "/m.gguf"), timeout_s=timeout, **kw)


def test_rounds_interleave_cases_and_every_process_is_stored(tmp_path, runtime, store_url):
    store = Store(tmp_path / "results", store_url)
    run_id = _new_run(store)
    results = _run(store, run_id, runtime)
    assert [r.status for r in results] == ["ok"] * 4
    order = [(e.case_key, e.rep) for e in store.executions(run_id)]
    a, b = (c.key for c in CASES)
    assert order == [(a, 0), (b, 0), (a, 1), (b, 1)]
    assert store.run(run_id).status == "finished"
    artifacts = store.artifacts_dir(run_id) / a
    assert json.loads((artifacts / "rep0.stdout").read_text())["n_prompt"] == 16
    assert (artifacts / "rep0.telemetry.csv").exists()
    stored = store.artifacts(run_id)  # and in the store, so a report on another host has them
    assert stored[f"{a}/rep0.stdout"] == (artifacts / "rep0.stdout").read_bytes() and f"{b}/rep1.telemetry.csv" in stored
    values = [m["value"] for m in store.measurements([run_id]) if m["metric"] in ("prefill_tps", "decode_tps")]
    assert values == [101.0, 103.0, 102.0, 104.0]  # grouped by case, then rep
    execution = store.executions(run_id)[0]
    assert execution.raw.effective == {"n_threads": 2, "backends": "CPU"}  # what analysis reads, not the records
    assert execution.raw.records[0]["progress"] is True  # the engine asked for its marks; raw output kept
    assert execution.raw.windows == ()  # no probe in this runtime: nothing stamped them


@pytest.mark.parametrize("mode, status, text", [("crash", "failed", "injected failure"), ("kill", "oom", "SIGKILL"),
                                               ("segv", "failed", "was killed by SIGSEGV (exit -11)"), ("hang", "timeout", "timeout")])
def test_a_failing_process_is_recorded_and_the_run_goes_on(tmp_path, runtime, mode, status, text):
    (runtime / "modes.json").write_text(json.dumps({"2": mode}))
    store = Store(tmp_path / "results")
    run_id = _new_run(store)
    results = _run(store, run_id, runtime, timeout=3)
    assert [r.status for r in results] == ["ok", status, "ok", "ok"]
    failed = [e for e in store.executions(run_id) if e.status != "ok"]
    assert len(failed) == 1 and text in failed[0].error
    assert store.run(run_id).status == "failed"
    peak = [m for m in store.measurements([run_id]) if m["metric"] == "peak_rss_mb" and m["status"] == status]
    assert peak and peak[0]["value"] is not None  # the failed process's rusage is kept


def test_resume_after_a_crash_between_cases_keeps_finished_ones(tmp_path, runtime, store_url):
    store = Store(tmp_path / "results", store_url)
    run_id = _new_run(store)

    def vanish(step):
        if step.index == 2:
            raise DeviceUnreachable("device went away")

    with pytest.raises(DeviceUnreachable):
        _run(store, run_id, runtime, on_start=vanish)
    assert store.run(run_id).status == "interrupted"
    assert "--resume" in store.run(run_id).note
    assert len(store.executions(run_id)) == 2
    store.close()

    reopened = Store(tmp_path / "results", store_url)
    remaining = pending_steps(reopened, run_id, reopened.cases(run_id), 2)
    assert [(s.case.key, s.rep) for s in remaining] == [(CASES[0].key, 1), (CASES[1].key, 1)]
    _run(reopened, run_id, runtime)
    assert reopened.run(run_id).status == "finished"
    assert sorted((e.case_key, e.rep) for e in reopened.executions(run_id)) == sorted(
        (c.key, r) for c in CASES for r in range(2)
    )


def test_resume_retries_only_failed_processes(tmp_path, runtime, store_url):
    (runtime / "modes.json").write_text(json.dumps({"1": "crash"}))
    store = Store(tmp_path / "results", store_url)
    run_id = _new_run(store)
    _run(store, run_id, runtime)
    retry = pending_steps(store, run_id, store.cases(run_id), 2)
    assert [(s.case.key, s.rep) for s in retry] == [(CASES[0].key, 0)]
    _run(store, run_id, runtime)
    assert {e.status for e in store.executions(run_id)} == {"ok"}


def test_store_refuses_a_newer_schema_and_finds_runs_by_prefix(tmp_path):
    store = Store(tmp_path)
    run_id = _new_run(store)
    assert store.run(run_id[:10]).id == run_id
    assert store.run("latest").id == run_id
    with pytest.raises(StoreError, match="not in the store"):
        store.run("nope")
    with store.engine.begin() as conn:
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION + 1))
    store.close()
    with pytest.raises(StoreError, match="newer than this edgebench"):
        Store(tmp_path)


def test_stores_opened_at_once_migrate_once(tmp_path):
    import threading

    errors: list[Exception] = []

    def open_store() -> None:
        try:
            Store(tmp_path / "shared").close()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(tmp_path / "shared").engine.connect() as conn:
        assert conn.execute(schema_version.select()).scalars().all() == [SCHEMA_VERSION]


def test_sustained_mode_keeps_running_rounds_until_time_is_up(tmp_path, runtime):
    from harness.plan.planner import RunPolicy

    store = Store(tmp_path / "results")
    run_id = _new_run(store, repetitions=1)
    results = _run(store, run_id, runtime, policy=RunPolicy(mode="sustained", sustained_minutes=0.05))
    rounds = store.run(run_id).repetitions
    assert rounds >= 2 and len(results) == 2 * rounds
    assert sorted({e.rep for e in store.executions(run_id)}) == list(range(rounds))


def test_burst_mode_waits_for_the_device_to_cool_and_records_it(tmp_path, runtime, monkeypatch):
    """A hot device cannot exist here: its temperatures are replayed through the real pacing."""
    import harness.run.runner as runner
    from harness.plan.planner import RunPolicy

    readings = iter([50.0, 61.0, 57.0, 52.0] + [51.0] * 50)  # idle at start, then hot after each case
    monkeypatch.setattr(runner, "capture_state", lambda driver: DeviceState(temps_c={"cpu": next(readings)}))
    store = Store(tmp_path / "results")
    run_id = _new_run(store, repetitions=1)
    _run(store, run_id, runtime, policy=RunPolicy(mode="burst", cooldown_tolerance_c=3.0, cooldown_max_s=30, cooldown_poll_s=0.01,
                                                  quiet_max_s=0))
    first, second = (e.raw.cooldown for e in store.executions(run_id))
    assert first["start_c"] == 61.0 and first["end_c"] == 52.0 and first["reached"] and first["target_c"] == 53.0
    assert second["reached"]


def test_burst_mode_without_a_temperature_sensor_says_so(tmp_path, runtime, monkeypatch):
    import harness.run.runner as runner
    from harness.plan.planner import RunPolicy

    monkeypatch.setattr(runner, "capture_state", lambda driver: DeviceState())
    store = Store(tmp_path / "results")
    run_id = _new_run(store, repetitions=1)
    _run(store, run_id, runtime, policy=RunPolicy(mode="burst", quiet_max_s=0))
    assert {e.raw.cooldown["reason"] for e in store.executions(run_id)} == {"no CPU temperature to wait on"}


# --- precision target ---------------------------------------------------------------------

THREE = [Case("llamabench", "prefill", 16, 0, 0), Case("llamabench", "prefill", 32, 0, 0), Case("llamabench", "decode", 0, 4, 0)]


def _figures(runtime: Path, by_start: dict[int, float]) -> None:
    (runtime / "values.json").write_text(json.dumps({str(k): v for k, v in by_start.items()}))


def test_precision_adds_interleaved_rounds_only_for_cases_not_within_target(tmp_path, runtime):
    from harness.plan.planner import RunPolicy

    # two fixed rounds (starts 1-6): p16 is within ±15% (±1.3%), p32 and decode are not; then rounds
    # of those two until decode is within target (±14.6% at 5) and p32 reaches the 6-process limit
    _figures(runtime, {1: 100.0, 2: 50.0, 3: 10.0, 4: 100.2, 5: 80.0, 6: 14.0, 7: 50.0, 8: 12.0, 9: 80.0, 10: 12.0,
                       11: 50.0, 12: 12.0, 13: 80.0, 14: 12.0})
    store = Store(tmp_path / "results")
    run_id = _new_run(store, repetitions=2, cases=THREE)
    a, b, c = (case.key for case in THREE)
    results = _run(store, run_id, runtime, policy=RunPolicy(precision=0.15, max_repetitions=6))
    order = [(r.step.case.key, r.step.rep) for r in results]
    assert order[:6] == [(a, 0), (b, 0), (c, 0), (a, 1), (b, 1), (c, 1)]
    assert order[6:] == [(b, 2), (c, 2), (b, 3), (c, 3), (b, 4), (c, 4), (b, 5)]  # interleaved; c stops after round 5
    stops = store.stops(run_id)
    assert (stops[a].reason, stops[a].n) == ("within-target", 2) and stops[a].half_width < 0.15
    assert (stops[b].reason, stops[b].processes) == ("max-repetitions", 6) and stops[b].half_width > 0.15
    assert (stops[c].reason, stops[c].n) == ("within-target", 5) and stops[c].metric == "decode_tps"
    assert store.run(run_id).status == "finished" and store.run(run_id).repetitions == 2


def test_precision_target_survives_an_interruption_and_resume(tmp_path, runtime):
    from harness.plan.planner import RunPolicy

    _figures(runtime, {n: 100.0 + 40 * ((n - 1) // 2 % 2) for n in range(1, 30)})  # each case 100, 140, 100...: never within 1%
    store = Store(tmp_path / "results")
    run_id = _new_run(store, repetitions=2)
    policy = RunPolicy(precision=0.01, max_repetitions=4)

    def vanish(step):
        if step.rep == 2 and step.index == 1:  # mid precision round: case 1 has 3 processes, case 2 has 2
            raise DeviceUnreachable("device went away")

    with pytest.raises(DeviceUnreachable):
        _run(store, run_id, runtime, on_start=vanish, policy=policy)
    assert store.run(run_id).status == "interrupted"
    assert pending_steps(store, run_id, store.cases(run_id), 2) == []  # the fixed rounds are done
    _run(store, run_id, runtime, policy=policy)  # as --resume does: no fixed steps left, precision goes on
    reps = sorted((e.case_key, e.rep) for e in store.executions(run_id))
    assert reps == sorted((case.key, r) for case in CASES for r in range(4))  # nothing redone, nothing beyond the limit
    assert {s.reason for s in store.stops(run_id).values()} == {"max-repetitions"}
    assert store.run(run_id).status == "finished"


def test_a_case_whose_last_process_failed_gets_no_more_rounds(tmp_path, runtime):
    from harness.plan.planner import RunPolicy

    (runtime / "modes.json").write_text(json.dumps({"3": "crash"}))
    store = Store(tmp_path / "results")
    run_id = _new_run(store, repetitions=2)
    results = _run(store, run_id, runtime, policy=RunPolicy(precision=0.0001, max_repetitions=3))
    stops = store.stops(run_id)
    assert stops[CASES[0].key].reason == "failed" and stops[CASES[1].key].reason == "max-repetitions"
    assert [(r.step.case.key, r.step.rep) for r in results][4:] == [(CASES[1].key, 2)]


def test_without_a_target_no_round_is_added_and_no_verdict_stored(tmp_path, runtime):
    store = Store(tmp_path / "results")
    run_id = _new_run(store)
    assert len(_run(store, run_id, runtime)) == 4 and store.stops(run_id) == {}


def test_the_table_and_json_say_why_each_case_stopped(tmp_path, runtime):
    from harness.plan.planner import RunPolicy

    from .test_cli import edgebench

    _figures(runtime, {1: 100.0, 2: 50.0, 3: 100.2, 4: 80.0, 5: 50.0, 6: 80.0})
    results = tmp_path / "results"
    store = Store(results)
    run_id = _new_run(store)
    _run(store, run_id, runtime, policy=RunPolicy(precision=0.02, max_repetitions=4))
    shown = edgebench("results", "show", run_id, "--results", str(results), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "stopped" in text and "within ±2% after 2" in text and "at the 4-process limit" in text
    assert "2–4 processes per case" in text and "precision target" in text
    payload = json.loads(edgebench("results", "show", run_id, "--json", "--results", str(results), cwd=tmp_path).stdout)
    assert {s["case"]: s["reason"] for s in payload["stops"]} == {"prefill p16": "within-target", "decode n4 @d16": "max-repetitions"}
