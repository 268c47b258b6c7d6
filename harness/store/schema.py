"""The store's tables as the current code reads and writes them (SQLAlchemy Core).

A new store is created from these definitions in one step and stamped with SCHEMA_VERSION;
an older one is brought here by `migrations`. `tests/test_store.py` checks that both roads
end in the same schema, so a change here needs its migration beside it.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, Table, Text, UniqueConstraint

SCHEMA_VERSION = 6

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("id", Text, primary_key=True),
    Column("created_at", Text, nullable=False),
    Column("finished_at", Text),
    Column("status", Text, nullable=False),  # running | finished | failed | interrupted
    Column("device", Text, nullable=False),
    Column("suite_name", Text, nullable=False),
    Column("suite_text", Text, nullable=False),
    Column("repetitions", Integer, nullable=False),
    Column("timeout_s", Float, nullable=False),
    Column("model_sha256", Text, nullable=False),
    Column("runtime_key", Text),
    Column("facts_json", Text, nullable=False),
    Column("command_json", Text, nullable=False),
    Column("edgebench_version", Text, nullable=False),
    Column("note", Text),
    Column("device_identity", Text),  # drivers/identity.py; NULL for runs stored before it was
    Index("runs_by_device_suite", "device", "suite_name", "created_at"),
    Index("runs_by_identity", "device_identity", "suite_name", "created_at"),
    Index("runs_by_created", "created_at"),
)

models = Table("models", metadata, Column("sha256", Text, primary_key=True), Column("info_json", Text, nullable=False))

runtimes = Table("runtimes", metadata, Column("key", Text, primary_key=True), Column("manifest_json", Text, nullable=False))

cases = Table(
    "cases", metadata,
    Column("run_id", Text, ForeignKey("runs.id"), primary_key=True),
    Column("case_key", Text, primary_key=True),
    Column("position", Integer, nullable=False),
    Column("case_json", Text, nullable=False),
    Column("cores_json", Text),  # how the plan chose its threads on this device (harness.plan.cores); NULL: no choice
    Column("stop_json", Text),  # why a precision target stopped its rounds (harness.records.Stop); NULL: no target
)

executions = Table(
    "executions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Text, ForeignKey("runs.id"), nullable=False),
    Column("case_key", Text, nullable=False),
    Column("rep", Integer, nullable=False),  # which process repetition (round) of the case
    Column("status", Text, nullable=False),  # ok | failed | timeout | oom
    Column("exit_code", Integer),
    Column("wall_s", Float),
    Column("started_at", Text, nullable=False),
    Column("error", Text),
    Column("build", Text),
    Column("raw_json", Text, nullable=False),
    # The execution's identity: writing it again (a retry, a push) replaces, never duplicates.
    UniqueConstraint("run_id", "case_key", "rep"),
)

measurements = Table(
    "measurements", metadata,
    Column("execution_id", Integer, ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True),
    Column("metric", Text, primary_key=True),
    Column("value", Float),  # NULL: missing, with the reason beside it
    Column("unit", Text, nullable=False),
    Column("missing_reason", Text),
    Column("samples_json", Text, nullable=False),
)

# A run's files (raw stdout/stderr/JSONL, telemetry CSVs, facts, manifests), so a report built
# on any host has them: contents once per sha256 (zlib), named per run.
blobs = Table(
    "blobs", metadata,
    Column("sha256", Text, primary_key=True),
    Column("size", Integer, nullable=False),  # uncompressed bytes
    Column("data", LargeBinary, nullable=False),  # zlib
)

artifacts = Table(
    "artifacts", metadata,
    Column("run_id", Text, ForeignKey("runs.id"), primary_key=True),
    Column("path", Text, primary_key=True),  # relative to the run's folder, '/'-separated
    Column("sha256", Text, ForeignKey("blobs.sha256"), nullable=False),
)

# The lab (harness/lab): the devices workers serve, the jobs of each lab, who holds each
# device now, and the schedules beat fires. Broker messages carry only a job id; the rest is here.
lab_devices = Table(
    "lab_devices", metadata,
    Column("identity", Text, primary_key=True),  # drivers/identity.py: names the device's queue
    Column("name", Text, nullable=False),  # the inventory name on the worker's host
    Column("queue", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Text, nullable=False),
    Column("heartbeat_at", Text, nullable=False),
)

lab_jobs = Table(
    "lab_jobs", metadata,
    Column("id", Text, primary_key=True),
    Column("lab_id", Text, nullable=False),
    Column("device", Text, nullable=False),
    Column("identity", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("options_json", Text, nullable=False),  # run.session.RunOptions, inventory left to the worker
    Column("suite_text", Text, nullable=False),
    Column("run_id", Text, nullable=False),  # chosen at submit: a redelivered job resumes this run
    Column("status", Text, nullable=False),  # queued | running | done | failed | unreachable | cancelled
    Column("attempts", Integer, nullable=False),
    Column("retries", Integer, nullable=False),
    Column("backoff_s", Float, nullable=False),
    Column("host", Text),
    Column("pid", Integer),
    Column("submitted_at", Text, nullable=False),
    Column("started_at", Text),
    Column("finished_at", Text),
    Column("error", Text),
    Column("cancel", Integer, nullable=False),  # 1: asked to stop; the job's worker kills its benchmark
    Index("lab_jobs_by_lab", "lab_id"),
)

leases = Table(
    "leases", metadata,
    Column("identity", Text, primary_key=True),
    Column("holder", Text, nullable=False),  # who and what, never a command line: "run R by user" or "lab job J by user"
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("since", Text, nullable=False),
    Column("heartbeat_at", Text, nullable=False),
)

lab_schedules = Table(
    "lab_schedules", metadata,
    Column("id", Text, primary_key=True),
    Column("cron", Text),  # five crontab fields, or NULL with every_s
    Column("every_s", Float),
    Column("request_json", Text, nullable=False),  # lab.jobs.LabRequest
    Column("created_at", Text, nullable=False),
    Column("last_fired_at", Text),
)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))
