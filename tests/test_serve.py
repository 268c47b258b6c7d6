"""The server engine: suites, windows, the streaming client's parsing and figures, and (slow) real
llama-server cases from the pinned build on the host, the emulated phone and the SSH board."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness.engines import Serving, get_engine
from harness.engines.server import MARK_PREFIX, request_windows
from harness.engines.streams import Endpoint, Request, run_streams, stream_metrics
from harness.plan.planner import build_plan
from harness.plan.suites import parse_suite
from tests.ports import http_serving

# Ollama's documented streaming answer to POST /api/generate, from its API reference:
# https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-completion ("Generate request
# (Streaming)"): one object per piece, then the final object with the server's own counts and
# durations (nanoseconds). The pieces between the first and the last are the documented first
# piece's form; the final object is the documented one.
OLLAMA_PIECE = {"model": "llama3.2", "created_at": "2023-08-04T08:52:19.385406455-07:00", "response": "The", "done": False}
OLLAMA_FINAL = {"model": "llama3.2", "created_at": "2023-08-04T19:22:45.499127Z", "response": "", "done": True, "context": [1, 2, 3],
                "total_duration": 10706818083, "load_duration": 6338219291, "prompt_eval_count": 26,
                "prompt_eval_duration": 130079000, "eval_count": 259, "eval_duration": 4232710000}


@contextmanager
def replay(lines: list[bytes], *, gap_s: float = 0.01, content_type: str = "application/x-ndjson") -> Iterator[str]:
    """A local HTTP server that answers every POST with `lines`, `gap_s` apart, streamed."""

    class Replay(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in lines:
                time.sleep(gap_s)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args) -> None:
            pass

    with http_serving(Replay) as url:
        yield url


def test_ollama_documented_stream_through_the_real_parsing_path() -> None:
    lines = [json.dumps(OLLAMA_PIECE).encode() + b"\n"] * 5 + [json.dumps(OLLAMA_FINAL).encode() + b"\n"]
    with replay(lines) as url:
        streams, started, ended = run_streams(Endpoint(url, api="ollama"), Request("Why is the sky blue?", 259, "llama3.2"),
                                              concurrency=2, requests=4)
    assert [s.index for s in streams] == [0, 1, 2, 3] and all(s.error is None for s in streams)
    assert all(len(s.arrivals) == 5 and s.tokens == 259 and s.prompt_tokens == 26 and s.text == "The" * 5 for s in streams)
    assert streams[0].timings["eval_duration"] == 4232710000
    by = {m.name: m for m in stream_metrics(streams, started, ended, prompt_tokens=26, tokens=259)}
    # the server's own figures, from its documented counts: 26 / 0.130079 s and 259 / 4.23271 s
    assert by["prefill_tps"].value == pytest.approx(26 / 0.130079)
    assert by["server_decode_tps"].value == pytest.approx(259 / 4.23271)
    assert by["ttft_ms"].value > 0 and len(by["ttft_ms"].samples) == 4
    assert len(by["itl_ms_p50"].samples) == 4 * 4 and by["itl_ms_p99"].value >= by["itl_ms_p50"].value >= 0
    assert by["streams_short"].value == 0 and by["requests_failed"].value == 0


def test_openai_stream_without_server_timings_labels_prefill_from_ttft() -> None:
    """A server that reports no timings (vLLM, LM Studio): prefill is prompt / TTFT, under its own
    name, and the server's figures are missing with the reason; a short stream is counted."""
    chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 3}}
    lines = [b"data: " + json.dumps(chunk).encode() + b"\n\n"] * 3 + [b"data: " + json.dumps(usage).encode() + b"\n\n", b"data: [DONE]\n\n"]
    with replay(lines, content_type="text/event-stream") as url:
        streams, started, ended = run_streams(Endpoint(url), Request([1, 2, 3, 4, 5, 6, 7, 8], 4), concurrency=1, requests=2)
    by = {m.name: m for m in stream_metrics(streams, started, ended, prompt_tokens=8, tokens=4)}
    assert by["prefill_tps"].value is None and "no prompt timings" in (by["prefill_tps"].missing_reason or "")
    assert by["prefill_tps_ttft"].value == pytest.approx(8 / streams[0].ttft_s, rel=0.5)
    assert by["server_decode_tps"].value is None
    assert by["streams_short"].value == 2  # 3 tokens of the 4 asked, twice


def test_a_refused_endpoint_fails_each_request_with_its_reason() -> None:
    from tests.ports import free_port

    streams, started, ended = run_streams(Endpoint(f"http://127.0.0.1:{free_port()}", timeout_s=5), Request([1], 2),
                                          concurrency=1, requests=2)
    assert all(s.error and "ConnectError" in s.error for s in streams)
    by = {m.name: m for m in stream_metrics(streams, started, ended, prompt_tokens=1, tokens=2)}
    assert by["ttft_ms"].missing_reason == "no request succeeded" and by["requests_failed"].value == 2


