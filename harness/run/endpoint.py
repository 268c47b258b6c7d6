"""A run against a model server someone else runs (`edgebench run --endpoint URL --served-model NAME`):
Ollama, LM Studio, vLLM, MLC, TensorRT-LLM, llama-server on another machine.

The suite's `[[serve]]` cases are sent from here with the same streaming client as the server
engine's, so TTFT, inter-token latency and tok/s mean the same; every device figure (memory,
power, energy, heat) is stored missing with the reason "external endpoint", since nothing of
ours runs there. What the server says about itself (`/v1/models`, llama-server's `/props`,
Ollama's `/api/version` and `/api/show`) is the run's device facts, and its own timings
(llama-server `timings`, Ollama's durations) are stored raw and give the prefill figure.

Everything that can be wrong with the endpoint (refused, silent, 401, 404, 500, another API, a
certificate that does not verify, a model it does not serve, a key variable that is unset) is
found by `open_endpoint` before the run is recorded: one line naming the endpoint without any
credential, exit 2. The key is read from the environment variable named, sent as a bearer
token, and kept nowhere else: not in the options stored with the run, not in any message.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from harness import __version__
from harness.engines import greedy
from harness.engines.server import CASE_KEYS, case_value, prompt_ids
from harness.engines.streams import Endpoint, Request, run_streams, stream_metrics
from harness.errors import EdgebenchError
from harness.plan.planner import build_plan
from harness.plan.suites import Suite, load_suite
from harness.records import Case, DeviceFacts, Metric, now_iso
from harness.run.runner import Step, StepResult, resumable
from harness.store.db import ExecutionRaw, Store
from harness.telemetry.missing import MissingTelemetry

REASON = "external endpoint"
# the greedy check's reference is llama.cpp on the host for the same GGUF, which a served model name does not give
NO_GREEDY = "external endpoint: no GGUF of the served model to compute the host greedy reference from"
CHECK_TIMEOUT_S = 15.0
_WORDS = "the quick brown fox jumps over the lazy dog while rain falls on the quiet valley".split()


@dataclass(frozen=True)
class EndpointOptions:
    """What `--endpoint` and its options ask for; the key is named, never held."""

    url: str
    served_model: str
    api_key_env: str | None = None
    ca_cert: str | None = None


@dataclass(frozen=True)
class OpenEndpoint:
    """An endpoint that answered as the API it was taken for: where to send, what it said about itself."""

    endpoint: Endpoint
    shown: str  # the URL as shown and stored: never a credential
    facts: dict[str, Any]


def shown_url(url: str) -> str:
    """The URL without user, password, query or fragment: what messages and the store show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def open_endpoint(options: EndpointOptions, *, timeout_s: float = CHECK_TIMEOUT_S) -> OpenEndpoint:
    """Check the endpoint before anything is recorded; raises EdgebenchError (exit 2) naming it."""
    parts = urlsplit(options.url)
    shown = shown_url(options.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EdgebenchError(f"endpoint {shown or options.url!r}: expected an http:// or https:// URL")
    if parts.username or parts.password:
        raise EdgebenchError(f"endpoint {shown}: put no credentials in the URL; name the variable that holds the key with --api-key-env")
    headers = {}
    if options.api_key_env:
        key = os.environ.get(options.api_key_env)
        if not key:
            raise EdgebenchError(f"endpoint {shown}: --api-key-env {options.api_key_env}: that environment variable is not set")
        headers["Authorization"] = f"Bearer {key}"
    verify: Any = True
    if options.ca_cert:
        try:
            verify = ssl.create_default_context(cafile=options.ca_cert)
        except (OSError, ssl.SSLError) as exc:
            raise EdgebenchError(f"endpoint {shown}: --ca-cert {options.ca_cert}: not a readable CA certificate ({exc})") from None
    endpoint = Endpoint(shown, headers=headers, verify=verify, timeout_s=timeout_s)
    try:
        with endpoint.client() as client:
            facts = _ollama_facts(client, options.served_model) or _openai_facts(client, options.served_model, shown)
    except httpx.HTTPError as exc:
        raise EdgebenchError(f"endpoint {shown}: {_describe(exc, timeout_s)}") from None
    api = "ollama" if "ollama_version" in facts else "openai"
    return OpenEndpoint(Endpoint(shown, api, headers, verify), shown, {"api": api, **facts})


def _describe(exc: httpx.HTTPError, timeout_s: float) -> str:
    """One line for a transport failure, without the request (whose headers hold the key)."""
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout_s:g} s"
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc.__context__, ssl.SSLCertVerificationError):
        return "its TLS certificate does not verify (a private CA: pass --ca-cert PATH)"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({text or 'connection refused'})"
    return f"{type(exc).__name__}: {text}"


