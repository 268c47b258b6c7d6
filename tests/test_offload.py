"""A case that offloads layers to a GPU says so, in the CLI's results table and in the HTML report
(checked in a real headless Chromium): how many layers and to which device, as llama-bench
reported it; a CPU-only case says nothing extra. The rows are recorded llama-bench output
(tests/data/llamabench/README.md): the host-vulkan runtime on Mesa's lavapipe with -ngl 99, and
the CPU host build, parsed by the real engine and stored as the runner stores them."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from harness.analysis.tables import offloads_by_case, summary_frame, tidy_frame, wide_table
from harness.cli import views
from harness.drivers.base import Completed
from harness.engines.llamabench import LlamaBench, offload_note
from harness.records import Case
from harness.report.html import render_report
from harness.runtimes.models import inspect_model
from harness.store.db import ExecutionRaw, Store

from .conftest import DATA
from .test_report import headless_chromium

VULKAN = Case("llamabench", "prefill", 16, 0, 0, settings=(("n_gpu_layers", 99),))
CPU = Case("llamabench", "prefill", 16, 0, 0)
RECORDED = {VULKAN: "lavapipe_p16_ngl99", CPU: "prefill_p16_r2"}
LAVAPIPE = ("GPU: 31/31 layers on llvmpipe (LLVM 15.0.6, 256 bits) via Vulkan; "
            "lavapipe: a CPU implementation; figures are not GPU figures")


def _parsed(case: Case):
    stem = DATA / "llamabench" / RECORDED[case]
    stderr = stem.with_suffix(".stderr")
    done = Completed(argv=("llama-bench",), exit_code=0, stdout=stem.with_suffix(".jsonl").read_text(),
                     stderr=stderr.read_text() if stderr.exists() else "", wall_s=1.0)
    return LlamaBench().parse(case, done)


@pytest.fixture
def stored(tmp_path: Path, default_model: Path) -> tuple[Store, str]:
    """One run of the two recorded cases, three processes each, with the real model's facts
    (SmolLM2-135M: 30 blocks, so llama.cpp offloads 31 layers with the output layer)."""
    model = inspect_model(default_model)
    store = Store(tmp_path / "results")
    run_id = store.create_run(device="local", suite_name="offload", suite_text="", repetitions=3, timeout_s=60,
                              cases=list(RECORDED), model_sha256=model.sha256, model_info=model.to_json(), runtime_key=None,
                              runtime_manifest=None, facts={"name": "local", "cpu_model": "a CPU", "gpus": []}, command={}, version="t")
    for rep in range(3):
        for case in RECORDED:
            result = _parsed(case)
            store.record_execution(run_id, case, rep, status="ok", exit_code=0, wall_s=1.0, started_at="t", error=None,
                                   build=result.build, raw=ExecutionRaw(effective=result.effective), metrics=result.metrics)
    store.finish_run(run_id, "finished")
    return store, run_id


def test_the_note_says_how_many_layers_went_to_which_device() -> None:
    lavapipe = _parsed(VULKAN).effective
    assert offload_note(lavapipe, 30) == LAVAPIPE
    assert offload_note(_parsed(CPU).effective, 30) is None  # a CPU build (n_gpu_layers -1, backends CPU): nothing to say
    rtx = {"backends": "CUDA", "gpu_info": "NVIDIA GeForce RTX 4090", "n_gpu_layers": -1}
    assert offload_note(rtx, 30) == "GPU: 31/31 layers on NVIDIA GeForce RTX 4090 via CUDA"  # -1: all of them
    assert offload_note({**rtx, "n_gpu_layers": 12}, 30) == "GPU: 12/31 layers on NVIDIA GeForce RTX 4090 via CUDA"
    assert offload_note({**rtx, "n_gpu_layers": 12}, None) == "GPU: up to 12 layers on NVIDIA GeForce RTX 4090 via CUDA"
    assert offload_note({**rtx, "n_gpu_layers": 0}, 30) is None
    assert offload_note({**rtx, "backends": "BLAS"}, 30) is None  # BLAS is not a GPU backend
    unused = {"backends": "Vulkan", "gpu_info": "", "n_gpu_layers": 99, "device_note": "no GPU device took the offloaded layers (...)"}
    assert offload_note(unused, 30) == "GPU: no layer offloaded: no GPU device took the offloaded layers (...)"


def test_the_results_table_marks_the_offloaded_case_only(stored: tuple[Store, str]) -> None:
    store, run_id = stored
    offloads = offloads_by_case(store, [run_id])
    assert offloads == {(run_id, VULKAN.label): LAVAPIPE}
    grid = views.summary_grid(store.run(run_id), summary_frame(tidy_frame(store, [run_id])), offloads=offloads)
    rows = {row[0]: dict(zip(grid.header, row)) for row in grid.rows}
    assert rows[VULKAN.label][views.OFFLOAD] == LAVAPIPE and rows[CPU.label][views.OFFLOAD] == ""
    console = Console(width=views.UNBOUNDED, file=io.StringIO(), color_system=None)  # as piped: every cell on one line
    views.show_run(console, store, run_id, "plain")
    (line,) = [line for line in console.file.getvalue().splitlines() if line.startswith(VULKAN.label)]
    assert line.rstrip().endswith(LAVAPIPE) and "GPU offload" in console.file.getvalue()
    (cpu_line,) = [line for line in console.file.getvalue().splitlines() if line.split("  ")[0] == CPU.label]
    assert "GPU" not in cpu_line
    cpu_only = wide_table(summary_frame(tidy_frame(store, [run_id])))  # without offloads: no such column
    assert cpu_only.offloads == {} and views.OFFLOAD not in views.summary_grid(store.run(run_id), summary_frame(
        tidy_frame(store, [run_id]))).header


def test_the_report_says_it_under_the_case_in_a_real_browser(stored: tuple[Store, str], tmp_path: Path) -> None:
    flags = headless_chromium(tmp_path)
    store, run_id = stored
    report = render_report(store, [run_id], tmp_path / "report.html")
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    results = dom.stdout[dom.stdout.index("<h2>Results</h2>"):]
    results = results[:results.index("</table>")]
    rows = {row.split("</td>")[0]: row for row in results.split('<td class="text">')[1:]}
    (vulkan,) = [row for head, row in rows.items() if head.startswith(VULKAN.label)]
    (cpu,) = [row for head, row in rows.items() if head == CPU.label]
    assert f'<small class="offload">{LAVAPIPE}</small>' in vulkan and "GPU:" not in cpu
