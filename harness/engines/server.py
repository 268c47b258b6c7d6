"""The server engine: one case = one `llama-server` process on the device, driven from the host.

The server runs under the native probe like llama-bench, so peak RSS, power, energy, heat and
contention are measured the same way. While it runs, a client on the host (`ServerRun`) reaches
its port through the driver (`Driver.forward`: loopback, `adb forward`, or an SSH direct-tcpip
channel), waits for `/health`, sends the case's requests with a streaming HTTP client
(harness.engines.streams), then stops the server with SIGTERM (which the probe passes on, so the
probe still records the server's exit and rusage) and checks that nothing is left running.

Measured windows: llama-server prints each request's timings on stderr when it ends
(`slot print_timing: ... total time = T ms / N tokens`); the probe stamps those lines on the
device clock, so request i's window ends at its mark and lasts T. Overlapping windows (several
slots at once) are merged, so energy is integrated once over the time any request ran; model
load, warmup and health polling are outside every window.

A case: `prompt` tokens sent as token ids (exact; the server's `usage` is kept to show it),
`tokens` generated with EOS ignored, `concurrency` streams at a time (the server gets as many
slots), `requests` in all.

After its requests, outside every window, the case runs the greedy check of
harness.engines.greedy against the host reference its runner passes as the `greedy` input (a
JSON file on the host); its figures are the case's too, and the gate marks a server that differs.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from harness.drivers.base import Completed, Driver, DriverError
from harness.engines import ENV_SETTINGS, EngineOutputError, EngineResult, LlamaCppEngine, env_prefix, greedy
from harness.engines.llamabench import flag_value
from harness.engines.streams import Endpoint, Request, Stream, run_streams, stream_metrics, wait_until
from harness.records import Case, Mark, Window

# suite setting -> llama-server flag (the ones that change what it computes or how fast)
SERVER_SETTINGS: dict[str, str] = {
    "threads": "-t", "cpu_mask": "-C", "cpu_strict": "--cpu-strict", "poll": "--poll", "n_gpu_layers": "-ngl",
    "flash_attn": "-fa", "cache_type_k": "-ctk", "cache_type_v": "-ctv", "batch": "-b", "ubatch": "-ub",
    "rope_freq_base": "--rope-freq-base",  # changes what it computes: how the greedy check's test makes a wrong server
}
# the case's own keys, kept among its settings so they are part of its identity and its label
CASE_KEYS = ("concurrency", "requests")
MARK_PREFIX = "slot print_timing: "
_TOTAL = re.compile(r"total time =\s*([0-9.]+) ms /\s*(\d+) tokens")
_PORTS = (20000, 60000)  # where a port is picked on the device: above the usual services, below ephemeral
_FILLER = ("The quick brown fox jumps over the lazy dog while the committee reviews the annual report on "
           "regional rainfall, soil quality and the yield of wheat, barley and oats across the valley. ")
HEALTH_TIMEOUT_S = 600.0
# sh: $0 the started pid, $1 the program's name (/proc/PID/comm), $2 the signal: the process of that
# name at or below $0 (children from pgrep -P, on Linux and Android alike) gets the signal
_SIGNAL_SERVER = ('find() { if [ "$(cat /proc/$1/comm 2>/dev/null)" = "$2" ]; then echo "$1"; '
                  'else for c in $(pgrep -P "$1"); do find "$c" "$2"; done; fi; }; '
                  'for p in $(find "$0" "$1"); do kill -"$2" "$p"; done')
HEALTH_POLL_TIMEOUT_S = 2.0
STOP_GRACE_S = 15.0


def pick_port() -> int:
    """A port for the server on the device's loopback: random, since what is free there cannot be
    known from here; one in use fails the case with the server's own message."""
    return random.randrange(*_PORTS)


def case_value(case: Case, key: str) -> int:
    return int(case.setting(key, 1))


