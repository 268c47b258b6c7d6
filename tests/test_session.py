"""`--resume` through the session: a run is only resumed with the model and runtime it began with.

Real model, real llama-cpp-python and llama-bench; the changed model is a real file edited on
disk, as a user replacing a GGUF would.
"""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import update

from harness.errors import EdgebenchError
from harness.run.session import Callbacks, RunOptions, prepare, resume, start
from harness.store.db import Store
from harness.store.schema import runs

from .test_cli import edgebench

LATENCY = """
name = "latency-once"
repetitions = 1
inprocess_repetitions = 1
mode = "none"
[[latency]]
prompt = 16
tokens = 4
"""

PREFILL = """
name = "prefill-once"
repetitions = 1
inprocess_repetitions = 1
mode = "none"
[[prefill]]
prompt = 16
"""


def test_resume_refuses_a_model_file_that_changed(tmp_path, default_model):
    model = tmp_path / "model.gguf"
    shutil.copyfile(default_model, model)
    (tmp_path / "latency.toml").write_text(LATENCY)
    results = tmp_path / "results"
    first = edgebench("run", "--suite", "latency.toml", "--model", str(model), "--results", str(results), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    store = Store(results)
    row = store.run("latest")
    executions = [e.id for e in store.executions(row.id)]
    with model.open("r+b") as fh:  # one byte of the last tensor's data: still a GGUF llama.cpp loads, another model
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))

    again = edgebench("run", "--resume", "latest", "--results", str(results), cwd=tmp_path)
    message = " ".join(again.stderr.split())
    assert again.returncode == 2, again.stderr
    assert f"run {row.id} used model sha256 {row.model_sha256[:12]}" in message and f"{model} is now" in message
    assert "start a new run" in message
    assert [e.id for e in Store(results).executions(row.id)] == executions  # nothing ran


@pytest.mark.slow
def test_resume_refuses_a_runtime_other_than_the_runs(tmp_path, host_runtime, default_model):
    (tmp_path / "prefill.toml").write_text(PREFILL)
    store = Store(tmp_path / "results")
    run_id, _ = start(store, prepare(RunOptions(suite=str(tmp_path / "prefill.toml"))), Callbacks())
    manifest = json.loads((store.artifacts_dir(run_id) / "runtime.json").read_text())
    assert store.run(run_id).runtime_key == manifest["key"] == host_runtime.manifest.key
    other = "f" * 64  # as if the run had been made with another llama.cpp build (an upgrade, other flags)
    with store.transaction() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(runtime_key=other, status="interrupted"))
    with pytest.raises(EdgebenchError, match=rf"run {run_id} used runtime ffffffffffff, but this build is {host_runtime.manifest.key[:12]}"):
        resume(store, run_id, Callbacks())
    assert store.run(run_id).status == "interrupted"  # refused before anything ran
