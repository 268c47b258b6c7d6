"""Lab runs: several local pseudo-devices at once, one failing mid-run, locks, resume, cron."""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from harness.lab.runs import load_lab, new_lab, run_lab
from harness.lab.locks import DeviceBusy, device_lock
from harness.lab.schedule import cron_line

from .test_cli import edgebench

TINY = """
name = "lab-tiny"
repetitions = 2
inprocess_repetitions = 1
[[prefill]]
prompt = 16
[[decode]]
tokens = 4
"""


def _inventory(tmp_path: Path, names: list[str]) -> Path:
    text = "".join(
        f'[[device]]\nname = "{n}"\ndriver = "local"\nworkdir = "{tmp_path / "dev" / n}"\ntags = ["{"odd" if i % 2 else "even"}"]\n\n'
        for i, n in enumerate(names)
    )
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return path


def test_a_busy_device_is_reported_and_the_lock_names_its_holder(tmp_path):
    inventory = _inventory(tmp_path, ["lab-busy-a", "lab-busy-b"])
    results = tmp_path / "results"
    plan = new_lab(results, inventory, "quick", ("even",))
    assert plan.devices == ("lab-busy-a",)
    with device_lock("lab-busy-a"):
        with pytest.raises(DeviceBusy, match=r"held by pid \d+"):
            with device_lock("lab-busy-a"):
                pass
        outcomes = run_lab(results, plan, load_lab(results, plan.lab_id)[1], retries=0)
    assert outcomes["lab-busy-a"].status == "busy" and "busy" in outcomes["lab-busy-a"].error
    saved = load_lab(results, plan.lab_id)[1]
    assert saved["lab-busy-a"].status == "busy"
    assert (results / "lab" / plan.lab_id / "lab-busy-a.log").read_text().strip()


def test_cron_line_is_absolute_and_validated(tmp_path):
    inventory = _inventory(tmp_path, ["x"])
    line = cron_line(inventory, "quick", "02:30", ("even",), tmp_path / "results")
    minute, hour, *_ = line.split(" ", 5)
    assert (minute, hour) == ("30", "2") and line.split(" ", 5)[2:5] == ["*", "*", "*"]
    assert f"--inventory {inventory.resolve()}" in line and "--tags even" in line and "cron.log 2>&1" in line
    from harness.errors import EdgebenchError

    with pytest.raises(EdgebenchError, match="02:00"):
        cron_line(inventory, "quick", "25:00")


def _kill_in(folder: Path, stop: threading.Event, killed: list[int]) -> None:
    """Plays a device failing mid-run: kills every benchmark process working in its folder."""
    while not stop.is_set():
        for proc in psutil.process_iter(["name", "cwd"]):
            if proc.info["cwd"] == str(folder) and proc.info["name"] in ("llama-bench", "edgebench-probe"):
                try:
                    proc.kill()
                    killed.append(proc.pid)
                except psutil.Error:
                    pass
        stop.wait(0.05)


@pytest.mark.slow
def test_four_devices_in_parallel_with_one_failing_mid_run(tmp_path, host_runtime, default_model):
    names = ["lab-a", "lab-b", "lab-c", "lab-d"]
    inventory = _inventory(tmp_path, names)
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    results = tmp_path / "results"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_in, args=(tmp_path / "dev" / "lab-c", stop, killed), daemon=True)
    killer.start()
    try:
        run = edgebench("lab", "run", "--inventory", str(inventory), "--suite", str(suite), "--results", str(results), cwd=tmp_path)
    finally:
        stop.set()
    assert run.returncode == 1, run.stderr
    assert killed, run.stdout + run.stderr
    lab_id = next((results / "lab").iterdir()).name
    plan, outcomes = load_lab(results, lab_id)
    assert {d: o.status for d, o in outcomes.items()} == {"lab-a": "ok", "lab-b": "ok", "lab-c": "failed", "lab-d": "ok"}
    for name in ("lab-a", "lab-b", "lab-d"):
        shown = json.loads(edgebench("results", "show", outcomes[name].run_id, "--json", "--results", str(results), cwd=tmp_path).stdout)
        assert {r["metric"] for r in shown["summary"] if r["n"] == 2} >= {"prefill_tps", "decode_tps"}
    assert "lab-c" in run.stdout and "failed" in run.stdout
    assert (results / "lab" / lab_id / "report.html").exists()

    # The scheduled entry, run the way cron would (its command part through sh), finishes a lab.
    line = cron_line(inventory, str(suite), "02:00", (), results)
    command = line.split(" ", 5)[5]
    done = subprocess.run(["sh", "-c", command], cwd="/", capture_output=True, text=True, timeout=1200, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 0, (results / "lab" / "cron.log").read_text()[-2000:]
    assert "lab-" in (results / "lab" / "cron.log").read_text()
    assert shlex.split(command)[0].endswith("mkdir")