class Server(LlamaCppEngine):
    name = "server"
    host_only = False
    marks = MARK_PREFIX
    settings = (*SERVER_SETTINGS, *ENV_SETTINGS, *CASE_KEYS)

    def unsupported(self, case: Case) -> str | None:
        """llama-bench's own settings (load_mode, delay) have no llama-server flag."""
        other = [key for key, _ in case.settings if key not in self.settings]
        return f"llama-server takes no {', '.join(other)}" if other else None

    def argv(self, case: Case, *, runtime_dir: str, model_path: str, inputs: Mapping[str, str] | None = None) -> list[str]:
        """llama-server on the device's loopback (`pick_port`), one slot per concurrent stream,
        each with room for the prompt and the tokens."""
        binary = str(PurePosixPath(runtime_dir) / "bin" / "llama-server")
        slots = case_value(case, "concurrency")
        ctx = slots * (case.n_prompt + case.n_gen + 16)
        argv = [*env_prefix(case), binary, "-m", model_path, "--host", "127.0.0.1", "--port", str(pick_port()),
                "-np", str(slots), "-c", str(ctx), "--seed", "42",
                "--no-log-prefix", "--no-log-timestamps"]  # its timing lines then start with MARK_PREFIX, as the probe matches
        for key, value in case.settings:
            if key in SERVER_SETTINGS:
                argv += [SERVER_SETTINGS[key], flag_value(value)]
        return argv

    def parse(self, case: Case, completed: Completed, marks: Sequence[Mark] = ()) -> EngineResult:
        """A server's output alone holds no figure: its case is parsed by its `ServerRun`."""
        raise EngineOutputError(f"{case.label}: a server case is measured by its client (Server.client), not from output")

    def client(self, case: Case, driver: Driver, argv: Sequence[str], timeout_s: float,
               inputs: Mapping[str, str] | None = None) -> ServerRun:
        return ServerRun(case, driver, int(argv[argv.index("--port") + 1]), timeout_s, inputs)


def request_windows(marks: Sequence[Mark], first: int | None = None) -> tuple[tuple[Window, ...], int]:
    """The merged windows of the requests' `total time` marks (the `first` of them only: the
    greedy check's requests, which come after the timed ones, are in no window), and the tokens
    they processed."""
    spans, tokens = [], 0
    timed = sorted(((t, match) for t, text in marks if (match := _TOTAL.search(text))), key=lambda m: m[0])[:first]
    for t, match in timed:
        seconds = float(match.group(1)) / 1000
        spans.append((t - seconds, t))
        tokens += int(match.group(2))
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((start, end - start) for start, end in merged), tokens


