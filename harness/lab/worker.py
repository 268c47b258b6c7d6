"""`edgebench worker`: serve the devices of this host's inventory, one Celery worker process per
device, each consuming only that device's queue with concurrency 1 (solo pool). So a device
runs one job at a time whichever host or user submitted it, and a dead device worker is
restarted without touching the others.

The supervisor writes each device's heartbeat to the store (`lab status` shows a worker dead
when it stops) and restarts a device process that exits; a store that stops answering stops
the heartbeats, not the worker. Before consuming, a device process puts back its own queue's
unacknowledged messages (a job whose worker was killed): with Redis they would otherwise wait
for the visibility timeout, and no other consumer can hold them. It then queues again every job
of its device the store lists as not ended, since a broker that restarted without its data
holds none of them: a job whose message was not lost then has two, and the second finds it
ended (jobs are idempotent), so nothing runs twice.

`restore_unacked` reads kombu's Redis layout (the `unacked` hash, `QoS.restore_by_tag`), which
kombu does not publish as an API: tests/test_lab_faults.py fails, naming what changed, when a
kombu release moves it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.drivers.base import DriverError
from harness.errors import EdgebenchError
from harness.lab.app import BROKER_ENV, RUN_JOB, make_app, queue_for
from harness.lab.jobs import open_jobs, register_device, served_devices, store_outage
from harness.plan.inventory import DeviceSpec, load_inventory
from harness.records import now_iso
from harness.store.db import Store
from harness.store.location import STORE_ENV

HEARTBEAT_S = 5.0


@dataclass(frozen=True)
class Served:
    spec: DeviceSpec
    identity: str
    queue: str


def select_devices(inventory: Path, names: tuple[str, ...] = (), tags: tuple[str, ...] = ()) -> list[DeviceSpec]:
    devices = load_inventory(inventory)
    unknown = [n for n in names if n not in devices]
    if unknown:
        raise EdgebenchError(f"{', '.join(unknown)} not in inventory {inventory}; known: {', '.join(devices)}")
    chosen = [d for d in devices.values() if (not names or d.name in names) and (not tags or set(tags) & set(d.tags))]
    if not chosen:
        raise EdgebenchError(f"no device of {inventory} matches" + (f" the tags {', '.join(tags)}" if tags else ""))
    return chosen


def serve(inventory: Path, names: tuple[str, ...], broker: str, results: Path, store_url: str | None,
          say: Callable[[str], None], stop: threading.Event) -> None:
    """Run until `stop` is set: one device process per device, restarted when it exits."""
    specs = select_devices(inventory, names)
    started = now_iso()
    with Store(results, store_url) as store:
        served = _identities(store, specs, say)
        for device in served:
            register_device(store, device.identity, device.spec.name, device.queue, started)
            say(f"{device.spec.name}: queue {device.queue}")
        env = {**os.environ, BROKER_ENV: broker, **({STORE_ENV: store_url} if store_url else {})}
        children = {d.queue: _spawn(d, inventory, results, env) for d in served}
        answering = True
        try:
            while not stop.wait(HEARTBEAT_S):
                answering = _heartbeat(store, served, started, answering, say)
                for device in served:
                    code = children[device.queue].poll()
                    if code is not None:
                        say(f"{device.spec.name}: device worker exited ({code}); restarting it")
                        children[device.queue] = _spawn(device, inventory, results, env)
        finally:
            for child in children.values():
                child.send_signal(signal.SIGTERM)  # warm shutdown: the job running now finishes first
            for child in children.values():
                child.wait()


def _heartbeat(store: Store, served: list[Served], started: str, answering: bool, say: Callable[[str], None]) -> bool:
    """Write each device's heartbeat; whether the store answered. An outage is said once, and
    the device workers go on through it (their jobs wait for the store themselves)."""
    try:
        for device in served:
            register_device(store, device.identity, device.spec.name, device.queue, started)
    except Exception as exc:  # noqa: BLE001 - only a store outage is survived; anything else stops the worker
        if not store_outage(exc):
            raise
        if answering:
            say(f"the store {store.where} does not answer ({type(exc).__name__}); the device workers go on, heartbeats resume with it")
        return False
    if not answering:
        say(f"the store {store.where} answers again; heartbeats resumed")
    return True


def _identities(store: Store, specs: list[DeviceSpec], say: Callable[[str], None]) -> list[Served]:
    """Each device's identity, asked of the device; for one that does not answer, the identity
    this host served it under before (its queue may hold jobs), else it is not served."""
    known = {r["name"]: r["identity"] for r in served_devices(store) if r["host"] == socket.gethostname()}
    served = []
    for spec in specs:
        try:
            identity = spec.open().identity()
        except DriverError as exc:
            if spec.name not in known:
                say(f"{spec.name}: not served: {exc}")
                continue
            identity = known[spec.name]
            say(f"{spec.name}: does not answer ({exc}); serving its queue under the identity it had ({identity})")
        served.append(Served(spec, identity, queue_for(identity)))
    if not served:
        raise EdgebenchError("no device of the inventory can be served (see above)")
    return served


def _spawn(device: Served, inventory: Path, results: Path, env: dict[str, str]) -> subprocess.Popen:
    # The broker and store URLs (passwords) travel in the environment, never on a command line.
    argv = [sys.executable, "-m", "harness.lab.worker", device.queue, device.spec.name, device.identity, str(Path(inventory).resolve()),
            str(Path(results).resolve())]
    return subprocess.Popen(argv, env=env, stdout=sys.stderr.fileno())  # Celery's banner is not output


def restore_unacked(app, queues: list[str]) -> int:
    """Requeue (at the front) the unacknowledged Redis messages of these queues; other brokers
    give a dead consumer's messages back themselves. Returns how many were put back."""
    if not app.conf.broker_url.startswith(("redis://", "rediss://")):
        return 0
    restored = 0
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        for tag, raw in client.hgetall(channel.unacked_key).items():
            _message, _exchange, routing_key = json.loads(raw)
            if routing_key in queues:
                channel.qos.restore_by_tag(tag, client, leftmost=True)
                restored += 1
    return restored


