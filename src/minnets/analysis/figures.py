"""Figures of the hyperselectivity analysis (PNG, drawn without pyplot so no display is needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from minnets.analysis.iso_response import Plane
from minnets.files import atomic_write

__all__ = ["gamma_histograms", "filter_pairs", "iso_examples", "curvature_distributions", "end_stopping",
           "operator_errors", "operator_curvature"]

DPI = 130
PLANE_LABELS = {"random": "e2 random", "other_unit": "e2 = another unit's e1"}


def _save(fig: Figure, path: Path) -> bool:
    FigureCanvasAgg(fig)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    return True


def gamma_histograms(angles: dict[str, Any], title: str, path: Path) -> bool:
    """Per Min-block: histogram of the trained filter-pair angles, the initial ones as an outline."""
    names = list(angles)
    fig = Figure(figsize=(3.6 * len(names), 3.2), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    bins = np.arange(0, 181, 10)
    for ax, name in zip(axes, names):
        trained = np.array(angles[name]["trained"], dtype=float)
        initial = np.array(angles[name]["initial"], dtype=float)
        ax.hist(trained[np.isfinite(trained)], bins=bins, color="tab:blue", alpha=0.75, label="trained")
        ax.hist(initial[np.isfinite(initial)], bins=bins, histtype="step", color="black", linestyle="--",
                label="at initialisation")
        ax.axvline(np.nanmedian(trained), color="tab:blue", linewidth=1)
        ax.set_title(f"{name}: median {np.nanmedian(trained):.0f}° ({len(trained)} units)", fontsize=9)
        ax.set_xlabel("filter-pair angle γ (degrees)")
        ax.set_xlim(0, 180)
        ax.set_xticks(range(0, 181, 30))
    axes[0].set_ylabel("Min-units (channels)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Angle between the two filters of each Min-unit, {title}", fontsize=10)
    return _save(fig, path)


def filter_pairs(v: np.ndarray, g: np.ndarray, gamma: np.ndarray, title: str, path: Path,
                 columns: int = 8) -> bool:
    """Every Min-unit's kernels ``[v | g]`` side by side on one symmetric colour scale, sorted by gamma."""
    order = np.argsort(np.nan_to_num(gamma, nan=math.inf), kind="stable")
    rows = math.ceil(len(order) / columns)
    limit = float(max(np.abs(v).max(), np.abs(g).max(), 1e-12))
    fig = Figure(figsize=(1.25 * columns + 1.0, 0.85 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    k = v.shape[-1]
    image = None
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= len(order):
            continue
        m = order[index]
        pair = np.concatenate([v[m], np.full((k, 1), np.nan), g[m]], axis=1)
        image = ax.imshow(pair, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"#{m}  γ={gamma[m]:.0f}°", fontsize=7, pad=2)
    fig.colorbar(image, ax=axes, shrink=min(1.0, 4.0 / rows), label="kernel weight")
    fig.suptitle(f"Filter pairs [v | g], sorted by γ: {title}", fontsize=9)
    return _save(fig, path)


def _median(fits: list[dict[str, Any]], key: str) -> float:
    values = [row[key] for row in fits if row[key] is not None and math.isfinite(row[key])]
    return float(np.median(values)) if values else math.nan


def iso_examples(examples: list[tuple[str, str, Plane, list[dict[str, Any]]]], levels: list[float], title: str,
                 path: Path, columns: int = 4) -> bool:
    """Response maps in the (e2, e1) plane with the fitted iso-response levels drawn as contours."""
    if not examples:
        return False
    rows = math.ceil(len(examples) / columns)
    fig = Figure(figsize=(3.1 * columns, 3.0 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(examples):]:
        ax.set_axis_off()
    mappable = None
    for ax, (block, key, plane, fits) in zip(axes.flat, examples):
        unit, kind = key.split("_", 1)
        scale = plane.peak if plane.peak > 0 else max(float(np.max(plane.values)), 1e-12)
        mappable = ax.imshow(plane.values / scale, origin="lower", extent=(-1, 1, -1, 1), cmap="viridis",
                             vmin=0, vmax=max(1.0, float(np.max(plane.values)) / scale), aspect="equal")
        heights = sorted({plane.level(f) for f in levels if plane.peak > plane.base})
        if heights:
            ax.contour(plane.o, plane.t, plane.values, levels=heights, colors="white", linewidths=0.8)
        ax.plot([0], [0], "o", color="red", markersize=3)
        ax.plot([0], [1], "^", color="red", markersize=4)
        ax.set_title(f"{block} unit {unit}, {PLANE_LABELS.get(kind, kind)}\n"
                     f"c2 = {_median(fits, 'c2'):.2f}, V slope = {_median(fits, 'slope'):.2f}", fontsize=8)
        ax.set_xlabel("o / radius (along e2)", fontsize=8)
        ax.set_ylabel("t / radius (along e1)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(mappable, ax=axes, shrink=0.6, label="response / response at x0 + r e1")
    fig.suptitle(f"Iso-response contours (white; levels {', '.join(f'{f:.1f}' for f in levels)} of the way "
                 f"from x0 (dot) to x0 + r e1 (triangle)): {title}", fontsize=9)
    return _save(fig, path)


def curvature_distributions(curvature: dict[str, dict[str, np.ndarray]], title: str, path: Path) -> bool:
    """Per block and plane kind: every analysed unit's contour curvature c2 (median over levels)."""
    fig = Figure(figsize=(1.8 + 1.6 * len(curvature), 3.4), layout="constrained")
    ax = fig.subplots()
    offsets = {"random": -0.15, "other_unit": 0.15}
    colours = {"random": "tab:orange", "other_unit": "tab:purple"}
    rng = np.random.default_rng(0)
    for index, (block, planes) in enumerate(curvature.items()):
        for kind, values in planes.items():
            values = np.asarray(values, dtype=float)
            x = index + offsets[kind] + rng.uniform(-0.05, 0.05, len(values))
            ax.plot(x, values, "o", color=colours[kind], alpha=0.6, markersize=4,
                    label=PLANE_LABELS[kind] if index == 0 else None)
            if len(values):
                ax.plot([index + offsets[kind] - 0.1, index + offsets[kind] + 0.1], [np.median(values)] * 2,
                        color="black", linewidth=2)
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1, label="straight (linear unit + ReLU)")
    ax.set_xticks(range(len(curvature)), list(curvature))
    ax.set_xlim(-0.6, len(curvature) - 0.4)
    ax.set_xlabel("block (first block of each stack)")
    low, high = ax.get_ylim()
    margin = 0.05 * (high - low)
    ax.set_ylim(min(low, -margin), max(high, margin))
    ax.set_ylabel("contour curvature c2 (units of 1/radius)")
    ax.set_title(f"Iso-response curvature per unit (bar: median; > 0: hyperselective)\n{title}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def end_stopping(stimuli: Any, maps: np.ndarray, es: np.ndarray, title: str, path: Path) -> bool:
    """The square stimulus, the maps of the most and least end-stopped units, and the ES histogram."""
    fig = Figure(figsize=(13.0, 3.3), layout="constrained")
    axes = fig.subplots(1, 4)
    grey = np.asarray(stimuli[0]).mean(axis=0)
    axes[0].imshow(grey, cmap="gray")
    axes[0].set_title("stimulus (bright square; the dark one too)", fontsize=8)
    finite = np.where(np.isfinite(es))[0]
    for ax, pick, what in ((axes[1], np.argmax, "most"), (axes[2], np.argmin, "least")):
        if not len(finite):
            ax.set_axis_off()
            continue
        unit = finite[pick(es[finite])]
        response = maps[:, unit].max(axis=0)  # both polarities
        shown = ax.imshow(response, cmap="magma", vmin=0)
        fig.colorbar(shown, ax=ax, shrink=0.8, label="response")
        ax.set_title(f"{what} end-stopped: unit {unit}, ES = {es[unit]:.2f}", fontsize=8)
    for ax in axes[:3]:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[3].hist(es[finite], bins=np.linspace(-1, 1, 21), color="tab:green")
    axes[3].set_xlabel("degree of end-stopping ES")
    axes[3].set_ylabel("units")
    axes[3].set_title(f"ES = (Rc - Re) / (Rc + Re), Rc: corners, Re: edges\n{len(finite)} of {len(es)} units "
                      "respond to the squares", fontsize=8)
    fig.suptitle(f"End-stopping: {title}", fontsize=9)
    return _save(fig, path)


def operator_errors(bars: list[tuple[str, list[float]]], reference: dict[str, list[float]], title: str,
                    path: Path) -> bool:
    """The AND-operator ablation: final test error per operator (mean bar, std whisker, seed dots)."""
    if not any(values for _, values in bars):
        return False
    fig = Figure(figsize=(2.4 + 0.8 * len(bars), 3.4), layout="constrained")
    ax = fig.subplots()
    for index, (name, values) in enumerate(bars):
        if not values:
            ax.text(index, 0, "missing", rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
            continue
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        ax.bar(index, np.mean(values), yerr=std, color="tab:blue" if name == "min" else "tab:cyan", capsize=3)
        ax.plot([index] * len(values), values, "o", color="black", markersize=3)
    styles = {"baseline": ("black", "--", "baseline"), "paper": ("tab:blue", ":", "paper Min-Net")}
    for key, values in reference.items():
        if values:
            colour, line, label = styles[key]
            ax.axhline(float(np.mean(values)), color=colour, linestyle=line, linewidth=1.2, label=label)
    ax.set_xticks(range(len(bars)), [name for name, _ in bars], rotation=30, ha="right")
    ax.set_xlim(-0.6, len(bars) - 0.4)
    ax.set_xlabel("AND operator of the Min-units")
    ax.set_ylabel("final test error (%)")
    ax.set_title(title, fontsize=9)
    if any(reference.values()):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def operator_curvature(series: dict[str, dict[str, list[float]]], path: Path) -> bool:
    """Median iso-response curvature per block, one line per (model, operator)."""
    if not series:
        return False
    blocks = sorted({block for values in series.values() for block in values})
    fig = Figure(figsize=(8.4, 3.6), layout="constrained")
    ax = fig.subplots()
    for label, values in series.items():
        x = [blocks.index(b) for b in blocks if b in values]
        y = [float(np.mean(values[b])) for b in blocks if b in values]
        baseline = label.endswith("(baseline)")
        ax.plot(x, y, marker="s" if baseline else "o", linestyle="--" if baseline else "-",
                color="black" if baseline else None, label=label)
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(blocks)), blocks)
    ax.set_xlabel("block (first block of each stack)")
    ax.set_ylabel("median contour curvature c2")
    ax.set_title("Iso-response curvature (> 0: hyperselective), e2 = another unit's e1", fontsize=9)
    fig.legend(fontsize=7, loc="outside right upper")
    return _save(fig, path)
