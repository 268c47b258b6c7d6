"""The driver contract: every driver behaves the same for run, spawn, push, pull, sha256,
exit codes, timeouts and the quoting of hostile arguments.

Adding a driver = one fixture returning a `DriverUnderTest`, and its name in DRIVER_FIXTURES:

    @pytest.fixture
    def ssh_contract(...) -> DriverUnderTest:
        return DriverUnderTest(driver=SshDriver(...), scratch="/home/bench/contract")

    DRIVER_FIXTURES = ["local_contract", "adb_contract", "ssh_contract"]
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from harness.drivers.base import Driver
from harness.drivers.local import LocalDriver
from tests.adb_emulator.fixtures import adb_driver
from tests.sshd_fixture import Sshd


@dataclass
class DriverUnderTest:
    driver: Driver
    scratch: str  # an empty folder on the device for this test (created by the fixture)

    def path(self, name: str) -> str:
        return str(PurePosixPath(self.scratch) / name)


@pytest.fixture
def local_contract(tmp_path: Path) -> DriverUnderTest:
    scratch = tmp_path / "device"
    scratch.mkdir()
    return DriverUnderTest(LocalDriver("local", workdir=str(scratch)), str(scratch))


@pytest.fixture
def adb_contract(adb_server, make_phone) -> DriverUnderTest:
    driver = adb_driver(adb_server, make_phone())
    scratch = "/data/local/tmp/contract"
    assert driver.run(["mkdir", "-p", scratch], timeout=30).ok
    return DriverUnderTest(driver, scratch)


@pytest.fixture(scope="module")
def contract_sshd(tmp_path_factory: pytest.TempPathFactory):
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.kill()


@pytest.fixture
def ssh_contract(contract_sshd, tmp_path: Path):
    driver = contract_sshd.driver()
    scratch = tmp_path / "board"
    scratch.mkdir()
    scratch.chmod(0o777)  # the board's user may not be the test's
    yield DriverUnderTest(driver, str(scratch))
    driver.close()


DRIVER_FIXTURES = ["local_contract", "adb_contract", "ssh_contract"]


@pytest.fixture(params=DRIVER_FIXTURES, ids=lambda name: name.removesuffix("_contract"))
def driver_factories(request: pytest.FixtureRequest) -> DriverUnderTest:
    """The driver under test, once per entry of DRIVER_FIXTURES."""
    return request.getfixturevalue(request.param)


HOSTILE = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "it's",
    '"double" \\ back\\slash',
    "two\nlines",
    "  spaces  ",
    "tab\there",
    "*",
    "ünïcödé ✓ 模型",
    "-n",
    "--",
    "",
    "$HOME ${PATH} %s",
    "a|b&c>d<e",
]


def test_hostile_arguments_arrive_unchanged(driver_factories):
    done = driver_factories.driver.run(["printf", "%s\\0", *HOSTILE], timeout=60)
    assert done.ok, done.stderr
    assert done.stdout.split("\0")[:-1] == HOSTILE


def test_exit_codes_and_separate_streams(driver_factories):
    driver = driver_factories.driver
    done = driver.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=60)
    assert (done.exit_code, done.stdout, done.stderr, done.ok) == (3, "out\n", "err\n", False)
    assert driver.run(["true"], timeout=60).exit_code == 0
    missing = driver.run(["edgebench-no-such-program"], timeout=60)
    assert missing.exit_code == 127 and not missing.ok


def test_env_and_cwd(driver_factories):
    done = driver_factories.driver.run(["sh", "-c", 'pwd; printf "%s" "$EDGE_VALUE"'], timeout=60,
                                       env={"EDGE_VALUE": "a b; $(id)"}, cwd=driver_factories.scratch)
    assert done.ok and done.stdout == f"{driver_factories.scratch}\na b; $(id)"


def test_timeout_kills_the_command_and_its_children(driver_factories):
    marker = driver_factories.path("late")
    done = driver_factories.driver.run(["sh", "-c", 'sleep 3; echo late > "$0"', marker], timeout=0.5)
    assert done.timed_out and not done.ok
    time.sleep(3.5)
    assert driver_factories.driver.sha256(marker) is None  # the shell never got past its sleep


def test_spawn_then_wait_or_kill(driver_factories):
    driver = driver_factories.driver
    process = driver.spawn(["sh", "-c", "echo started; exit 4"])
    done = process.wait(60)
    assert (done.exit_code, done.stdout) == (4, "started\n")
    sleeper = driver.spawn(["sleep", "30"])
    time.sleep(0.5)
    sleeper.kill()
    killed = sleeper.wait(30)
    assert not killed.ok


def test_push_pull_sha256_roundtrip_with_awkward_names(driver_factories, tmp_path):
    driver = driver_factories.driver
    local = tmp_path / "model.gguf"
    local.write_bytes(os.urandom(150_000))
    want = hashlib.sha256(local.read_bytes()).hexdigest()
    remote = driver_factories.path("dir with spaces/it's $(id) ünï.gguf")
    assert driver.sha256(remote) is None
    driver.push(local, remote)
    assert driver.sha256(remote) == want
    driver.push(local, remote)  # the same bytes again: skipped, still right
    assert driver.sha256(remote) == want
    listing = driver.run(["ls", "-a", str(PurePosixPath(remote).parent)], timeout=60).stdout.split("\n")
    assert [name for name in listing if name not in (".", "..", "")] == [PurePosixPath(remote).name]  # no temp file left
    back = tmp_path / "back.gguf"
    driver.pull(remote, back)
    assert back.read_bytes() == local.read_bytes()


def test_push_replaces_a_changed_file(driver_factories, tmp_path):
    driver = driver_factories.driver
    local = tmp_path / "llama-bench"
    local.write_bytes(b"version 1")
    remote = driver_factories.path("bin/llama-bench")
    driver.push(local, remote)
    local.write_bytes(b"version 2, longer")
    driver.push(local, remote)
    assert driver.sha256(remote) == hashlib.sha256(b"version 2, longer").hexdigest()


def test_identity_is_stable_and_names_its_source(driver_factories):
    """Asked twice, the same; labelled with where it came from. The loopback board is this
    machine, so over SSH it is the same device as `local` (one device, two names)."""
    driver = driver_factories.driver
    first = driver.identity()
    assert first == driver.identity()
    assert first.split(":", 1)[0] in ("dmi", "board", "machine-id", "hostname", "android") and first.split(":", 1)[1]
    if driver_factories.driver.__class__.__name__ == "SshDriver":
        assert first == LocalDriver().identity()
    if driver_factories.driver.__class__.__name__ == "AdbDriver":
        assert first.startswith("android:")


def test_forward_reaches_a_port_on_the_device_and_is_removed(driver_factories):
    _check_forward(driver_factories.driver)


def test_forward_works_in_a_process_holding_over_a_thousand_descriptors(driver_factories):
    """A lab worker or a long test session holds many descriptors; a tunnel that waits with
    select() dies on one numbered above 1023 (found in the full test run: the board's server
    never became healthy). Every forward must still carry its connections there."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the descriptor limit here is {hard}: cannot hold over 1023 open")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200) if hard == resource.RLIM_INFINITY else min(max(soft, 1200), hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]
    try:
        assert held[-1] > 1023
        _check_forward(driver_factories.driver)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _check_forward(driver) -> None:
    """`forward` gives a port here that reaches the device's loopback (every device of these
    fixtures shares this machine's network: the emulated phone through the real adb server's
    `forward` and the emulated adbd's `tcp:` service, the board through SSH direct-tcpip); two
    connections at once each get their own path; after the block the port reaches nothing."""
    import http.server
    import threading

    import httpx

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with driver.forward(server.server_address[1]) as local:
            with httpx.Client(base_url=f"http://127.0.0.1:{local}", timeout=10) as client:
                assert [client.get(f"/{i}").text for i in range(3)] == ["hello /0", "hello /1", "hello /2"]
            with httpx.Client(base_url=f"http://127.0.0.1:{local}", timeout=10) as a, httpx.Client(base_url=f"http://127.0.0.1:{local}", timeout=10) as b:
                assert (a.get("/a").text, b.get("/b").text) == ("hello /a", "hello /b")
    finally:
        server.shutdown()
        server.server_close()
    if local != server.server_address[1]:  # a forward of its own (adb, ssh): gone with the block
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{local}/", timeout=5)
