"""`edgebench run --endpoint`: a model server someone else runs. llama-cpp-python's own server (a
different HTTP stack from llama-server) for real; Ollama, which cannot be installed here, replayed
from its documented answers through the real parsing path; the failures an endpoint can show."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import EdgebenchError
from harness.run.endpoint import EndpointOptions, open_endpoint, shown_url

from .conftest import REPO
from .ports import free_port, http_serving
from .test_serve import OLLAMA_FINAL, OLLAMA_PIECE

KEY = "sk-edgebench-test-7f3a9c"  # what the key env var holds in these tests: must appear nowhere

SUITE = 'repetitions = 1\n[[serve]]\nprompt = 16\ntokens = 8\nconcurrency = [1, 2]\n[[prefill]]\nprompt = 16\n'


def edgebench(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO), **(env or {})})


# --- Ollama, replayed ----------------------------------------------------------------------------
# Answers from Ollama's API reference, https://github.com/ollama/ollama/blob/main/docs/api.md:
# `GET /api/version` ("Version"), `POST /api/show` ("Show Model Information", its `details`), and the
# streamed `POST /api/generate` of test_serve (the documented pieces and final object).
OLLAMA_VERSION = {"version": "0.5.1"}
OLLAMA_SHOW = {"details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"], "parameter_size": "8.0B",
                           "quantization_level": "Q4_0"}}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes: dict[tuple[str, str], tuple[int, list[bytes]]] = {}

    def _answer(self, method: str) -> None:
        if method == "POST":
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, lines = self.routes.get((method, self.path), (404, [b'{"error":"not found"}']))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in lines:
            time.sleep(0.005)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def log_message(self, *args) -> None:
        pass


def http_server(routes: dict[tuple[str, str], tuple[int, list[bytes]]], context: ssl.SSLContext | None = None):
    return http_serving(type("Routes", (_Handler,), {"routes": routes}), context)


def _json_line(value: dict) -> bytes:
    return json.dumps(value).encode() + b"\n"


OLLAMA_ROUTES = {
    ("GET", "/api/version"): (200, [_json_line(OLLAMA_VERSION)]),
    ("POST", "/api/show"): (200, [_json_line(OLLAMA_SHOW)]),
    ("POST", "/api/generate"): (200, [_json_line(OLLAMA_PIECE)] * 8 + [_json_line(OLLAMA_FINAL)]),
}


def test_ollama_replayed_as_an_endpoint(tmp_path) -> None:
    with http_server(OLLAMA_ROUTES) as url:
        run = edgebench("run", "--endpoint", url, "--served-model", "llama3.2", "--suite", _suite(tmp_path), "--results",
                        str(tmp_path / "r"), "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    facts = shown["run"]["facts"]
    assert facts["driver"] == "endpoint" and facts["extra"]["server"]["ollama_version"] == "0.5.1"
    assert facts["extra"]["server"]["model"]["details"]["quantization_level"] == "Q4_0"
    by = {(r["case"], r["metric"]): r for r in shown["summary"]}
    label = "serve p16+n8 [concurrency=2 requests=8]"
    assert by[(label, "prefill_tps")]["mean"] == pytest.approx(26 / 0.130079)  # the server's own durations
    assert by[(label, "server_decode_tps")]["mean"] == pytest.approx(259 / 4.23271)
    assert by[(label, "ttft_ms")]["mean"] > 0 and by[(label, "agg_tps")]["mean"] > 0
    assert by[(label, "peak_rss_mb")]["missing_reason"] == "external endpoint"
    assert by[(label, "energy_j")]["missing_reason"] == "external endpoint"
    assert by[(label, "greedy_exact_share")]["missing_reason"].startswith("external endpoint: no GGUF")
    assert "skipped prefill p16: external endpoint" in run.stderr


def _suite(tmp_path: Path) -> str:
    path = tmp_path / "serve.toml"
    path.write_text(SUITE)
    return str(path)


# --- what can be wrong with an endpoint: one line, exit 2, before the run -------------------------

def test_404_and_500_and_another_api_are_one_line(tmp_path) -> None:
    for routes, said in (({}, "/v1/models answered 404: not an OpenAI-compatible API"),
                         ({("GET", "/v1/models"): (500, [b"boom"])}, "/v1/models answered 500: boom"),
                         ({("GET", "/v1/models"): (200, [b'{"models": []}'])}, "is not an OpenAI model list")):
        with http_server(routes) as url:
            run = edgebench("run", "--endpoint", url, "--served-model", "m", "--suite", _suite(tmp_path), "--results",
                            str(tmp_path / "r"), cwd=tmp_path)
        assert run.returncode == 2 and run.stderr.strip().startswith(f"error: endpoint {url}: ") and said in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "r" / "runs").exists()


def test_refused_and_silent_endpoints() -> None:
    port = free_port()
    with pytest.raises(EdgebenchError, match=rf"^endpoint http://127.0.0.1:{port}: cannot connect"):
        open_endpoint(EndpointOptions(f"http://127.0.0.1:{port}", "m"))
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(EdgebenchError, match=r"no answer within 1 s"):
            open_endpoint(EndpointOptions(url, "m"), timeout_s=1)


def test_credentials_in_the_url_or_an_unset_key_variable_are_refused(monkeypatch) -> None:
    with pytest.raises(EdgebenchError) as refused:
        open_endpoint(EndpointOptions(f"http://me:{KEY}@127.0.0.1:9/v1", "m"))
    assert KEY not in str(refused.value) and "no credentials in the URL" in str(refused.value)
    assert shown_url(f"https://me:{KEY}@host.example:8443/base/?token={KEY}#x") == "https://host.example:8443/base"
    monkeypatch.delenv("EDGEBENCH_TEST_NO_KEY", raising=False)
    with pytest.raises(EdgebenchError, match="EDGEBENCH_TEST_NO_KEY: that environment variable is not set"):
        open_endpoint(EndpointOptions("http://127.0.0.1:9", "m", api_key_env="EDGEBENCH_TEST_NO_KEY"))


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, made here with `cryptography`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgebench test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_a_self_signed_certificate_fails_unless_its_ca_is_given(tmp_path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with http_server(OLLAMA_ROUTES, context) as url:
        with pytest.raises(EdgebenchError, match=rf"^endpoint {url}: its TLS certificate does not verify"):
            open_endpoint(EndpointOptions(url, "llama3.2"))
        opened = open_endpoint(EndpointOptions(url, "llama3.2", ca_cert=str(cert)))
    assert opened.facts["api"] == "ollama" and opened.shown == url


# --- llama-cpp-python's own server, for real ------------------------------------------------------

@pytest.fixture
def llama_cpp_server(host_runtime, default_model) -> Iterator[str]:
    """`python -m llama_cpp.server` on the default model, with the host runtime's libllama and an API key."""
    port = free_port()
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(host_runtime.root / "lib")}
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_model), "--model_alias", "smol",
                             "--port", str(port), "--n_ctx", "512", "--api_key", KEY],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_llama_cpp_python_server_as_an_endpoint_and_its_key_stays_secret(tmp_path, llama_cpp_server) -> None:
    args = ("run", "--endpoint", llama_cpp_server, "--served-model", "smol", "--suite", _suite(tmp_path), "--results", str(tmp_path / "r"))
    unauthorized = edgebench(*args, cwd=tmp_path)
    assert unauthorized.returncode == 2 and "/v1/models answered 401 (unauthorized)" in unauthorized.stderr
    run = edgebench(*args, "--api-key-env", "EDGEBENCH_TEST_KEY", "--json", cwd=tmp_path, env={"EDGEBENCH_TEST_KEY": KEY})
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    by = {(r["case"], r["metric"]): r for r in shown["summary"]}
    for concurrency, requests in ((1, 4), (2, 8)):
        label = f"serve p16+n8 [concurrency={concurrency} requests={requests}]"
        for name in ("ttft_ms", "itl_ms_p50", "decode_tps", "agg_tps", "prefill_tps_ttft"):
            assert by[(label, name)]["mean"] > 0, (label, name)
        assert by[(label, "prefill_tps")]["missing_reason"] == "the server reported no prompt timings"
        assert by[(label, "peak_rss_mb")]["missing_reason"] == "external endpoint"
    assert shown["run"]["facts"]["extra"]["server"]["models"][0]["id"] == "smol"
    # the key: in no output, no stored row, no file of the run
    assert KEY not in run.stdout + run.stderr + unauthorized.stdout + unauthorized.stderr
    for path in (tmp_path / "r").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
