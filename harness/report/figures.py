"""matplotlib figures rendered to base64 PNG so the HTML needs no other file or network."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display: reports are built on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

_PANELS = (("prefill_tps", "Prefill"), ("decode_tps", "Decode"))
ENGINE_NAMES = {"llamabench": "llama-bench", "pyllama": "llama-cpp-python"}


def throughput_vs_context(summary: pd.DataFrame) -> str | None:
    """Tokens/s against context length, prefill and decode side by side, 95% CI as error bars."""
    present = [(m, title) for m, title in _PANELS if m in set(summary.get("metric", []))]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(5.5 * len(present), 3.8), squeeze=False)
    for ax, (metric, title) in zip(axes[0], present):
        data = summary[(summary["metric"] == metric) & (summary["n"] > 0)]
        for (device, model, engine), line in data.groupby(["device", "model", "engine"], sort=False):
            line = line.sort_values("context")
            errors = (line["ci_high"] - line["mean"]).fillna(0)
            ax.errorbar(line["context"], line["mean"], yerr=errors, marker="o", capsize=3, label=f"{device} · {model} · {ENGINE_NAMES.get(engine, engine)}")
        ax.set_xscale("symlog", base=2, linthresh=128)
        ax.set_xlabel("context length (tokens)" if metric == "prefill_tps" else "depth (tokens of context)")
        ax.set_ylabel("tokens/s")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
