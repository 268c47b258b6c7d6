"""`edgebench run --store postgresql://...` and `results push` through the installed command,
against a fresh real PostgreSQL: the path every lab user takes, which broke on a fresh install
(the run refused by its own device lease) while every store test passed.

Only llama.cpp is stood in for, so the test stays fast: the runtime is built for real by
`edgebench run` (CMake, the probe, the runtime cache), from a tiny CMake project planted as the
pinned source in a cache of its own, whose llama-bench prints what llama-bench prints
(tests/conftest.py:fake_llama_bench).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from harness.runtimes.build import find_tool
from harness.runtimes.source import PINNED
from harness.store.db import Store
from harness.store.schema import artifacts, executions, leases, runs

from .conftest import REPO, fake_llama_bench
from .pg_fixture import PASSWORD, Cluster, fresh_database

SUITE = """
name = "tiny-pg"
repetitions = 2
inprocess_repetitions = 2
mode = "none"
[[prefill]]
prompt = 16
"""

# llama.cpp's CMake targets as the runtime build asks for them; each program runs the stand-in.
TINY_LLAMA_CPP = """\
cmake_minimum_required(VERSION 3.16)
project(tiny C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_library(llama lib.c)
foreach(program llama-bench llama-perplexity llama-server llama-quantize)
  add_executable(${program} main.c)
  target_link_libraries(${program} llama)
  target_compile_definitions(${program} PRIVATE STAND_IN="${CMAKE_CURRENT_SOURCE_DIR}/llama-bench.sh")
endforeach()
"""
MAIN_C = '#include <unistd.h>\nint tiny_llama(void);\nint main(void) {\n    execl("/bin/sh", "sh", STAND_IN, (char *)0);\n    return 127 + tiny_llama();\n}\n'
LIB_C = "int tiny_llama(void) {\n    return 0;\n}\n"
PREFILL_TPS = 16 / 0.2  # the stand-in's 16 tokens in 0.2 s per repetition


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An edgebench cache whose pinned llama.cpp source is the tiny project (as an extracted sdist)."""
    if find_tool("cmake") is None or find_tool("cc") is None:
        pytest.skip("needs cmake and a C compiler")
    cache = tmp_path_factory.mktemp("cache")
    source = cache / "sources" / PINNED.stem
    tree = source / "vendor" / "llama.cpp"
    tree.mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text(TINY_LLAMA_CPP)
    (tree / "main.c").write_text(MAIN_C)
    (tree / "lib.c").write_text(LIB_C)
    (tree / "llama-bench.sh").write_text(fake_llama_bench(reps=2, seconds=0.2, load_s=0.1, n_prompt=16))
    (source / ".edgebench-source.json").write_text(json.dumps({"sdist_sha256": PINNED.sha256, "llama_cpp_commit": "tiny000"}))
    return cache


@pytest.fixture
def lab_db(pg_cluster: Cluster) -> Iterator[str]:
    """A second fresh database on the cluster: the lab store a run is pushed to."""
    with fresh_database(pg_cluster) as url:
        yield url


def _counts(root: Path, url: str, run_id: str) -> tuple[int, int, int, int]:
    """(runs, this run's process runs, its files, leases held) in the store at `url`."""
    with Store(root, url) as store, store.engine.connect() as conn:
        def count(table, *where) -> int:
            return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()

        return (count(runs), count(executions, executions.c.run_id == run_id), count(artifacts, artifacts.c.run_id == run_id),
                count(leases))


def test_a_run_into_postgresql_then_pushed_lands_once(tmp_path, tiny_cache, pg_url, lab_db, default_model):
    env = {**os.environ, "EDGEBENCH_CACHE": str(tiny_cache), "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    env.pop("EDGEBENCH_STORE", None)
    (tmp_path / "tiny.toml").write_text(SUITE)

    def edgebench(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(Path(sys.executable).with_name("edgebench")), *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env=env)

    run = edgebench("run", "--suite", "tiny.toml", "--model", str(default_model), "--store", pg_url)
    assert run.returncode == 0, run.stderr
    assert "prefill p16" in run.stdout and "busy" not in run.stderr
    listed = edgebench("results", "list", "--format", "csv", "--store", pg_url)
    (header, row) = csv.reader(io.StringIO(listed.stdout))
    run_id = row[header.index("run")]
    assert row[header.index("status")] == "finished"
    with Store(tmp_path, pg_url) as store:
        assert [(e.status, e.rep) for e in store.executions(run_id)] == [("ok", 0), ("ok", 1)]
        assert [m["value"] for m in store.measurements([run_id]) if m["metric"] == "prefill_tps"] == [PREFILL_TPS] * 2
        assert any(name.endswith("rep0.telemetry.csv") for name in store.artifacts(run_id))
    before = _counts(tmp_path, pg_url, run_id)
    assert before[:2] == (1, 2) and before[2] > 0 and before[3] == 0  # the lease was given back
    assert not (tmp_path / "results" / "edgebench.sqlite").exists()  # nothing went to a local store

    pushes = [edgebench("results", "push", "--store", pg_url, "--to", lab_db) for _ in range(2)]
    assert [p.returncode for p in pushes] == [0, 0], pushes[0].stderr
    assert f"1 new or updated, 2 process run(s), {before[2]} file(s) copied" in pushes[0].stdout
    assert "0 new or updated, 0 process run(s), 0 file(s) copied" in pushes[1].stdout
    assert all(PASSWORD not in p.stdout + p.stderr for p in pushes)
    assert _counts(tmp_path, lab_db, run_id) == (1, 2, before[2], 0)
    with Store(tmp_path, pg_url) as source, Store(tmp_path, lab_db) as lab:
        assert lab.artifacts(run_id) == source.artifacts(run_id)
        assert sorted(map(repr, lab.measurements([run_id]))) == sorted(map(repr, source.measurements([run_id])))