def test_request_windows_merge_overlapping_requests() -> None:
    line = MARK_PREFIX + "id  0 | task 3 |       total time =    {ms:8.2f} ms /   {n:3d} tokens"
    marks = [(10.0, MARK_PREFIX + "id  0 | task 3 | prompt eval time =  1.00 ms /  8 tokens (...)"),
             (10.5, line.format(ms=500.0, n=40)), (10.8, line.format(ms=600.0, n=40)), (13.0, line.format(ms=1000.0, n=40))]
    windows, tokens = request_windows(marks)
    assert windows == (pytest.approx((10.0, 0.8)), pytest.approx((12.0, 1.0)))
    assert tokens == 120


def test_serve_suite_plans_one_case_per_concurrency() -> None:
    suite = parse_suite('[[serve]]\nprompt = 32\ntokens = 16\nconcurrency = [1, 2]\n[settings]\nthreads = 2\n', "t.toml")
    plan = build_plan(suite, context_length=2048, host=False)
    assert [(c.engine, c.kind, c.setting("concurrency"), c.setting("requests")) for c in plan.cases] == [
        ("server", "serve", 1, 4), ("server", "serve", 2, 8)]
    assert plan.cases[1].label == "serve p32+n16 [concurrency=2 requests=8 threads=2]"
    engine = get_engine("server")
    assert isinstance(engine, Serving)
    argv = engine.argv(plan.cases[1], runtime_dir="/rt", model_path="/m.gguf")
    assert argv[:3] == ["/rt/bin/llama-server", "-m", "/m.gguf"]
    assert argv[argv.index("-np") + 1] == "2" and argv[argv.index("-c") + 1] == str(2 * (32 + 16 + 16))
    assert argv[argv.index("-t") + 1] == "2" and argv[argv.index("--host") + 1] == "127.0.0.1"


def test_llama_bench_only_settings_skip_a_serve_case() -> None:
    suite = parse_suite('[[serve]]\nprompt = 8\ntokens = 8\nload_mode = "mmap"\n', "t.toml")
    plan = build_plan(suite, context_length=2048, host=True)
    assert not plan.cases and plan.skipped[0][1] == "llama-server takes no load_mode"


# --- real llama-server from the pinned build ------------------------------------------------

SERVE_SUITE = """
name = "serve-tiny"
repetitions = 1
mode = "none"
[settings]
threads = 2
[[serve]]
prompt = 16
tokens = 8
concurrency = [1, 2]
[[serve]]
prompt = 16
tokens = 8
flash_attn = "off"
cache_type_v = "q8_0"   # llama.cpp refuses a quantized V cache without flash attention: the server cannot start
"""


def servers_running(runtime_root: str) -> list[int]:
    """Processes whose program is a llama-server of that runtime folder."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"/bin/llama-server") and runtime_root.encode() in a for a in argv):
            found.append(int(entry.name))
    return found


def _run(tmp_path, suite_text: str, **options):
    """`edgebench run`'s own path (harness.run.orchestrate), in process so a test can reach in."""
    from harness.run import orchestrate
    from harness.run.session import Callbacks, RunOptions
    from harness.store.db import Store

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "serve.toml").write_text(suite_text)
    store = Store(tmp_path / "results")
    (outcome,) = orchestrate.run(store, orchestrate.RunRequest(RunOptions(suite=str(tmp_path / "serve.toml"), **options)), Callbacks())
    return store, outcome


def _by_case(store, run_id):
    executions = {e.case_key: e for e in store.executions(run_id)}
    return {c.label: (c, executions[c.key]) for c in store.cases(run_id)}


@pytest.mark.slow
def test_serve_cases_on_the_host_llama_server(tmp_path, host_runtime, default_model) -> None:
    """Concurrency 1 and 2 measured from the client with the server's own timings beside; a
    server that cannot start fails its case with its stderr tail while the others run; no
    llama-server is left running."""
    store, outcome = _run(tmp_path, SERVE_SUITE)
    cases = _by_case(store, outcome.run_id)
    for concurrency in (1, 2):
        _, execution = next(v for k, v in cases.items() if f"concurrency={concurrency} " in k and "flash_attn" not in k)
        assert execution.status == "ok", execution.error
        raw = execution.raw
        streams = [r["stream"] for r in raw.records if "stream" in r]
        assert len(streams) == 4 * concurrency and all(s["tokens"] == 8 and s["prompt_tokens"] == 16 for s in streams)
        assert all(s["timings"]["prompt_n"] == 16 and s["timings"]["predicted_n"] == 8 for s in streams)  # the server's own, raw
        assert raw.effective["total_slots"] == concurrency and "streams_ended_early" not in raw.effective
        assert len(raw.windows) >= 1 and all(d > 0 for _, d in raw.windows)  # from the stamped timing lines
        assert raw.argv[raw.argv.index("-np") + 1] == str(concurrency)
    summary = {(r["case"], r["metric"]): r for r in _summary(store, outcome.run_id)}
    label = next(k for k in cases if "concurrency=2 " in k and "flash_attn" not in k)
    for name in ("ttft_ms", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "decode_tps", "agg_tps", "prefill_tps", "server_decode_tps"):
        assert summary[(label, name)]["mean"] > 0, name
    assert summary[(label, "peak_rss_mb")]["mean"] > 50  # the probe's wait4 of llama-server: the model's weights are ~92 MB
    failed = next(e for k, (c, e) in cases.items() if "flash_attn" in k)
    assert failed.status == "failed" and "exiting due to model loading error" in failed.error
    assert servers_running(str(host_runtime.root)) == []


