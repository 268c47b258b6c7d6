"""A precision target: further rounds for the cases whose figure is not yet known well enough.

After the suite's fixed rounds, each case's primary figure (prefill/decode tok/s, TTFT) is
summarised over its successful processes with the interval the summary table shows
(`harness.stats.summarize`: Student-t, 95%). A case whose half-width is more than the
target share of its mean gets one more process in the next round, interleaved with the other
unfinished cases, until it is within target or has `max_repetitions` processes. Every case's
verdict is stored with it, so the table can say why it stopped and a resumed run goes on from
the stored processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from harness.plan.planner import RunPolicy
from harness.records import Case, Stop
from harness.stats import summarize
from harness.store.db import Store


@dataclass(frozen=True)
class Progress:
    """What one case has so far: its primary figure per successful process, and its processes."""

    values: tuple[float, ...]
    processes: int
    next_rep: int
    last_ok: bool


def verdict(case: Case, progress: Progress, policy: RunPolicy) -> Stop | None:
    """Why the case needs no more rounds, or None when it gets another one."""
    assert policy.precision is not None, "a verdict needs a precision target"

    def stop(reason: str, half_width: float | None = None) -> Stop:
        return Stop(case.key, reason, case.primary_metric, policy.precision, policy.max_repetitions, len(progress.values),
                    progress.processes, half_width)

    if progress.processes and not progress.last_ok:
        return stop("failed")  # more rounds would not fix it; --resume retries a failed fixed round
    if progress.processes and not progress.values:
        return stop("no-figure")
    half_width = relative_half_width(progress.values)
    if half_width is not None and half_width <= policy.precision:
        return stop("within-target", half_width)
    if progress.processes >= policy.max_repetitions:
        return stop("max-repetitions", half_width)
    return None


def relative_half_width(values: Sequence[float]) -> float | None:
    """The 95% CI half-width over the mean (None with fewer than two values or a zero mean)."""
    if len(values) < 2:
        return None
    summary = summarize(values)
    if summary.ci_half_width is None or summary.mean == 0:
        return None
    return summary.ci_half_width / abs(summary.mean)


def further_rounds(store: Store, run_id: str, policy: RunPolicy) -> Iterator[list[tuple[Case, int]]]:
    """Rounds of (case, rep) for the cases not yet within target, judged again from the store
    after each round is run; every verdict reached is stored with its case."""
    cases = [case for case in store.cases(run_id) if not case.runs_once]
    while True:
        progress = progress_of(store, run_id, cases)
        todo = []
        for case in cases:
            stop = verdict(case, progress[case.key], policy)
            if stop is None:
                todo.append((case, progress[case.key].next_rep))
            else:
                store.set_stop(run_id, stop)
        if not todo:
            return
        yield todo


def progress_of(store: Store, run_id: str, cases: list[Case]) -> dict[str, Progress]:
    """Each case's stored processes (any status) and successful primary figures, in round order."""
    metric = {case.key: case.primary_metric for case in cases}
    reps: dict[str, dict[int, str]] = {case.key: {} for case in cases}
    for execution in store.executions(run_id):
        if execution.case_key in reps:
            reps[execution.case_key][execution.rep] = execution.status
    values: dict[str, list[float]] = {case.key: [] for case in cases}
    for row in store.measurements([run_id]):
        if row["case_key"] in metric and row["metric"] == metric[row["case_key"]] and row["status"] == "ok" and row["value"] is not None:
            values[row["case_key"]].append(float(row["value"]))
    return {
        key: Progress(tuple(values[key]), len(done), max(done, default=-1) + 1, not done or done[max(done)] == "ok")
        for key, done in reps.items()
    }
