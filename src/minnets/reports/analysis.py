"""The report's "AND operator" ablation and hyperselectivity sections.

The paper credits the Min-units' gains to the AND of two filters (Discussion) and to their
hyperselectivity (Section 2.3) but tests neither. The ablation table puts the Min-Nets trained
with each AND operator (``minnets train --unit OP``; :mod:`minnets.ops.operators`) beside their
baseline and the paper's Min-Net: final and min-over-epochs test error and POCP at JPEG
quality 50 and 10, mean +- std over seeds; operators without runs are marked **missing**. The
analysis section collects every run analysed with ``minnets analyze`` (``analysis/analysis.json``):
the filter-pair angles, silent units, iso-response curvature and end-stopping per block, a figure
of the curvature per operator, and each operator's own figures.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minnets.analysis import ANALYSIS_JSON
from minnets.analysis import figures
from minnets.errors import MinnetsError
from minnets.files import read_json
from minnets.ops.operators import operator_names
from minnets.reports import published
from minnets.reports.runs import SETTING_KEYS, Run
from minnets.reports.tables import NA, Stats
from minnets.rundir import analysis_dir
from minnets.text import slug

__all__ = ["and_operator_sections", "analysis_sections", "POCP_QUALITIES"]

POCP_QUALITIES = (50, 10)
GROUP_KEYS = tuple(key for key in SETTING_KEYS if key != "unit")  # runs of one ablation share these
SHOWN_KEYS = ("epochs", "subset", "test_subset", "init")  # what a group's title names
RUN_FIGURES = ("gamma_hist.png", "filters_stack1.png", "curvature.png", "iso_examples.png", "end_stopping.png")

Fmt = Callable[..., str]
MdTable = Callable[[list[str], list[list[str]]], list[str]]


def _unit(run: Run) -> str:
    return str(run.config.get("unit") or "min")


def _group_title(run: Run) -> str:
    shown = [f"{key}={run.config[key]}" for key in SHOWN_KEYS if run.config.get(key) not in (None, "published")]
    return f"{run.dataset}, {run.model}" + (f" ({', '.join(shown)})" if shown else "")


def _operator_order(units: set[str]) -> list[str]:
    """Registry order (min first), then any operator spec with parameters, alphabetically."""
    names = operator_names()
    return names + sorted(units - set(names))


def _stats_cells(runs: list[Run], fmt: Fmt) -> tuple[list[str], dict[str, Any]]:
    """Cells and CSV numbers of one row: seeds, final and min error, POCP at the chosen qualities."""
    finished = [run for run in runs if run.finished]
    numbers: dict[str, Any] = {"seeds": len(finished), "unfinished": len(runs) - len(finished)}
    cells = [str(len(finished)) + (f" (+{len(runs) - len(finished)} unfinished)" if len(runs) > len(finished) else "")]
    columns = [("final", _final_errors(finished)),
               ("min", [float(r.summary["min_test_err"]) for r in finished])]
    mode = published.paper_jpeg_mode()
    for quality in POCP_QUALITIES:
        columns.append((f"pocp_q{quality}", [float(r.jpeg[mode][quality]["pocp"]) for r in runs
                                             if r.jpeg and quality in r.jpeg.get(mode, {})]))
    for key, values in columns:
        stats = Stats.of(values)
        numbers[f"{key}_mean"], numbers[f"{key}_std"], numbers[f"{key}_n"] = stats.mean, stats.std, stats.n
        cells.append(_mean_std(stats, fmt))
    return cells, numbers


def _final_errors(runs: list[Run]) -> list[float]:
    return [float(run.summary["final_test_err"]) for run in runs if run.finished]


def _mean_std(stats: Stats, fmt: Fmt) -> str:
    if stats.mean is None:
        return "missing"
    return fmt(stats.mean) + (f" ± {fmt(stats.std)}" if stats.std is not None else "")


def _paper_cells(model: str, dataset: str, fmt: Fmt) -> tuple[list[str], dict[str, Any]] | None:
    entry = published.published_model(model) if dataset == published.paper_dataset() else None
    if entry is None:
        return None
    final, minimum = entry["final_test_err"], entry["min_test_err"]
    cells = ["", f"{fmt(final['mean'])} ± {fmt(final['std'])}",
             fmt(minimum["mean"]) if minimum["mean"] is not None else "–"]
    cells += [fmt(entry["pocp"].get(q), digits=1) for q in POCP_QUALITIES]
    numbers = {"final_mean": final["mean"], "final_std": final["std"], "min_mean": minimum["mean"],
               **{f"pocp_q{q}_mean": entry["pocp"].get(q) for q in POCP_QUALITIES}}
    return cells, numbers


def and_operator_sections(runs: list[Run], out_dir: Path, rows_out: dict[str, list[dict[str, Any]]],
                          fmt: Fmt, md_table: MdTable) -> list[str]:
    """The ablation table and figure for every Min-Net model some run trained with another
    operator than ``min``; nothing when there is no such run."""
    groups: dict[tuple[Any, ...], dict[str, list[Run]]] = {}
    for run in runs:
        if run.min_net:
            key = (run.dataset, run.model, run.setting(GROUP_KEYS))
            groups.setdefault(key, {}).setdefault(_unit(run), []).append(run)
    groups = {key: by_unit for key, by_unit in groups.items() if set(by_unit) - {"min"}}
    if not groups:
        return []
    lines = ["## AND operator ablation", "",
             "Min-Nets whose Min-units combine their two filters' rectified, normalised responses with "
             "another operator than the paper's minimum (`minnets train --unit OP`, `minnets sweep "
             "ablation`), beside the baseline and the paper's Min-Net. Test error and POCP in %, mean ± "
             f"std over seeds; POCP at JPEG quality {' and '.join(map(str, POCP_QUALITIES))} (mode "
             f"`{published.paper_jpeg_mode()}`). **missing**: no finished run (or no JPEG result) yet.", ""]
    header = ["operator", "seeds", "final error", "min-over-epochs error",
              *(f"POCP Q={q}" for q in POCP_QUALITIES)]
    for (dataset, model, setting), by_unit in groups.items():
        example = next(iter(by_unit.values()))[0]
        title = _group_title(example)
        baseline_model = model.removeprefix("min_")
        baseline = [run for run in runs if run.model == baseline_model and run.dataset == dataset
                    and run.setting(GROUP_KEYS) == setting]
        body, bars = [], []
        for unit in _operator_order(set(by_unit)):
            cells, numbers = _stats_cells(by_unit.get(unit, []), fmt)
            body.append([unit, *cells])
            rows_out.setdefault("and_operator", []).append({"group": title, "row": unit, **numbers})
            bars.append((unit, _final_errors(by_unit.get(unit, []))))
        cells, numbers = _stats_cells(baseline, fmt)
        body.append([f"baseline ({baseline_model})", *cells])
        rows_out.setdefault("and_operator", []).append({"group": title, "row": "baseline", **numbers})
        paper = _paper_cells(model, dataset, fmt)
        reference = {"baseline": _final_errors(baseline)}
        if paper is not None:
            body.append(["paper Min-Net (min)", *paper[0]])
            rows_out.setdefault("and_operator", []).append({"group": title, "row": "paper", **paper[1]})
            reference["paper"] = [paper[1]["final_mean"]]
        else:
            body.append(["paper Min-Net (min)", NA, NA, NA, *(NA for _ in POCP_QUALITIES)])
        name = f"and_operator_{slug(title)}.png"
        lines += [f"### {title}", "", *md_table(header, body), ""]
        if figures.operator_errors(bars, reference, f"AND operator: {title}", out_dir / name):
            lines += [f"![AND operator ablation: {title}]({name})", "",
                      "Bars: mean final test error per operator, whiskers: std, dots: seeds; dashed: the "
                      "baseline's mean; dotted: the paper's Min-Net.", ""]
    lines += ["All numbers: [and_operator_summary.csv](and_operator_summary.csv).", ""]
    return lines


def _analyses(runs: list[Run]) -> tuple[list[tuple[Run, dict[str, Any]]], list[tuple[str, str]]]:
    found, broken = [], []
    for run in runs:
        path = analysis_dir(run.path) / ANALYSIS_JSON
        if not path.is_file():
            continue
        try:
            found.append((run, read_json(path)))
        except MinnetsError as error:
            broken.append((run.name, str(error)))
    return found, broken


def _median_cell(summary: dict[str, Any] | None, fmt: Fmt, quartiles: bool = False, digits: int = 2) -> str:
    if not summary or summary.get("median") is None:
        return "–"
    cell = fmt(summary["median"], digits=digits)
    if quartiles and summary.get("q1") is not None:
        cell += f" [{fmt(summary['q1'], digits=digits)}, {fmt(summary['q3'], digits=digits)}]"
    return cell


def analysis_sections(runs: list[Run], out_dir: Path, rows_out: dict[str, list[dict[str, Any]]],
                      fmt: Fmt, md_table: MdTable) -> list[str]:
    """Tables and figures of every analysed run; nothing when no run has been analysed."""
    found, broken = _analyses(runs)
    if not found and not broken:
        return []
    lines = ["## Hyperselectivity analysis", "",
             "From `minnets analyze RUN_DIR` (paper Section 2.3; Paiton et al. 2020). Per analysed block "
             "(the first block of every stack; in a baseline, the block the design rule replaces): the "
             "filter-pair angle γ of the Min-units (median [quartiles], degrees; trained and at "
             "initialisation), the fraction of silent units, the median iso-response curvature c2 "
             "(> 0: hyperselective, 0: a linear unit with a ReLU) and V slope with e2 random or another "
             "unit's optimal direction, and the median degree of end-stopping ES of the first block.", ""]
    header = ["run", "unit", "block", "γ trained", "γ initial", "silent", "c2 random", "c2 other unit",
              "slope other unit", "ES"]
    body: list[list[str]] = []
    series: dict[str, dict[str, list[float]]] = {}
    shown: dict[str, tuple[Run, dict[str, Any]]] = {}
    for run, result in found:
        operator = "baseline" if not run.min_net else _unit(run)
        label = f"{run.model} ({operator})"
        shown.setdefault(f"{run.dataset}, {label}", (run, result))
        for block, entry in result.get("blocks", {}).items():
            body.append([run.name, operator, block, _median_cell(entry.get("gamma_deg"), fmt, True, 0),
                         _median_cell(entry.get("gamma_deg_initial"), fmt, False, 0),
                         f"{fmt(100 * entry['silent_fraction'], digits=0)}%",
                         _median_cell(entry.get("curvature_random"), fmt),
                         _median_cell(entry.get("curvature_other_unit"), fmt),
                         _median_cell(entry.get("slope_other_unit"), fmt), _median_cell(entry.get("end_stopping"), fmt)])
            rows_out.setdefault("analysis", []).append({
                "run": run.name, "model": run.model, "dataset": run.dataset, "seed": run.seed, "unit": operator,
                "block": block, **{f"{key}_{stat}": (entry.get(key) or {}).get(stat)
                                   for key in ("gamma_deg", "gamma_deg_initial", "curvature_random",
                                               "curvature_other_unit", "slope_other_unit", "end_stopping")
                                   for stat in ("median", "q1", "q3", "n")},
                "silent_fraction": entry.get("silent_fraction")})
            median = (entry.get("curvature_other_unit") or {}).get("median")
            if median is not None and math.isfinite(median):
                series.setdefault(f"{run.dataset}, {label}", {}).setdefault(block, []).append(median)
    lines += [*md_table(header, body), "", "All numbers: [analysis_summary.csv](analysis_summary.csv).", ""]
    if broken:
        lines += ["Unreadable analyses (rerun `minnets analyze` on them):", "",
                  *md_table(["run", "problem"], [list(b) for b in broken]), ""]
    if figures.operator_curvature(series, out_dir / "analysis_curvature.png"):
        lines += ["![Iso-response curvature per block and operator](analysis_curvature.png)", "",
                  "Median contour curvature c2 (e2 = another unit's optimal direction) per block, averaged "
                  "over analysed seeds; one line per model and operator.", ""]
    for label, (run, result) in shown.items():
        folder = out_dir / "analysis" / slug(label)
        pictures = [name for name in RUN_FIGURES if name in result.get("figures", [])
                    and (analysis_dir(run.path) / name).is_file()]
        if not pictures:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        lines += [f"### {label}: figures of {run.name}", ""]
        for name in pictures:
            shutil.copyfile(analysis_dir(run.path) / name, folder / name)
            lines += [f"![{label}: {name.removesuffix('.png')}](analysis/{slug(label)}/{name})", ""]
    return lines
