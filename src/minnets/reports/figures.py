"""The paper's figures 2 and 5 and training curves, drawn from an experiment's runs, and the
drawing helpers of every figure (Figures 3 and 4 are the JPEG suite's, :mod:`minnets.reports.suites`).

Styles follow the paper: baseline black and dashed, Min-Net blue and solid, diamonds at the
means. The paper's own means are drawn faint and dotted with hollow circles, so the two
sources are never confused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from minnets.jpeg import compress
from minnets.reports import published
from minnets.reports.tables import (
    DEPTH_SYMBOLS,
    FAMILY_LABELS,
    Experiment,
    ModelGroup,
)
from minnets.text import plural

DPI = 150
UPSCALE = 8  # nearest-neighbour factor for Figure 5 (32 x 32 -> 256 x 256 pixels)
METRIC_LABELS = {
    "test_err": "test error (%)",
    "pocp": "changed predictions, POCP (%)",
}


def _style(min_net: bool) -> dict[str, Any]:
    if min_net:
        return {"color": "tab:blue", "linestyle": "-", "name": "Min-Net"}
    return {"color": "black", "linestyle": "--", "name": "baseline"}


def _figure(**kwargs: Any) -> Figure:
    """A figure on the Agg canvas, outside pyplot: no global backend switch, nothing to close."""
    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    """Save atomically, so an interrupted report never leaves a truncated PNG behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=DPI, format="png")
    os.replace(tmp, path)


def _known_families(experiment: Experiment) -> list[str]:
    return [family for family in experiment.families() if family is not None]


def _variants(experiment: Experiment, family: str, min_net: bool) -> list[ModelGroup]:
    return sorted(
        (g for g in experiment.models if g.family == family and g.min_net == min_net),
        key=lambda g: g.depth,
    )


