"""Report figures (PNG, Agg): metric vs LLM size per method, and TACS curves over training steps."""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path

import polars as pl

METHOD = "method.name"
LLM = "model.llm"
BASELINE = "llava"


@cache
def llm_parameters(llm_id: str) -> float | None:
    """The LLM's parameter count: the registry's published size, else a count of its meta-device build."""
    from core.models.llm import LLMS, build_meta_llm

    spec = LLMS.get(llm_id)
    if spec is None:
        return None
    if spec.params_b is not None:
        return spec.params_b * 1e9
    if not spec.arch:
        return None
    # Meta tensors have shapes but no memory, so counting a 13B model costs about a second.
    return float(sum(p.numel() for p in build_meta_llm(llm_id).parameters()))


def human_count(n: float) -> str:
    """316K, 2.5B, ... for axis labels."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def file_stem(metric: str) -> str:
    """'eval/pope' -> 'pope', 'eval/pope/adversarial/f1' -> 'pope_adversarial_f1' (safe file names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", metric.removeprefix("eval/")).strip("_")


def method_order(methods: list[str]) -> list[str]:
    """The baseline first, then the others in the order given."""
    return sorted(methods, key=lambda m: (m != BASELINE, methods.index(m)))


def _figure(width: float, height: float):
    # A bare Figure renders with Agg on savefig and never touches pyplot's global backend or state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def scaling_plot(
    trials: pl.DataFrame, metric: str, out_path: Path, *, percent: bool
) -> tuple[Path | None, str | None]:
    """Mean of `metric` vs LLM parameters (log x), one line per method, error bars = std over trials.

    `trials` has one row per trial with `status`, `method.name`, `model.llm` and the metric column;
    only finished trials count. Returns (path, None), or (None, why it was skipped).
    """
    if metric not in trials.columns:
        return None, f"scaling plot of {metric}: no finished trial has this metric"
    done = trials.filter((pl.col("status") == "done") & pl.col(metric).is_not_null())
    if done.is_empty():
        return None, f"scaling plot of {metric}: no finished trial has this metric"
    stats = done.group_by(METHOD, LLM, maintain_order=True).agg(
        pl.col(metric).mean().alias("mean"), pl.col(metric).std().alias("std"), pl.len().alias("n")
    )
    sizes = {llm: llm_parameters(llm) for llm in stats[LLM].unique().to_list()}
    unsized = sorted(k for k, v in sizes.items() if v is None)
    sized = {k: v for k, v in sizes.items() if v is not None}
    if len(sized) < 2:
        have = ", ".join(sorted(sized)) or "none"
        why = f"needs results from at least two LLM sizes; has {have}"
        if unsized:
            why += f" (no parameter count for {', '.join(unsized)})"
        return None, f"scaling plot of {metric}: {why}"
    scale = 100.0 if percent else 1.0
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for method in method_order(stats[METHOD].unique(maintain_order=True).to_list()):
        rows = sorted(
            (r for r in stats.filter(pl.col(METHOD) == method).iter_rows(named=True) if r[LLM] in sized),
            key=lambda r: sized[r[LLM]],
        )
        if not rows:
            continue
        ax.errorbar(
            [sized[r[LLM]] for r in rows],
            [r["mean"] * scale for r in rows],
            yerr=[(r["std"] or 0.0) * scale for r in rows],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set_xscale("log")
    ticks = sorted(sized.items(), key=lambda kv: kv[1])
    ax.set_xticks([v for _, v in ticks], labels=[f"{k}\n{human_count(v)}" for k, v in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("LLM parameters (log)")
    ax.set_ylabel(f"{metric}{' (x100)' if percent else ''}")
    ax.set_title(f"{metric} vs LLM size (mean ± std over trials)")
    ax.grid(alpha=0.3)
    ax.legend(title="method")
    fig.savefig(out_path)
    note = (
        f"scaling plot of {metric}: left out {', '.join(unsized)} (no parameter count)" if unsized else None
    )
    return out_path, note


def tacs_plot(
    history: pl.DataFrame, out_path: Path, *, metric: str = "diag/tacs"
) -> tuple[Path | None, str | None]:
    """Curves of `metric` over training steps, one line per method (mean over trials, ±std band).

    `history` has columns method, panel (a label for the subplot, e.g. the LLM), trial_id, step, value.
    Returns (path, None), or (None, why it was skipped).
    """
    if history.is_empty():
        return None, f"{metric} curves: no finished trial logged a {metric} history"
    stats = (
        history.group_by("panel", "method", "step")
        .agg(pl.col("value").mean().alias("mean"), pl.col("value").std().alias("std"))
        .sort("step")
    )
    from matplotlib.ticker import MaxNLocator

    panels = history["panel"].unique(maintain_order=True).to_list()
    methods = method_order(history["method"].unique(maintain_order=True).to_list())
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = _figure(4.6 * cols, 3.4 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False)
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for i, panel in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for method in methods:
            s = stats.filter((pl.col("panel") == panel) & (pl.col("method") == method))
            if s.is_empty():
                continue
            steps, mean = s["step"].to_numpy(), s["mean"].to_numpy()
            std = s["std"].fill_null(0.0).to_numpy()
            ax.plot(steps, mean, color=colors[method], label=method)
            ax.fill_between(steps, mean - std, mean + std, color=colors[method], alpha=0.2, linewidth=0)
        ax.set_title(panel, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(title="method", fontsize=8)
    for j in range(len(panels), nrows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle(f"{metric} during training (mean ± std over trials)")
    fig.savefig(out_path)
    return out_path, None