def _summary(store, run_id):
    from harness.analysis.tables import summary_frame, tidy_frame

    return summary_frame(tidy_frame(store, [run_id])).to_dict("records")


@pytest.mark.slow
def test_a_taken_port_and_a_server_killed_mid_case_fail_their_cases(tmp_path, host_runtime, default_model, monkeypatch) -> None:
    import os
    import signal
    import socket

    import harness.engines.server as server

    taken = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setattr(server, "pick_port", lambda: taken.getsockname()[1])
    with taken:
        store, outcome = _run(tmp_path / "taken", 'repetitions = 1\nmode = "none"\n[[serve]]\nprompt = 8\ntokens = 4\n')
    ((_, execution),) = _by_case(store, outcome.run_id).values()
    assert execution.status == "failed" and "bind" in execution.error.lower(), execution.error
    monkeypatch.undo()

    def crash_when_serving() -> None:  # a crash of the server in the middle of its requests
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for pid in servers_running(str(host_runtime.root)):
                time.sleep(1.5)
                os.kill(pid, signal.SIGSEGV)
                return
            time.sleep(0.1)

    threading.Thread(target=crash_when_serving, daemon=True).start()
    store, outcome = _run(tmp_path / "crash", 'repetitions = 1\nmode = "none"\n[settings]\nthreads = 1\n[[serve]]\nprompt = 64\ntokens = 64\nrequests = 50\n')
    ((_, execution),) = _by_case(store, outcome.run_id).values()
    assert execution.status == "failed" and "SIGSEGV" in execution.error and "stderr tail" in execution.error, execution.error
    assert servers_running(str(host_runtime.root)) == []


# Two requests a case (one round at concurrency 2), and no greedy check (--no-quality): under
# qemu every request of the emulated phone takes seconds.
BOARD_SUITE = 'repetitions = 1\nmode = "none"\n[settings]\nthreads = 2\n[[serve]]\nprompt = 16\ntokens = 8\nconcurrency = [1, 2]\nrequests = 2\n'


def _served_on_device(store, run_id: str) -> None:
    """Each case at concurrency 1 and 2 ran on the device: every request whole, the server's
    timings stored raw, the probe's peak RSS of the server and its windows."""
    summary = {(r["case"], r["metric"]): r for r in _summary(store, run_id)}
    for label, (_, execution) in _by_case(store, run_id).items():
        assert execution.status == "ok", execution.error
        streams = [r["stream"] for r in execution.raw.records if "stream" in r]
        assert len(streams) == execution.raw.effective["requests"] and all(s["tokens"] == 8 for s in streams)
        assert all(s["timings"]["predicted_n"] == 8 for s in streams) and execution.raw.windows
        for name in ("ttft_ms", "itl_ms_p50", "decode_tps", "agg_tps", "prefill_tps"):
            assert summary[(label, name)]["mean"] > 0, (label, name)
        assert summary[(label, "peak_rss_mb")]["mean"] > 50, label
        assert summary[(label, "greedy_exact_share")]["missing_reason"] == "quality checks were switched off (--no-quality)"


@pytest.mark.slow
def test_serve_on_the_ssh_board_through_a_direct_tcpip_tunnel(tmp_path, host_runtime, default_model) -> None:
    """llama-server on the loopback board (host target), reached through the SSH connection."""
    from tests.sshd_fixture import Sshd

    sshd = Sshd(tmp_path / "sshd").start()
    try:
        sshd.board(None)
        workdir = tmp_path / "device"
        (tmp_path / "lab.toml").write_text(sshd.inventory("board", workdir=str(workdir)) + 'target = "host"\n')
        store, outcome = _run(tmp_path, BOARD_SUITE, device="board", inventory=str(tmp_path / "lab.toml"), quality=False)
        _served_on_device(store, outcome.run_id)
        argv = next(iter(_by_case(store, outcome.run_id).values()))[1].raw.argv
        assert argv[0].startswith(str(workdir))  # the board's staged runtime, not the host's
        assert servers_running(str(workdir)) == []
    finally:
        sshd.kill()