def error_vs_params(experiment: Experiment, path: Path) -> Figure | None:
    """Figure 2: final test error against parameters, one panel per family; None if no data."""
    families = [f for f in _known_families(experiment)
                if any(g.finished for g in experiment.models if g.family == f)]
    if not families:
        return None
    fig = _figure(figsize=(max(6.4 * len(families), 8.0), 5.4))
    axes = fig.subplots(1, len(families), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, family in zip(axes[0], families):
        absent = []
        for min_net in (False, True):
            style = _style(min_net)
            groups = _variants(experiment, family, min_net)
            _plot_paper_means(ax, groups, style, handles)
            points = [(g.num_params(), g.final_stats("final_test_err"), g.depth)
                      for g in groups if g.finished and g.num_params() is not None]
            if points:
                _plot_our_means(ax, family, points, style, handles)
            absent += [f"{g.label}" for g in groups if not g.finished]
        if absent:
            ax.text(0.02, 0.02, "no finished run yet:\n" + "\n".join(absent), transform=ax.transAxes,
                    fontsize=8, color="gray", va="bottom")
        ax.set_title(f"{FAMILY_LABELS[family]} on {experiment.title}")
        ax.set_xlabel("parameters (thousands)")
        ax.set_ylabel("test error after the last epoch (%)")
        ax.margins(x=0.12, y=0.08)  # room for the depth labels beside the outer points
        ax.grid(alpha=0.3)
    fig.suptitle("Figure 2: test error against model size")
    _figure_legend(fig, handles)
    _save(fig, path)
    return fig


def _plot_our_means(ax: Axes, family: str, points: list[tuple[int, Any, int]],
                    style: dict[str, Any], handles: dict[str, Any]) -> None:
    """Our means (diamonds), std bars and min-max band; the legend names only what is drawn.

    Bars and band need two seeds of a model; with one seed per model there is neither.
    """
    x = np.array([p[0] for p in points]) / 1e3
    stats = [p[1] for p in points]
    mean = np.array([s.mean for s in stats])
    low, high = [s.min for s in stats], [s.max for s in stats]
    spread = any(s.n > 1 for s in stats)
    bars = ax.errorbar(x, mean, yerr=[s.std or 0.0 for s in stats] if spread else None, color=style["color"],
                       linestyle=style["linestyle"], marker="D", markersize=6, capsize=4)
    if spread:
        if len(points) > 1:
            band = ax.fill_between(x, low, high, color=style["color"], alpha=0.15, linewidth=0)
        else:  # a band needs two points: show the single min-max range as a wide faint bar
            band = ax.vlines(x, low, high, color=style["color"], alpha=0.15, linewidth=12)
        handles[f"ours: {style['name']}, mean ± std"] = bars
        handles[f"ours: {style['name']}, min to max"] = band
    else:
        handles[f"ours: {style['name']}, one seed"] = bars
    # baseline labels above right, Min-Net labels below left: Min-Nets sit lower and to the left
    offset, align = ((-8, -13), "right") if style["name"] == "Min-Net" else ((7, 5), "left")
    for xi, yi, (_, _, depth) in zip(x, mean, points):
        ax.annotate(f"{DEPTH_SYMBOLS[family]}={depth}", (xi, yi), xytext=offset, ha=align,
                    textcoords="offset points", fontsize=8, color=style["color"])


def _plot_paper_means(ax: Axes, groups: list[ModelGroup], style: dict[str, Any],
                      handles: dict[str, Any]) -> None:
    points = sorted(
        (g.published["parameters"] / 1e3, g.published["final_test_err"]["mean"])
        for g in groups if g.published is not None
    )
    if points:
        (line,) = ax.plot(*zip(*points), color=style["color"], linestyle=":", marker="o",
                          markerfacecolor="none", alpha=0.45, zorder=3)
        handles[f"paper: {style['name']}, mean"] = line


def _figure_legend(fig: Figure, handles: dict[str, Any]) -> None:
    """One legend below all panels (never over data): ours first, baseline before Min-Net."""
    order = sorted(handles, key=lambda k: (k.startswith("paper"), "Min-Net" in k))
    width = fig.get_figwidth()
    fig.legend([handles[k] for k in order], order, loc="outside lower center", fontsize=9,
               ncols=max(1, min(len(order), int(width // 3.6))))


def training_curves(experiment: Experiment, family: str | None, path: Path) -> Figure:
    """Train and test error per epoch: a row per depth (or per model outside the paper's
    families), train error left and test error right on one y-axis per row, baseline and
    Min-Net in the same panels in the paper's styles, one line per seed. Models without runs
    (the paper grid's absent ones) get no row: the report lists them under Missing."""
    groups = [g for g in experiment.models if g.family == family and g.runs]
    if family is None:
        rows = [[g] for g in groups]
        titles = [g.model for g in groups]
    else:
        depths = sorted({g.depth for g in groups})
        rows = [sorted((g for g in groups if g.depth == d), key=lambda g: bool(g.min_net)) for d in depths]
        titles = [f"{FAMILY_LABELS[family]} {DEPTH_SYMBOLS[family]}={d}" for d in depths]
    fig = _figure(figsize=(10.0, 3.2 * len(rows) + 0.8))
    axes = fig.subplots(len(rows), 2, squeeze=False, sharex=True)
    for row, (cells, title) in enumerate(zip(rows, titles)):
        train_ax, test_ax = axes[row]
        test_ax.sharey(train_ax)
        drawn = False
        for index, group in enumerate(cells):
            style = _style(bool(group.min_net)) if family is not None else {
                "color": matplotlib.colormaps["tab10"](index % 10), "linestyle": "-", "name": group.model}
            runs = sorted((run for run in group.runs if run.curve), key=lambda r: (r.seed is None, r.seed))
            for run in runs:
                epochs, train, test = zip(*run.curve)
                alpha = 0.9 if run.finished else 0.35
                for ax, values in ((train_ax, train), (test_ax, test)):
                    ax.plot(epochs, values, color=style["color"], linestyle=style["linestyle"],
                            linewidth=1.2, alpha=alpha, marker="." if len(epochs) < 30 else None)
                drawn = True
            unfinished = sum(not run.finished for run in runs)
            counts = [plural(len(runs) - unfinished, "seed")] if len(runs) > unfinished else []
            counts += [f"{unfinished} unfinished"] if unfinished else []
            name = f"{style['name']} ({group.model})" if family is not None else group.model
            label = f"{name}: {' + '.join(counts)}"
            test_ax.plot([], [], color=style["color"], linestyle=style["linestyle"], label=label)
        for ax, what in ((train_ax, "train"), (test_ax, "test")):
            ax.set_title(f"{title}: {what} error", fontsize=10)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
            if row == len(rows) - 1:
                ax.set_xlabel("epoch")
        train_ax.set_ylabel("error (%)")
        if drawn:
            train_ax.set_ylim(bottom=0)
            test_ax.legend(fontsize=8, loc="upper right")
        else:
            for ax in (train_ax, test_ax):
                ax.text(0.5, 0.5, "no finished epoch yet", transform=ax.transAxes, ha="center", color="gray")
                ax.set_yticks([])
    name = FAMILY_LABELS.get(family, "other models")
    fig.suptitle(f"Training curves: {name} on {experiment.title}")
    _save(fig, path)
    return fig


def jpeg_examples(image: np.ndarray, modes: list[str], title: str, path: Path) -> None:
    """Figure 5: one uint8 RGB image at every quality (100 = original), one row per JPEG mode."""
    qualities = published.qualities()
    fig = _figure(figsize=(1.75 * len(qualities), 2.0 * len(modes) + 0.6))
    axes = fig.subplots(len(modes), len(qualities), squeeze=False)
    for row, mode in enumerate(modes):
        for col, quality in enumerate(qualities):
            shown = image if quality == 100 else compress(image[None], quality, mode)[0]
            big = np.repeat(np.repeat(shown, UPSCALE, axis=0), UPSCALE, axis=1)
            ax = axes[row][col]
            ax.imshow(big, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title("Q=100 (original)" if quality == 100 else f"Q={quality}", fontsize=10)
            if col == 0:
                ax.set_ylabel(f"mode '{mode}'", fontsize=10)
    fig.suptitle(f"Figure 5: {title} at every JPEG quality (nearest-neighbour upscaled "
                 f"{UPSCALE}x)")
    _save(fig, path)