class ServerRun:
    """The host side of one server case: started when the server's process is (`start`),
    finished after it exits (`finish`), then parsed into the case's result (`parse`)."""

    def __init__(self, case: Case, driver: Driver, port: int, timeout_s: float, inputs: Mapping[str, str] | None = None) -> None:
        self.case, self.driver, self.port, self.timeout_s = case, driver, port, timeout_s
        # the greedy check's host reference (a JSON file on the host), or why there is none
        self.greedy_reference = (inputs or {}).get("greedy")
        self.greedy_error = (inputs or {}).get("greedy_missing") or (None if self.greedy_reference else "no host reference was given")
        self.greedy: dict[str, Any] | None = None
        self.gone = threading.Event()  # the server's process has ended
        self.streams: list[Stream] = []
        self.span = (0.0, 0.0)
        self.props: dict[str, Any] = {}
        self.error: str | None = None
        self.left_running: str | None = None
        self._pid: int | None = None
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._pid = pid
        self._thread = threading.Thread(target=self._drive, name=f"serve-{self.case.key[:8]}", daemon=True)
        self._thread.start()

    def _drive(self) -> None:
        try:
            with self.driver.forward(self.port) as local:
                endpoint = Endpoint(f"http://127.0.0.1:{local}", timeout_s=self.timeout_s)
                if not wait_until(lambda: healthy(endpoint), timeout_s=min(self.timeout_s, HEALTH_TIMEOUT_S), stop=self.gone):
                    self.error = "the server never reported healthy" if not self.gone.is_set() else "the server exited before it was healthy"
                    return
                self.props = _get_json(endpoint, "/props")
                request = Request(prompt_ids(endpoint, self.case.n_prompt), self.case.n_gen)
                self.streams, *span = run_streams(endpoint, request, concurrency=case_value(self.case, "concurrency"),
                                                  requests=case_value(self.case, "requests"), stop=self.gone)
                self.span = (span[0], span[1])
                self._greedy(endpoint)
        except (DriverError, httpx.HTTPError, ValueError, KeyError, TypeError) as exc:  # KeyError, TypeError: a /tokenize answer not as documented
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._stop()

    def _greedy(self, endpoint: Endpoint) -> None:
        """The greedy check, after the timed requests (outside every window); a failure of it
        leaves its figures missing with the reason, not the case failed."""
        if self.gone.is_set() or self.greedy_error:
            return
        try:
            reference = json.loads(Path(str(self.greedy_reference)).read_text())
            self.greedy = {**greedy.check(endpoint, reference), "reference": reference}
        except (*greedy.GREEDY_ERRORS, OSError) as exc:
            self.greedy_error = f"the greedy check failed: {type(exc).__name__}: {exc}"

    def _stop(self) -> None:
        """SIGTERM the server itself (it finishes its requests and exits 0; the probe above it
        then records its exit), SIGKILL if it lingers."""
        if self._pid is None or self.gone.is_set():
            return
        try:
            self._signal("TERM")
            if not self.gone.wait(STOP_GRACE_S):
                self._signal("KILL")
        except DriverError:
            pass  # the device is gone; the runner finds out from the process itself

    def _signal(self, signal: str) -> None:
        """Send `signal` to the llama-server among the started process and its descendants: the
        process the driver reports is the probe (local, adb) or the shell running it (ssh), and
        the probe would pass a signal on, so the server is found by its name, as the device sees it."""
        self.driver.run(["sh", "-c", _SIGNAL_SERVER, str(self._pid), "llama-server", signal], timeout=30)

    def finish(self) -> None:
        """The process has ended: stop the client, then check nothing of it is left running."""
        self.gone.set()
        if self._thread is not None:
            self._thread.join()
        if self._pid is not None:
            try:
                alive = self.driver.run(["kill", "-0", str(self._pid)], timeout=30).ok
            except DriverError:
                return
            if alive:
                self.left_running = f"process {self._pid} was still running after the case; killed"
                self.driver.run(["kill", "-KILL", str(self._pid)], timeout=30)

    def parse(self, case: Case, completed: Completed, marks: Sequence[Mark] = ()) -> EngineResult:
        tail = completed.stderr_tail(15)
        if self.left_running:
            raise EngineOutputError(f"{self.left_running}; stderr tail:\n{tail}")
        if self.error:
            raise EngineOutputError(f"{self.error}; server stderr tail:\n{tail}")
        failed = [s for s in self.streams if s.error]
        if not self.streams or len(failed) == len(self.streams):
            said = failed[0].error if failed else "no request was sent"
            raise EngineOutputError(f"every request failed ({said}); server stderr tail:\n{tail}")
        metrics = stream_metrics(self.streams, *self.span, prompt_tokens=case.n_prompt, tokens=case.n_gen)
        windows, tokens = request_windows(marks, len(self.streams))
        no_window = None if windows else "no request timing line of llama-server was stamped (the sampler stamps none without the probe)"
        short = [{"request": s.index, "tokens": s.tokens} for s in self.streams if s.error is None and s.tokens < case.n_gen]
        effective: dict[str, Any] = {"concurrency": case_value(case, "concurrency"), "requests": case_value(case, "requests"),
                                     "total_slots": self.props.get("total_slots"),
                                     "prompt_tokens_server": sorted({s.prompt_tokens for s in self.streams if s.prompt_tokens is not None})}
        if short:
            effective["streams_ended_early"] = short
        if failed:
            effective["requests_failed"] = [{"request": s.index, "error": s.error} for s in failed]
        metrics += greedy.metrics(self.greedy, self.greedy_error or "the server stopped before the greedy check")
        build = self.props.get("build_info")
        raw = [{"props": _props_summary(self.props)}, *({"stream": s.to_json()} for s in self.streams)]
        if self.greedy:
            raw.append({"greedy": self.greedy})
        return EngineResult(metrics=metrics, windows=windows, tokens=tokens, no_window=no_window, raw=raw,
                            build=f"llama.cpp {build}" if build else None, effective=effective)


def healthy(endpoint: Endpoint) -> bool:
    """Whether `/health` answers 200 (llama-server: 503 while loading), asked with a short timeout:
    something else on the port that accepts and never answers must not hold the case."""
    try:
        with replace(endpoint, timeout_s=HEALTH_POLL_TIMEOUT_S).client() as client:
            return client.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


def _get_json(endpoint: Endpoint, path: str) -> dict[str, Any]:
    """A JSON object from the server, or {} where it has none there."""
    try:
        with endpoint.client() as client:
            answer = client.get(path)
        value = answer.json() if answer.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _props_summary(props: Mapping[str, Any]) -> dict[str, Any]:
    """What llama-server says about itself, without the chat template (long, and not a fact of the run)."""
    return {k: v for k, v in props.items() if k not in ("chat_template", "chat_template_tool_use")}


def prompt_ids(endpoint: Endpoint, n: int) -> list[int]:
    """`n` token ids of plain English, from the server's own tokenizer (`/tokenize`): a prompt
    of exactly `n` tokens whatever the model, sent as ids so the server cannot re-tokenize it."""
    with endpoint.client() as client:
        answer = client.post("/tokenize", json={"content": _FILLER * 4, "add_special": False})
        answer.raise_for_status()
    ids = [int(t) for t in answer.json()["tokens"]]
    if not ids:
        raise ValueError("the server's /tokenize returned no tokens")
    return (ids * (n // len(ids) + 1))[:n]