def requeue_open_jobs(app, store: Store, identity: str, queue: str) -> int:
    """Publish the device's jobs the store lists as not ended; how many."""
    found = open_jobs(store, identity)
    for job in found:
        app.send_task(RUN_JOB, args=[job.id], queue=queue)
    return len(found)


def device_worker(queue: str, name: str, identity: str, inventory: str, results: str) -> None:
    """One device's Celery worker (this process), consuming its queue only."""
    from harness.lab import tasks

    context = tasks.WorkerContext(Path(results), os.environ.get(STORE_ENV), inventory, name, identity)
    tasks.configure(context)
    app = make_app(os.environ[BROKER_ENV])
    restored = restore_unacked(app, [queue])
    if restored:
        print(f"{name}: {restored} unacknowledged job(s) of a previous worker put back on {queue}", file=sys.stderr, flush=True)
    # A store that does not answer yet exits this process; the supervisor starts it again.
    with Store(context.results, context.store_url) as store:
        requeued = requeue_open_jobs(app, store, identity, queue)
    if requeued:
        print(f"{name}: {requeued} job(s) the store lists as not ended queued again on {queue}", file=sys.stderr, flush=True)
    app.worker_main(["worker", "-Q", queue, "-c", "1", "-P", "solo", "-n", f"{name}@{socket.gethostname()}",
                     "--without-gossip", "--without-mingle", "-l", "INFO"])


if __name__ == "__main__":
    device_worker(*sys.argv[1:6])


def start_embedded(inventory: Path, names: tuple[str, ...], results: Path, store_url: str | None, broker: str,
                   timeout_s: float = 120.0) -> subprocess.Popen:
    """`edgebench worker` as a child of `lab run` on one host (the embedded broker has no other
    workers); returns once it serves every device. Its own session: a Ctrl-C of `lab run`
    stops the waiting, not the jobs."""
    argv = [sys.executable, "-m", "harness", "worker", "--inventory", str(inventory), "--results", str(results)]
    if names:
        argv += ["--devices", ",".join(names)]
    env = {**os.environ, BROKER_ENV: broker, **({STORE_ENV: store_url} if store_url else {})}
    child = subprocess.Popen(argv, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    with Store(results, store_url) as store:
        while True:
            beating = {r["name"] for r in served_devices(store) if r["pid"] == child.pid}
            if set(names) <= beating:
                return child
            if child.poll() is not None:
                raise EdgebenchError(f"the lab's worker exited ({child.returncode}) before serving {', '.join(sorted(set(names) - beating))}")
            if time.monotonic() > deadline:
                child.terminate()
                raise EdgebenchError(f"the lab's worker did not serve {', '.join(sorted(set(names) - beating))} within {timeout_s:g} s")
            time.sleep(0.2)