def _status_problem(answer: httpx.Response, path: str) -> str:
    if answer.status_code in (401, 403):
        return f"{path} answered {answer.status_code} ({'unauthorized' if answer.status_code == 401 else 'forbidden'}): check the key (--api-key-env)"
    if answer.status_code == 404:
        return f"{path} answered 404: not an OpenAI-compatible API (nor Ollama's)"
    return f"{path} answered {answer.status_code}: {answer.text.strip()[:200]}"


def _ollama_facts(client: httpx.Client, model: str) -> dict[str, Any] | None:
    """Ollama's own facts (`/api/version`, `/api/show` of the model), or None where it is not Ollama."""
    answer = client.get("/api/version")
    if answer.status_code != 200:
        return None
    try:
        version = answer.json().get("version")
    except ValueError:
        return None
    if not version:
        return None
    shown = client.post("/api/show", json={"model": model})
    if shown.status_code == 404:
        raise EdgebenchError(f"endpoint {client.base_url}: Ollama {version} has no model {model!r} (ollama pull {model})")
    details = shown.json() if shown.status_code == 200 else {}
    return {"ollama_version": version, "model": {k: details[k] for k in ("details", "model_info") if k in details}}


def _openai_facts(client: httpx.Client, model: str, shown: str) -> dict[str, Any]:
    """`/v1/models` (the model must be among them) and llama-server's `/props` where it has one."""
    answer = client.get("/v1/models")
    if answer.status_code != 200:
        raise EdgebenchError(f"endpoint {shown}: {_status_problem(answer, '/v1/models')}")
    try:
        listed = answer.json()["data"]
        ids = [str(m["id"]) for m in listed]
    except (ValueError, KeyError, TypeError):
        raise EdgebenchError(f"endpoint {shown}: /v1/models is not an OpenAI model list: {answer.text.strip()[:200]}") from None
    if model not in ids:
        raise EdgebenchError(f"endpoint {shown}: it serves no model {model!r}; it lists {', '.join(ids) or 'none'}")
    facts: dict[str, Any] = {"models": [m for m in listed if m.get("id") == model]}
    props = client.get("/props")
    if props.status_code == 200:
        try:
            value = props.json()
        except ValueError:
            value = None
        if isinstance(value, dict):
            facts["props"] = {k: v for k, v in value.items() if k not in ("chat_template", "chat_template_tool_use")}
    return facts


def endpoint_prompt(endpoint: Endpoint, n: int) -> tuple[list[int] | str, str]:
    """Exactly `n` token ids where the server tokenizes for us (llama-server's `/tokenize`), else
    a text of `n` words (the server's `usage` then says how many tokens it was): (prompt, how)."""
    if endpoint.api == "openai":
        try:
            return prompt_ids(endpoint, n), f"{n} token ids from the server's /tokenize"
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(n)), f"text of {n} words (the server's usage counts its tokens)"


def plan_endpoint_cases(suite: Suite) -> tuple[list[Case], list[tuple[str, str]]]:
    """The suite's serve cases (their threads and other device settings mean nothing here, and are
    dropped) and the rest, skipped: an endpoint only answers requests."""
    plan = build_plan(suite, context_length=None, host=False)
    cases, skipped = [], list(plan.skipped)
    for case in plan.cases:
        if case.kind != "serve":
            skipped.append((case.label, f"{REASON}: only [[serve]] cases run against a server"))
        elif (kept := replace(case, settings=tuple((k, v) for k, v in case.settings if k in CASE_KEYS))) not in cases:
            cases.append(kept)
    return cases, skipped


