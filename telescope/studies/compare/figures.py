"""The study's figures, drawn from compare.json's layout alone, so a report can redraw them anywhere:

    ratio.png     R(B) against the batch size, with the paper's 10-15% band and each R's range
    tradeoff.png  tokens and FLOPs to target against sequential steps, with each Pareto front
    curves.png    the best runs' validation curves, and the lr sweeps the best lrs came from

matplotlib is imported inside the drawing functions: the CLI and the maths stay fast to import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from telescope.studies.compare.analysis import pareto_front
from telescope.studies.compare.spec import OPTIMIZERS

FIGURES = {"ratio": "ratio.png", "tradeoff": "tradeoff.png", "curves": "curves.png"}  # name -> file
PAPER_TOKEN_SAVING = (0.10, 0.15)  # "Muon needs 10-15% fewer tokens": R = 1 / (1 - saving)


def plot_compare(table: Mapping[str, Any], outdir: str | Path) -> dict[str, str]:
    """Draw the study's figures from compare.json's table into `outdir`; returns name -> file name."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for name, draw in (("ratio", _plot_ratio), ("tradeoff", _plot_tradeoff), ("curves", _plot_curves)):
        fig = draw(table)
        fig.savefig(outdir / FIGURES[name], dpi=110, bbox_inches="tight")
    return dict(FIGURES)


def _figure(ncols: int) -> Any:
    from matplotlib.figure import (
        Figure,  # no pyplot: no global backend state, safe in a notebook
    )

    return Figure(figsize=(5.2 * ncols, 4.0), layout="constrained")


def _batch_axis(ax: Any, batch_sizes: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
    ax.minorticks_off()


def _plot_ratio(table: Mapping[str, Any]) -> Any:
    fig = _figure(1)
    ax = fig.add_subplot()
    measured = [r for r in table["ratios"] if r["ratio"] is not None]
    bs = [r["batch_size"] for r in table["ratios"]]
    lo, hi = (1 / (1 - s) for s in PAPER_TOKEN_SAVING)
    ax.axhspan(lo, hi, color="tab:green", alpha=0.15, label="paper: Muon needs 10-15% fewer tokens")
    ax.axhline(1.0, color="grey", ls="--", label="R = 1: no advantage")
    ax.plot([r["batch_size"] for r in measured], [r["ratio"] for r in measured], "o-", color="tab:blue",
            label="measured (bars: the range the bracketing evaluations allow)")
    for r in measured:
        lo, hi = (x if x is not None else r["ratio"] for x in (r["ratio_range"] or (None, None)))
        ax.vlines(r["batch_size"], lo, hi, color="tab:blue", alpha=0.4, lw=3)
    for r in measured:
        ax.annotate(f"{r['ratio']:.2f}", (r["batch_size"], r["ratio"]), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=8)
    _batch_axis(ax, bs)
    ax.set_xlabel("batch size B (sequences)")
    ax.set_ylabel("R(B) = T_AdamW / T_Muon")
    ax.set_title(f"tokens to reach val loss {table['target_loss']:.3f}, width {table['width']}", fontsize=10)
    ax.legend(fontsize=8)
    return fig


_COLOURS = {"muon": "tab:blue", "adamw": "tab:orange"}


def _plot_tradeoff(table: Mapping[str, Any]) -> Any:
    """Compute (tokens, FLOPs) against time (sequential steps) to reach the target, per optimizer:
    one point per batch size, Pareto-front points filled."""
    fig = _figure(2)
    panels = (("tokens_to_target", "tokens to target"),
              ("flops_to_target", "FLOPs to target (model + Newton-Schulz)"))
    for k, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        for optimizer in OPTIMIZERS:
            mine = [c for c in table["cells"] if c["optimizer"] == optimizer and c[key] is not None]
            if not mine:
                continue
            colour = _COLOURS[optimizer]
            xs, ys = [c["steps_to_target"] for c in mine], [c[key] for c in mine]
            front = set(pareto_front(list(zip(xs, ys))))
            ax.plot(xs, ys, "-", color=colour, alpha=0.5, label=optimizer)
            for i, c in enumerate(mine):
                ax.plot(xs[i], ys[i], "o", color=colour, mfc=colour if i in front else "white")
                ax.annotate(f"B={c['batch_size']}", (xs[i], ys[i]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=colour)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequential steps to target (time)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8, title="filled: Pareto front", title_fontsize=7)
    fig.suptitle(f"compute-time trade-off to val loss {table['target_loss']:.3f}", fontsize=10)
    return fig


def _plot_curves(table: Mapping[str, Any]) -> Any:
    """Left: the best runs' validation curves and the target. Right: final loss against lr, the
    sweep each best lr was picked from."""
    from matplotlib import colormaps

    fig = _figure(2)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    bs = sorted({c["batch_size"] for c in table["cells"]})
    cmap = colormaps["viridis"]
    colour = {b: cmap(0.85 * i / max(len(bs) - 1, 1)) for i, b in enumerate(bs)}
    style = {"muon": "-", "adamw": "--"}
    for c in table["cells"]:
        b, opt = c["batch_size"], c["optimizer"]
        label = f"{opt} B={b}"
        if c["curve"]["tokens"]:
            left.plot(c["curve"]["tokens"], c["curve"]["val_loss"], style[opt], color=colour[b], label=label)
        if c.get("tokens_to_target") is not None:
            left.plot(c["tokens_to_target"], table["target_loss"], "o", color=colour[b], ms=4)
        done = [r for r in c["lrs"] if r["final_loss"] is not None]
        right.plot([r["lr"] for r in done], [r["final_loss"] for r in done], style[opt], marker="o",
                   color=colour[b], ms=4, label=label)
        for r in c["lrs"]:
            if r["final_loss"] is None:  # diverged or failed: marked at the top edge
                right.plot(r["lr"], 1, "x", color=colour[b], transform=right.get_xaxis_transform())
    left.axhline(table["target_loss"], color="grey", ls=":", label="target")
    left.set_xscale("log")
    left.set_xlabel("tokens")
    left.set_ylabel("validation loss (best lr, seed mean)")
    left.legend(fontsize=7, ncol=2)
    right.set_xscale("log")
    lrs = sorted({r["lr"] for c in table["cells"] for r in c["lrs"]})
    right.set_xticks(lrs, [f"{lr:.3g}" for lr in lrs], rotation=45, fontsize=7)
    right.minorticks_off()
    right.set_xlabel("peak lr")
    right.set_ylabel("final validation loss (x: diverged/failed)")
    right.legend(fontsize=7, ncol=2)
    return fig