@pytest.mark.slow
def test_serve_on_the_emulated_phone_through_adb_forward(tmp_path, adb_server, phone, aarch64_binfmt, default_model) -> None:
    """The static linux-aarch64 llama-server pushed through adb and run under qemu, reached
    through the real adb server's `forward`; the forward is gone afterwards."""
    import shutil

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ is not installed (scripts/setup.sh --test installs it)")
    (tmp_path / "lab.toml").write_text(f'[[device]]\nname = "pixel7"\ndriver = "adb"\nserial = "{phone.serial}"\n'
                                       f'adb_server = "{adb_server.address}"\ntarget = "linux-aarch64"\n')
    store, outcome = _run(tmp_path, BOARD_SUITE, device="pixel7", inventory=str(tmp_path / "lab.toml"), quality=False)
    _served_on_device(store, outcome.run_id)
    assert servers_running("/data/local/tmp/edgebench") == []
    assert adb_server.adb_cmd("forward", "--list").stdout.strip() == ""


def test_greedy_figures_from_answers_against_the_reference() -> None:
    """Exact share over prompts, matched prefix per prompt, top-1 over every position."""
    from harness.engines.greedy import metrics

    reference = {"prompts": [[1], [2]], "k": 4, "tokens": [[5, 6, 7, 8], [9, 9, 9, 9]]}
    result = {"tokens": [[5, 6, 7, 8], [9, 3, 9, 9]], "top1_agree": 7, "positions": 8, "reference": reference}
    by = {m.name: m for m in metrics(result, "unused")}
    assert by["greedy_exact_share"].value == 50 and by["greedy_prefix_mean"].value == 2.5 and by["greedy_top1"].value == 87.5
    missing = metrics(None, "no host reference: the host llama-server did not start")
    assert all(m.value is None and "did not start" in (m.missing_reason or "") for m in missing)


def test_the_greedy_checks_requests_are_in_no_window() -> None:
    line = MARK_PREFIX + "id  0 | task 3 |       total time =    {ms:8.2f} ms /   {n:3d} tokens"
    marks = [(10.0, line.format(ms=500.0, n=40)), (12.0, line.format(ms=100.0, n=17))]
    assert request_windows(marks, 1) == (((pytest.approx(9.5), pytest.approx(0.5)),), 40)


GREEDY_SUITE = """
repetitions = 1
mode = "none"
[settings]
threads = 2
[[serve]]
prompt = 8
tokens = 4
requests = 1
[[serve]]
prompt = 8
tokens = 4
requests = 1
rope_freq_base = 10   # SmolLM2's is 100000: the server computes something else
"""


@pytest.mark.slow
def test_greedy_check_passes_the_host_server_and_marks_a_wrong_rope_base(tmp_path, host_runtime, default_model) -> None:
    """The same build on the same CPU matches llama.cpp's greedy tokens on the host exactly; a
    server started with a wrong rope base does not, and its figures carry the gate's mark."""
    from harness.analysis.quality import output_differs
    from harness.engines.greedy import GREEDY_PROMPTS, GREEDY_TOKENS

    store, outcome = _run(tmp_path, GREEDY_SUITE)
    summary = {(r["case"], r["metric"]): r for r in _summary(store, outcome.run_id)}
    cases = _by_case(store, outcome.run_id)
    right = next(k for k in cases if "rope" not in k)
    wrong = next(k for k in cases if "rope_freq_base=10" in k)
    assert summary[(right, "greedy_exact_share")]["mean"] == 100 and summary[(right, "greedy_top1")]["mean"] == 100
    assert summary[(right, "greedy_prefix_mean")]["mean"] == GREEDY_TOKENS
    assert summary[(wrong, "greedy_exact_share")]["mean"] < 75 and summary[(wrong, "greedy_top1")]["mean"] < 90
    marks = output_differs(store, outcome.run_id)
    assert cases[right][0].key not in marks
    assert marks[cases[wrong][0].key].startswith("output differs from the host reference (greedy: ")
    assert summary[(wrong, "decode_tps")]["output_differs"] == marks[cases[wrong][0].key]  # on its speed figures too
    (greedy,) = [r["greedy"] for r in cases[wrong][1].raw.records if "greedy" in r]
    assert len(greedy["tokens"]) == len(GREEDY_PROMPTS) and greedy["reference"]["runtime"]
    streams = [r["stream"] for r in cases[right][1].raw.records if "stream" in r]
    assert len(streams) == 1 and cases[right][1].raw.windows  # the timed request alone, the greedy ones in no window