def run_endpoint(store: Store, options: EndpointOptions, suite_spec: str, callbacks: Any, repetitions: int | None = None) -> tuple[str, list[StepResult]]:
    """Check the endpoint, record the run, send every serve case's requests `repetitions` times."""
    suite = load_suite(suite_spec).with_overrides(repetitions)
    cases, skipped = plan_endpoint_cases(suite)
    if not cases:
        raise EdgebenchError(f"suite {suite.name} has no [[serve]] case: an endpoint only answers requests")
    opened = open_endpoint(options)
    for label, reason in skipped:
        callbacks.note(f"skipped {label}: {reason}")
    facts = asdict(DeviceFacts(name=opened.shown, driver="endpoint", os=REASON, os_release="", arch="", cpu_model=REASON,
                               cores=0, ram_mb=0, extra={"server": opened.facts}))
    run_id = store.create_run(
        device=f"endpoint {opened.shown}", device_identity=f"endpoint:{opened.shown}", suite_name=suite.name, suite_text=suite.text,
        repetitions=suite.repetitions, timeout_s=suite.timeout_s, cases=cases,
        model_sha256=hashlib.sha256(f"{opened.shown}\0{options.served_model}".encode()).hexdigest(),
        model_info={"filename": options.served_model, "served_by": opened.shown}, runtime_key=None, runtime_manifest=None,
        facts=facts, command={"endpoint": opened.shown, "served_model": options.served_model, "suite": suite_spec,
                              "api_key_env": options.api_key_env, "ca_cert": options.ca_cert},
        version=__version__,
    )
    callbacks.begun(run_id)
    endpoint = Endpoint(opened.endpoint.base_url, opened.endpoint.api, opened.endpoint.headers, opened.endpoint.verify, suite.timeout_s)
    results = []
    with resumable(store, run_id):
        store.mark_running(run_id)
        todo = [(rep, case) for rep in range(suite.repetitions) for case in cases]
        for i, (rep, case) in enumerate(todo):
            step = Step(i, len(todo), case, rep)
            if callbacks.step_start:
                callbacks.step_start(step)
            results.append(_one(store, run_id, endpoint, options.served_model, step))
            if callbacks.step_result:
                callbacks.step_result(results[-1])
        failed = [r for r in results if r.status != "ok"]
        store.finish_run(run_id, "failed" if failed else "finished", f"{len(failed)} case(s) failed" if failed else None)
    return run_id, results


def _one(store: Store, run_id: str, endpoint: Endpoint, model: str, step: Step) -> StepResult:
    """One case's requests, stored as one execution whose device figures are missing."""
    case, started_at, began = step.case, now_iso(), time.monotonic()
    prompt, how = endpoint_prompt(endpoint, case.n_prompt)
    streams, first, last = run_streams(endpoint, Request(prompt, case.n_gen, model), concurrency=case_value(case, "concurrency"),
                                       requests=case_value(case, "requests"))
    failed = [s for s in streams if s.error]
    error = f"every request failed: {failed[0].error}" if len(failed) == len(streams) else None
    metrics = [] if error else stream_metrics(streams, first, last, prompt_tokens=case.n_prompt, tokens=case.n_gen)
    metrics += [Metric.missing(name, unit, REASON) for name, unit in MissingTelemetry.METRICS]
    metrics += greedy.metrics(None, NO_GREEDY)
    effective = {"concurrency": case_value(case, "concurrency"), "requests": case_value(case, "requests"), "prompt": how,
                 "prompt_tokens_server": sorted({s.prompt_tokens for s in streams if s.prompt_tokens is not None})}
    short = [{"request": s.index, "tokens": s.tokens} for s in streams if s.error is None and s.tokens < case.n_gen]
    if short:
        effective["streams_ended_early"] = short
    if failed:
        effective["requests_failed"] = [{"request": s.index, "error": s.error} for s in failed]
    raw = ExecutionRaw(argv=("POST", f"{endpoint.base_url}{'/api/generate' if endpoint.api == 'ollama' else '/v1/completions'}"),
                       records=tuple({"stream": s.to_json()} for s in streams), telemetry={"sampler": None, "reason": REASON},
                       effective=effective)
    wall = time.monotonic() - began
    status = "failed" if error else "ok"
    store.record_execution(run_id, case, step.rep, status=status, exit_code=None, wall_s=wall, started_at=started_at, error=error,
                           build=None, raw=raw, metrics=metrics)
    return StepResult(step, status, tuple(metrics), error, wall)
