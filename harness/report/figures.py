"""matplotlib figures rendered to base64 PNG so the HTML needs no other file or network."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display: reports are built on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

_PANELS = (("prefill_tps", "Prefill"), ("decode_tps", "Decode"))
_PANEL_TITLES = dict(_PANELS)
ENGINE_NAMES = {"llamabench": "llama-bench", "pyllama": "llama-cpp-python", "server": "llama-server"}


def throughput_vs_context(summary: pd.DataFrame) -> str | None:
    """Tokens/s against context length, prefill and decode side by side, 95% CI as error bars."""
    return _versus_context(summary, _PANELS, "tokens/s")


def memory_vs_context(summary: pd.DataFrame) -> str | None:
    """Peak memory against context: total, and its anonymous (KV cache, buffers) and
    file-backed (mmap'd weights) parts."""
    panels = (("peak_rss_mb", "Peak RSS"), ("peak_rss_anon_mb", "Anonymous RSS"), ("peak_rss_file_mb", "File-backed RSS"))
    return _versus_context(summary[summary["engine"] == "llamabench"] if "engine" in summary else summary, panels, "MB")


def _versus_context(summary: pd.DataFrame, panels: tuple[tuple[str, str], ...], unit: str) -> str | None:
    present = [(m, title) for m, title in panels if m in set(summary.get("metric", [])) and (summary.loc[summary["metric"] == m, "n"] > 0).any()]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(5.5 * len(present), 3.8), squeeze=False)
    for ax, (metric, title) in zip(axes[0], present):
        data = summary[(summary["metric"] == metric) & (summary["n"] > 0)]
        several = data["run_id"].nunique() > 1
        for (run_id, device, model, engine, kind), line in data.groupby(["run_id", "device", "model", "engine", "kind"], sort=False):
            line = line.sort_values("context")
            errors = (line["ci_high"] - line["mean"]).fillna(0)
            label = (f"{run_id} · " if several else "") + f"{device} · {model} · {ENGINE_NAMES.get(engine, engine)} {kind}"
            ax.errorbar(line["context"], line["mean"], yerr=errors, marker="o", capsize=3, label=label)
        ax.set_xscale("symlog", base=2, linthresh=128)
        ax.set_xlabel("context (prompt tokens, or depth for decode)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        _legend_below(ax)
    fig.tight_layout()
    return _png(fig)


def decode_roofline(roofline: pd.DataFrame) -> str | None:
    """Decode tok/s and the bandwidth roofline against context depth, per run: the gap between
    the two lines is what the runtime leaves on the table (cases without a roofline are omitted)."""
    data = roofline.dropna(subset=["roofline_tps", "decode_tps"]) if not roofline.empty else roofline
    if data.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    several = data["run_id"].nunique() > 1
    for (run_id, device, model), line in data.groupby(["run_id", "device", "model"], sort=False):
        line = line.sort_values("depth")
        label = (f"{run_id} · " if several else "") + f"{device} · {model}"
        measured = ax.plot(line["depth"], line["decode_tps"], marker="o", label=f"{label}: measured")[0]
        ax.plot(line["depth"], line["roofline_tps"], ls="--", color=measured.get_color(), label=f"{label}: roofline (bandwidth / bytes per token)")
    ax.set_xscale("symlog", base=2, linthresh=128)
    ax.set_xlabel("context depth (tokens already in the KV cache)")
    ax.set_ylabel("decode tokens/s")
    ax.grid(True, alpha=0.3)
    _legend_below(ax)
    fig.tight_layout()
    return _png(fig)


def power_over_time(series: pd.DataFrame) -> str | None:
    """Every power source over the run's clock, each process's window shaded.

    `series`: columns run_id, t (s), source, value (W), window (a label per process); one
    panel per run, since device clocks of different runs share no origin."""
    if series.empty:
        return None
    runs = list(dict.fromkeys(series["run_id"]))
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.2 * len(runs)), squeeze=False)
    for ax, run_id in zip(axes[:, 0], runs):
        data = series[series["run_id"] == run_id].sort_values("t")
        t0 = data["t"].min()
        for i, (_, window) in enumerate(data.groupby("window", sort=False)):
            ax.axvspan(window["t"].min() - t0, window["t"].max() - t0, color="grey", alpha=0.08 + 0.07 * (i % 2))
        for source, line in data.groupby("source"):
            ax.plot(line["t"] - t0, line["value"], lw=0.8, label=source)
        ax.set_title(f"run {run_id}", fontsize=9)
        ax.set_xlabel("time on the device clock (s); shaded: benchmark processes")
        ax.set_ylabel("W")
        _legend_below(ax)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def bars(summary: pd.DataFrame, metric_prefix: str, unit: str) -> str | None:
    """Mean ± CI per case of every metric starting with `metric_prefix` (e.g. energy per token)."""
    data = summary[summary["metric"].str.startswith(metric_prefix) & (summary["n"] > 0)] if not summary.empty else summary
    if data.empty:
        return None
    several = data["run_id"].nunique() > 1
    labels = [(f"{r.run_id} · " if several else "") + f"{r.case} · {r.metric}" for r in data.itertuples()]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(labels) + 1.2))
    ax.barh(labels, data["mean"], xerr=(data["ci_high"] - data["mean"]).fillna(0), capsize=3)
    ax.set_xlabel(unit)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def ratio_chart(comparisons: pd.DataFrame) -> str | None:
    """B/A per case with its 95% interval; 1.0 is no change, colours are the verdicts."""
    data = comparisons.dropna(subset=["ci_low"]) if not comparisons.empty else comparisons
    if data.empty:
        return None
    colours = {"faster": "tab:green", "slower": "tab:red"}
    labels = [f"{r.case} · {r.metric}" for r in data.itertuples()]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(labels) + 1.2))
    ax.errorbar(data["ratio"], labels, xerr=[data["ratio"] - data["ci_low"], data["ci_high"] - data["ratio"]],
                fmt="none", ecolor="black", capsize=3)
    ax.scatter(data["ratio"], labels, c=[colours.get(v, "tab:grey") for v in data["verdict"]], zorder=3)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")  # 0.5x and 2x are the same distance from "no change"
    ax.set_xlabel("ratio B / A (95% bootstrap interval, log scale)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def history_chart(history: pd.DataFrame) -> str | None:
    """Headline tokens/s per device and case over its runs; one panel per metric."""
    if history.empty or history["created_at"].nunique() < 2:
        return None
    metrics = [m for m in ("prefill_tps", "decode_tps") if m in set(history["metric"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        data = history[history["metric"] == metric]
        for (device, case), line in data.groupby(["device", "case"], sort=False):
            line = line.sort_values("created_at")
            ax.plot(pd.to_datetime(line["created_at"]), line["mean"], marker="o", label=f"{device} · {case}")
        ax.set_title(_PANEL_TITLES[metric])
        ax.set_ylabel("tokens/s")
        ax.grid(True, alpha=0.3)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        _legend_below(ax)
    fig.tight_layout()
    return _png(fig)


def speed_quality(frontier: pd.DataFrame) -> str | None:
    """Decode tok/s (and J/token where measured) against mean KLD, one point per model of a sweep
    (labelled with its variant); the Pareto-best points are stars joined by a line."""
    data = frontier.dropna(subset=["decode_tps", "kld_mean"]) if not frontier.empty else frontier
    if data.empty:
        return None
    panels = [("decode_tps", "decode tokens/s")] + ([("energy_j_per_token", "J/token")] if data["energy_j_per_token"].notna().any() else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (metric, unit) in zip(axes[0], panels):
        for (sweep, device), points in data.dropna(subset=[metric]).groupby(["sweep", "device"], sort=False):
            dots = ax.scatter(points["kld_mean"], points[metric], label=f"{device} · sweep {sweep}")
            best = points[points["pareto"]].sort_values("kld_mean")
            ax.plot(best["kld_mean"], best[metric], marker="*", markersize=12, color=dots.get_facecolor()[0], label="Pareto-best")
            for r in points.itertuples():
                ax.annotate(str(r.variant), (r.kld_mean, getattr(r, metric)), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("symlog", linthresh=1e-4)
        ax.set_xlabel("mean KL divergence vs the reference (nats; lower is closer)")
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        _legend_below(ax)
    fig.tight_layout()
    return _png(fig)


def _legend_below(ax: plt.Axes) -> None:
    """Series names are long (run · device · model · engine): below the axes they hide no data."""
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
