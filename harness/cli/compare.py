"""`edgebench compare`, `report` and `claims`: stored runs side by side, as HTML, against published figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from harness.cli import views
from harness.cli.common import EXIT_FAILED, FormatOpt, JsonOpt, ResultsOpt, StoreOpt, open_store, out
from harness.cli.results import write_report


def compare(
    run_a: str = typer.Argument(..., help="Baseline run (id, prefix or 'latest')."),
    run_b: str = typer.Argument(..., help="Run to compare with the baseline."),
    threshold: float = typer.Option(5.0, help="Regression threshold in percent: flagged when the whole 95% interval is beyond it."),
    min_effect: float = typer.Option(2.0, help="Smallest change in percent that earns a faster/slower verdict."),
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
    fmt: str = FormatOpt,
) -> None:
    """B/A per case with 95% intervals and verdicts; exits 1 when a regression is flagged."""
    from harness.analysis.tables import tidy_frame
    from harness.analysis.compare import CompareSettings, compare_frames

    store = open_store(results, store_url)
    a, b = store.run(run_a).id, store.run(run_b).id
    rows = compare_frames(tidy_frame(store, [a]), tidy_frame(store, [b]), CompareSettings(threshold / 100, min_effect / 100))
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in rows]))
    else:
        views.show(out, views.compare_grid(a, b, rows, threshold), fmt)
        views.show_lines(out, [f"differs {note}" for note in sorted({d for r in rows for d in r.differs})], fmt, "yellow")
        views.show_lines(out, [f"{case}: {note}" for case, note in dict.fromkeys((r.case, n) for r in rows for n in r.contended)], fmt, "yellow")
        for side, run_id in (("A", a), ("B", b)):
            views.show_quality(out, store, run_id, fmt, f"{side}: ")
        views.show_roofline(out, store, [a, b], fmt)
    if any(r.regression for r in rows):
        raise typer.Exit(EXIT_FAILED)


def report(
    runs: list[str] = typer.Argument(None, help="Run ids or prefixes (default: the latest run)."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file to write."),
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
) -> None:
    """Write one self-contained HTML report of stored runs."""
    store = open_store(results, store_url)
    write_report(store, [store.run(r).id for r in (runs or ["latest"])], output)


def claims(
    run: Optional[str] = typer.Option(None, "--run", help="Check against this run only (default: the latest run of each device and model)."),
    claims_dir: Optional[Path] = typer.Option(None, "--claims", help="Folder of claim TOML files (default: the ones edgebench ships)."),
    results: Optional[Path] = ResultsOpt,
    store_url: Optional[str] = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Every claim, tested or not, as JSON."),
    fmt: str = FormatOpt,
) -> None:
    """Published figures against stored runs: measured / claimed, with every differing condition
    named; the claims no stored run tests are one line saying which devices and models would."""
    from harness.analysis.claims import CLAIMS_DIR, check_claims, load_claims, ratio_checks_for

    store = open_store(results, store_url)
    loaded = load_claims(claims_dir or CLAIMS_DIR)
    run_ids = [store.run(run).id] if run else None
    checks = check_claims(store, loaded, run_ids)
    # ratio claims need a sweep's base and variants: every stored run unless one is named
    ratios = ratio_checks_for(store, loaded, run_ids or [r.id for r in store.runs()])
    if as_json:
        out.print_json(json.dumps([c.to_json() for c in checks] + [c.to_json() for c in ratios]))
        return
    views.show(out, views.claims_grid(checks), fmt)
    views.show_lines(out, [c.describe() for c in ratios], fmt)
