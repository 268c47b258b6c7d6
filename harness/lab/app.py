"""The lab's Celery app: which broker, which queue a device has, and the settings every lab
process shares (JSON only, late acknowledgement, one message at a time).

A broker message carries a job id and nothing else; what to run lives in the store
(`jobs`), so a message that is lost, doubled or replayed can never change what is measured.
The embedded broker's folder and files are the user's alone: its messages name the jobs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from celery import Celery

from harness.credentials import BROKER_ENV
from harness.paths import private_dir, private_file

__all__ = ["BROKER_ENV", "broker_url", "is_embedded", "make_app", "queue_for"]
# Above the longest job: Redis hands an unacknowledged message to another consumer only after
# this; a device queue has one consumer, which restores its own messages when it starts.
VISIBILITY_TIMEOUT_S = 12 * 3600
RUN_JOB = "edgebench.run_job"


def broker_url(results: Path, explicit: str | None = None) -> str:
    """`--broker`, else `$EDGEBENCH_BROKER`, else the embedded broker: kombu's SQLAlchemy
    transport on a SQLite file in the results folder (one host, no server)."""
    spec = explicit or os.environ.get(BROKER_ENV)
    if spec:
        return spec
    path = private_file(private_dir((Path(results) / "lab").resolve()) / "broker.sqlite")
    return f"sqla+sqlite:///{path}"


def is_embedded(url: str) -> bool:
    """kombu's SQLAlchemy transport may hand one message to two workers: one host only."""
    return url.startswith("sqla+")


def queue_for(identity: str) -> str:
    """The device's queue, named by its identity so two hosts' inventories meet on one queue."""
    return "edgebench.device." + re.sub(r"[^A-Za-z0-9_.:/-]", "_", identity)


def make_app(broker: str) -> Celery:
    from harness.lab import tasks

    app = Celery("edgebench", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],  # a pickled message is refused, never loaded
        task_ignore_result=True,  # the store holds every outcome
        task_acks_late=True,  # acknowledged when the job ends, so a dead worker's job comes back
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one message per device consumer: the next waits in the queue
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a restarted broker is waited for, forever
        # kombu's SQLAlchemy transport hands its options to create_engine: none for it.
        broker_transport_options={} if is_embedded(broker) else {"visibility_timeout": VISIBILITY_TIMEOUT_S, "polling_interval": 0.5},
        worker_enable_remote_control=not is_embedded(broker),  # no fanout on the SQLAlchemy transport
        worker_send_task_events=False,
    )
    app.task(name=RUN_JOB, bind=True, acks_late=True)(tasks.run_job)
    return app
