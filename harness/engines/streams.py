"""The streaming HTTP client of the server engine: requests as a server's users send them, timed
on arrival, and the figures users see (TTFT, inter-token latency, tok/s per stream and in all).

Two APIs: OpenAI's `/v1/completions` (llama-server, vLLM, LM Studio, MLC, TensorRT-LLM, and
Ollama's compatibility layer) and Ollama's own `/api/generate`, whose final line carries the
server's timings. Every request streams; each piece of output is stamped with this host's
monotonic clock as it arrives, so TTFT and the gaps between tokens include HTTP and scheduling,
which is what a server benchmark measures and what llama-bench never sees. Where the server
reports its own timings (llama-server's `timings`, Ollama's `*_duration`) they are kept raw
beside the client's and give the prefill figure; else prefill is prompt tokens / TTFT, under
another name, so the two are never mistaken for each other.

Requests run `concurrency` at a time on threads (httpx's blocking client: the figures are
arrival times, so a thread per stream is the plain way to keep them honest).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from harness.records import Metric
from harness.stats import percentile

APIS = ("openai", "ollama")
SEED = 42  # greedy decoding is deterministic anyway; a fixed seed keeps sampling servers comparable


@dataclass(frozen=True)
class Request:
    """One completion to ask for: a prompt (token ids where the server takes them, else text),
    `tokens` to generate (EOS ignored where the server allows), greedy."""

    prompt: Sequence[int] | str
    tokens: int
    model: str = ""


@dataclass(frozen=True)
class Stream:
    """One request as the client saw it, on this host's monotonic clock (seconds).

    `arrivals`: when each piece of output arrived (one per token for llama-server; a server
    that sends several tokens per piece gives fewer, and `tokens` says how many there were);
    `tokens`: generated tokens as the server counted them (usage / eval_count), else pieces;
    `timings`: the server's own timings for this request, raw; `error`: why it failed.
    """

    index: int
    sent: float
    arrivals: tuple[float, ...] = ()
    tokens: int = 0
    prompt_tokens: int | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    token_ids: tuple[int, ...] = ()
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return self.arrivals[0] - self.sent if self.arrivals else None

    @property
    def gaps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:])]

    @property
    def decode_tps(self) -> float | None:
        """Tokens after the first over the time after the first arrived (this stream's decode)."""
        if len(self.arrivals) < 2 or self.tokens < 2:
            return None
        span = self.arrivals[-1] - self.arrivals[0]
        return (self.tokens - 1) / span if span > 0 else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["arrivals"] = [round(t - self.sent, 6) for t in self.arrivals]  # relative: the host clock means nothing stored
        del out["sent"]
        return out


class ApiError(Exception):
    """The server answered, but not as the API it was taken for (a status, a body that is not it)."""


def openai_body(request: Request, *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAI `/v1/completions` streaming body. `ignore_eos`, `cache_prompt` and
    `return_tokens` are llama-server's (vLLM takes ignore_eos too; others ignore them): without
    cache_prompt=false a repeated prompt would skip its prefill from the second request on."""
    body: dict[str, Any] = {
        "prompt": list(request.prompt) if not isinstance(request.prompt, str) else request.prompt,
        "max_tokens": request.tokens, "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0, "seed": SEED, "ignore_eos": True, "cache_prompt": False, "return_tokens": True,
    }
    if request.model:
        body["model"] = request.model
    return body | dict(extra or {})


def ollama_body(request: Request) -> dict[str, Any]:
    """Ollama's native `/api/generate`: raw (no template), greedy, `num_predict` tokens."""
    if not isinstance(request.prompt, str):
        raise ApiError("Ollama takes text prompts only")
    return {"model": request.model, "prompt": request.prompt, "stream": True, "raw": True,
            "options": {"temperature": 0, "seed": SEED, "num_predict": request.tokens}}


def _sse_events(response: httpx.Response) -> Iterator[tuple[float, dict[str, Any]]]:
    """(arrival, JSON) of each `data:` event of a server-sent-event stream, until `[DONE]`."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        arrived = time.monotonic()
        yield arrived, _json(data)


def _ndjson(response: httpx.Response) -> Iterator[tuple[float, dict[str, Any]]]:
    for line in response.iter_lines():
        if line.strip():
            arrived = time.monotonic()
            yield arrived, _json(line)


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ApiError(f"a streamed line is not JSON: {text[:120]!r}") from None
    if not isinstance(value, dict):
        raise ApiError(f"a streamed line is not a JSON object: {text[:120]!r}")
    if "error" in value:
        raise ApiError(f"the server reported an error: {json.dumps(value['error'])[:300]}")
    return value


def read_openai(index: int, sent: float, events: Iterator[tuple[float, dict[str, Any]]]) -> Stream:
    """One `/v1/completions` stream -> Stream. A piece is a choice with text or token ids; the
    usage event (choices empty) and llama-server's `timings` come last."""
    arrivals: list[float] = []
    text: list[str] = []
    ids: list[int] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for arrived, event in events:
        for choice in event.get("choices") or []:
            piece_ids = choice.get("tokens") or []
            if choice.get("text") or piece_ids:
                arrivals.append(arrived)
                text.append(choice.get("text") or "")
                ids += [int(t) for t in piece_ids]
        usage = event.get("usage") or usage
        timings = event.get("timings") or timings
    tokens = int(usage.get("completion_tokens", len(ids) or len(arrivals)))
    prompt = usage.get("prompt_tokens")
    return Stream(index, sent, tuple(arrivals), tokens, int(prompt) if prompt is not None else None, timings, "".join(text), tuple(ids))


# Ollama's final line: counts, and durations in nanoseconds.
OLLAMA_TIMINGS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration")


def read_ollama(index: int, sent: float, events: Iterator[tuple[float, dict[str, Any]]]) -> Stream:
    """One Ollama `/api/generate` stream -> Stream; the `done` line's counts and durations are
    the server's own timings."""
    arrivals: list[float] = []
    text: list[str] = []
    final: dict[str, Any] = {}
    for arrived, event in events:
        if event.get("response"):
            arrivals.append(arrived)
            text.append(event["response"])
        if event.get("done"):
            final = event
    timings = {k: final[k] for k in OLLAMA_TIMINGS if k in final}
    tokens = int(final.get("eval_count", len(arrivals)))
    prompt = final.get("prompt_eval_count")
    return Stream(index, sent, tuple(arrivals), tokens, int(prompt) if prompt is not None else None, timings, "".join(text))


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: a base URL (no credentials in it), the API it speaks, its headers
    (an Authorization header is never stored or shown) and TLS verification."""

    base_url: str
    api: str = "openai"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    verify: Any = True  # True, or an ssl.SSLContext / CA bundle path for a private CA
    timeout_s: float = 300.0

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=dict(self.headers), verify=self.verify,
                            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 15.0)))


def send(endpoint: Endpoint, client: httpx.Client, index: int, request: Request,
         extra: Mapping[str, Any] | None = None) -> Stream:
    """One streaming request; a transport or API failure comes back as the stream's error."""
    path, body, reader, parse = (("/api/generate", ollama_body(request), _ndjson, read_ollama) if endpoint.api == "ollama"
                                 else ("/v1/completions", openai_body(request, extra=extra), _sse_events, read_openai))
    sent = time.monotonic()
    try:
        with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                response.read()
                raise ApiError(f"HTTP {response.status_code}: {response.text.strip()[:300]}")
            return parse(index, sent, reader(response))
    except (httpx.HTTPError, ApiError) as exc:
        return Stream(index, sent, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def run_streams(endpoint: Endpoint, request: Request, *, concurrency: int, requests: int,
                stop: threading.Event | None = None, extra: Mapping[str, Any] | None = None) -> tuple[list[Stream], float, float]:
    """`requests` requests, `concurrency` in flight at a time. Returns the streams (in request
    order), and the host times the first was sent and the last ended (the span of the aggregate
    figure). A set `stop` (the server died) sends no further request."""
    lock = threading.Lock()
    next_index = iter(range(requests))
    streams: list[Stream] = []

    def worker(client: httpx.Client) -> None:
        while stop is None or not stop.is_set():
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            done = send(endpoint, client, index, request, extra)
            with lock:
                streams.append(done)

    started = time.monotonic()
    with endpoint.client() as client, ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker, client) for _ in range(concurrency)]:
            future.result()
    return sorted(streams, key=lambda s: s.index), started, time.monotonic()


def _pcts(names: tuple[str, str, str], unit: str, values: Sequence[float], reason: str) -> list[Metric]:
    """p50, p90 and p99 of `values` under `names` (every value as the p50's samples), or all missing."""
    if not values:
        return [Metric.missing(n, unit, reason) for n in names]
    return [Metric(names[0], percentile(values, 50), unit, samples=tuple(values)),
            Metric(names[1], percentile(values, 90), unit), Metric(names[2], percentile(values, 99), unit)]


def server_prefill_tps(stream: Stream) -> float | None:
    """Prompt tokens per second as the server timed them: llama-server's `prompt_per_second`,
    or Ollama's prompt_eval_count over prompt_eval_duration (ns); None where it gives neither."""
    return _server_rate(stream.timings, "prompt_per_second", "prompt_eval_count", "prompt_eval_duration")


def server_decode_tps(stream: Stream) -> float | None:
    """Generated tokens per second as the server timed them (llama-server `predicted_per_second`,
    Ollama eval_count / eval_duration)."""
    return _server_rate(stream.timings, "predicted_per_second", "eval_count", "eval_duration")


def _server_rate(t: Mapping[str, Any], per_second: str, count: str, duration_ns: str) -> float | None:
    """A rate the server reported: its own per-second figure (llama-server), else a count over a
    duration in nanoseconds (Ollama); None where it gives neither."""
    if isinstance(t.get(per_second), (int, float)) and t[per_second] > 0:
        return float(t[per_second])
    if t.get(duration_ns) and t.get(count):
        return float(t[count]) / (float(t[duration_ns]) / 1e9)
    return None


def stream_metrics(streams: Sequence[Stream], started: float, ended: float, *, prompt_tokens: int, tokens: int) -> list[Metric]:
    """The client's figures over a case's requests, each measured or missing with its reason.

    ttft_ms (the median), ttft_ms_p90/p99 over requests; itl_ms_p50/p90/p99 over every gap between tokens of every
    stream; decode_tps: per stream (the median, every stream's as samples); agg_tps: all tokens
    generated over the case's span (first request sent to last stream ended); prefill_tps from
    the server's own timings, else prefill_tps_ttft (prompt tokens / TTFT, which includes HTTP
    and queueing); server_decode_tps where the server timed its decode. `streams_short`: how many
    streams ended before `tokens` (each stream's count is in the raw records); `requests_failed`.
    """
    good = [s for s in streams if s.error is None]
    none = "no request succeeded"
    ttft = [s.ttft_s * 1000 for s in good if s.ttft_s is not None]
    gaps = [g * 1000 for s in good for g in s.gaps_s]
    decode = [v for s in good if (v := s.decode_tps) is not None]
    metrics = (_pcts(("ttft_ms", "ttft_ms_p90", "ttft_ms_p99"), "ms", ttft, none)
               + _pcts(("itl_ms_p50", "itl_ms_p90", "itl_ms_p99"), "ms", gaps, "no stream had two tokens" if good else none))
    metrics.append(Metric("decode_tps", percentile(decode, 50), "tok/s", samples=tuple(decode)) if decode
                   else Metric.missing("decode_tps", "tok/s", "no stream had two tokens" if good else none))
    total = sum(s.tokens for s in good)
    metrics.append(Metric("agg_tps", total / (ended - started), "tok/s") if good and ended > started
                   else Metric.missing("agg_tps", "tok/s", none))
    server_pp = [v for s in good if (v := server_prefill_tps(s)) is not None]
    if server_pp:
        metrics.append(Metric("prefill_tps", percentile(server_pp, 50), "tok/s", samples=tuple(server_pp)))
    else:
        metrics.append(Metric.missing("prefill_tps", "tok/s", "the server reported no prompt timings" if good else none))
        from_ttft = [(s.prompt_tokens or prompt_tokens) / s.ttft_s for s in good if s.ttft_s]
        metrics.append(Metric("prefill_tps_ttft", percentile(from_ttft, 50), "tok/s", samples=tuple(from_ttft)) if from_ttft
                       else Metric.missing("prefill_tps_ttft", "tok/s", none))
    server_tg = [v for s in good if (v := server_decode_tps(s)) is not None]
    metrics.append(Metric("server_decode_tps", percentile(server_tg, 50), "tok/s", samples=tuple(server_tg)) if server_tg
                   else Metric.missing("server_decode_tps", "tok/s", "the server reported no generation timings" if good else none))
    metrics.append(Metric("streams_short", float(sum(1 for s in good if s.tokens < tokens)), "count"))
    metrics.append(Metric("requests_failed", float(len(streams) - len(good)), "count"))
    return metrics


def wait_until(check: Callable[[], bool], *, timeout_s: float, stop: threading.Event | None = None, poll_s: float = 0.2) -> bool:
    """Poll `check` until it is true (True), the timeout passes or `stop` is set (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        if check():
            return True
        time.sleep(poll_s)
    return False
