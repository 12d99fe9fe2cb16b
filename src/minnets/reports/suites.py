"""The report's robustness sections beyond JPEG: one code path for every suite's tables and figures.

For each suite (:data:`REPORT_SUITES`) and experiment, the runs' ``<suite>.csv`` rows are
averaged over seeds per model and level, and shown with Min-Nets beside their baselines: a
table of test error and POCP (paper Eq. 5) per level, a figure of both against the level, and
a CSV with the std over seeds. What a suite adds is only how its levels are labelled and
summarised (:class:`View`):

* ``adversarial``: one table per (attack, norm), a row per eps; a level with a failed sanity
  check in any seed is marked **unreliable** and the failed checks are listed under the table.
* ``corruptions``: a row per corruption (mean over its severities), rows for each severity
  averaged over the 15 benchmark corruptions, and the means over the 15 and the 19 as
  RobustBench reports them (Hendrycks & Dietterich 2019); the mCE of each Min-Net with its
  paired baseline (same family and depth) as the reference
  (:func:`minnets.robustness.corruptions.summarize`).

JPEG keeps its own layout (the paper's Tables 2-5, in :mod:`minnets.reports.build`). A suite no
run has results for is marked **missing**, with the command that makes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minnets.errors import MinnetsError
from minnets.reports.figures import METRIC_LABELS, _figure, _save, _style
from minnets.reports.tables import Experiment, ModelGroup, Stats
from minnets.robustness.evaluate import read_suite_csv, suite_csv
from minnets.robustness.suite import Row, get_suite
from minnets.text import slug

REPORT_SUITES = ("corruptions", "adversarial")
METRICS = ("test_err", "pocp")
UNRELIABLE = "unreliable"


@dataclass(frozen=True)
class Cell:
    """One level of one run: its numbers and, when a check failed, why."""

    test_err: float
    pocp: float
    problem: str = ""


@dataclass(frozen=True)
class View:
    """How a suite's rows become tables: ``cells(rows)`` -> {table: {row label: Cell}} per run."""

    title: str
    level_name: str  # first column of the tables and the figures' x axis
    cells: Callable[[Sequence[Row]], dict[str, dict[str, Cell]]]
    x_value: Callable[[str], float | None]  # where a row label sits on the x axis (None: not drawn)
    x_axis: Callable[[str], tuple[float, str]]  # table -> (scale of x_value, x axis label)


def _adversarial_cells(rows: Sequence[Row]) -> dict[str, dict[str, Cell]]:
    tables: dict[str, dict[str, Cell]] = {}
    for row in rows:
        checks = str(row.get("checks", ""))
        problem = "" if checks.startswith("passed") else (checks.removeprefix(f"{UNRELIABLE}: ") or "checks not run")
        tables.setdefault(f"{row['attack']} {row['norm']}", {})[str(row["eps"])] = Cell(
            float(row["test_err"]), float(row["pocp"]), problem)
    return tables


def _eps_value(label: str) -> float | None:
    from minnets.robustness.adversarial import parse_eps

    return parse_eps(label)


def _corruption_cells(rows: Sequence[Row]) -> dict[str, dict[str, Cell]]:
    from minnets.robustness.corruptions import BENCHMARK, CORRUPTIONS

    by_level = {(str(row["corruption"]), int(row["severity"])): row for row in rows}
    cells: dict[str, Cell] = {}

    def mean(keys: list[tuple[str, int]]) -> Cell | None:
        if not keys or any(key not in by_level for key in keys):
            return None
        return Cell(*(sum(float(by_level[k][m]) for k in keys) / len(keys) for m in METRICS))

    severities = sorted({s for _, s in by_level})
    for name in CORRUPTIONS:
        cell = mean([(name, s) for s in severities if (name, s) in by_level])
        if cell is not None:
            cells[name] = cell
    for s in severities:
        cell = mean([(name, s) for name in BENCHMARK])
        if cell is not None:
            cells[f"severity {s}, mean of 15"] = cell
    for label, names in (("mean of 15", BENCHMARK), ("mean of 19", CORRUPTIONS)):
        cell = mean([(name, s) for name in names for s in severities])
        if cell is not None:
            cells[label] = cell
    return {"CIFAR-10-C": cells}


def _severity_value(label: str) -> float | None:
    return float(label.split()[1].rstrip(",")) if label.startswith("severity ") else None


def _eps_axis(table: str) -> tuple[float, str]:
    return (255.0, "eps (in 1/255)") if table.endswith("Linf") else (1.0, "eps (L2)")


VIEWS: dict[str, View] = {
    "adversarial": View("Adversarial robustness", "eps", _adversarial_cells, _eps_value, _eps_axis),
    "corruptions": View("CIFAR-10-C corruptions", "corruption", _corruption_cells, _severity_value,
                        lambda table: (1.0, "severity (mean of the 15 corruptions)")),
}


@dataclass
class _ModelCells:
    group: ModelGroup
    runs: int  # seeds with results
    cells: dict[str, dict[str, list[Cell]]]  # table -> label -> one Cell per seed
    rows: list[Sequence[Row]]  # each seed's CSV rows


def _collect(experiment: Experiment, name: str) -> tuple[list[_ModelCells], list[str]]:
    """Every model's cells over its seeds, and the runs whose CSV could not be read."""
    suite = get_suite(name)
    view = VIEWS[name]
    models, damaged = [], []
    for group in experiment.models:
        found = _ModelCells(group, 0, {}, [])
        for run in group.runs:
            if not suite_csv(run.path, suite).is_file():
                continue
            try:
                rows = read_suite_csv(run.path, suite)
            except MinnetsError as error:
                damaged.append(f"{run.name}: {error}")
                continue
            found.runs += 1
            found.rows.append(rows)
            for table, cells in view.cells(rows).items():
                for label, cell in cells.items():
                    found.cells.setdefault(table, {}).setdefault(label, []).append(cell)
        models.append(found)
    return models, damaged


def _pairs(models: list[_ModelCells]) -> list[_ModelCells]:
    """Models ordered as the paper pairs them: each baseline, then its Min-Net; others after."""
    return sorted(models, key=lambda m: (m.group.family is None, m.group.family or "", m.group.depth or 0,
                                         bool(m.group.min_net), m.group.model))


def _mean(cells: list[Cell], metric: str) -> Stats:
    return Stats.of([getattr(cell, metric) for cell in cells])


def _mce(model: _ModelCells, reference: _ModelCells) -> float | None:
    """mCE (%) of ``model`` against ``reference`` from their seed-mean rows (see corruptions.summarize)."""
    from minnets.robustness.corruptions import summarize

    return summarize(_seed_means(model.rows), _seed_means(reference.rows)).get("mce")


def _seed_means(per_seed: list[Sequence[Row]]) -> list[Row]:
    """One row per (corruption, severity) with the test error averaged over the seeds that have it."""
    errors: dict[tuple[str, int], list[float]] = {}
    for rows in per_seed:
        for row in rows:
            errors.setdefault((str(row["corruption"]), int(row["severity"])), []).append(float(row["test_err"]))
    return [{"corruption": c, "severity": s, "test_err": sum(v) / len(v)} for (c, s), v in errors.items()]


def suite_sections(experiment: Experiment, out_dir: Path, csv_rows: dict[str, list[dict[str, Any]]],
                   fmt: Callable[..., str], md_table: Callable[[list[str], list[list[str]]], list[str]],
                   ) -> list[str]:
    """Markdown lines of every suite's section for one experiment; figures and CSV rows as side effects.

    ``csv_rows[suite]`` collects the rows of ``<suite>_summary.csv`` over experiments. ``fmt``
    and ``md_table`` are the report's number and table formatters.
    """
    lines = ["### Robustness beyond JPEG", ""]
    for name in REPORT_SUITES:
        view = VIEWS[name]
        lines += [f"#### {view.title} (`{name}.csv`)", ""]
        try:
            models, damaged = _collect(experiment, name)
        except MinnetsError as error:  # the suite is not installed here
            lines += [f"**missing**: {error}.", ""]
            continue
        lines += [f"Unreadable `{name}.csv` (not counted): {problem}" for problem in damaged]
        present = [m for m in _pairs(models) if m.runs]
        if not present:
            lines += [f"**missing**: no run has {name} results yet (run `minnets robustness RUN_DIR --suite "
                      f"{name}` on finished runs).", ""]
            continue
        absent = [m.group.model for m in _pairs(models) if not m.runs]
        if absent:
            lines += [f"**missing** for {', '.join(absent)} (no `{name}.csv` yet).", ""]
        tables = list(dict.fromkeys(t for m in present for t in m.cells))
        for table in tables:
            lines += _table(experiment, name, table, present, view, csv_rows, fmt, md_table)
            figure = f"{name}_{experiment.slug}_{slug(table)}.png"
            if _figure_for(table, present, view, out_dir / figure):
                lines += [f"![{view.title}: {table}]({figure})", ""]
        lines += [f"Std over seeds and every level: [{name}_summary.csv]({name}_summary.csv).", ""]
    return lines


def _table(experiment: Experiment, name: str, table: str, models: list[_ModelCells], view: View,
           csv_rows: dict[str, list[dict[str, Any]]], fmt: Callable[..., str],
           md_table: Callable[[list[str], list[list[str]]], list[str]]) -> list[str]:
    labels = list(dict.fromkeys(label for m in models for label in m.cells.get(table, {})))
    header = [view.level_name] + [f"{m.group.model} {what}" for m in models for what in ("err", "POCP")]
    body, problems = [], []
    for label in labels:
        line = [label]
        for m in models:
            cells = m.cells.get(table, {}).get(label, [])
            flagged = sorted({c.problem for c in cells if c.problem})
            mark = f" ({UNRELIABLE})" if flagged else ""
            problems += [f"{m.group.model}, {view.level_name} {label}: {p}" for p in flagged]
            stats = {metric: _mean(cells, metric) for metric in METRICS}
            line += [fmt(stats["test_err"].mean, missing="missing") + mark, fmt(stats["pocp"].mean, missing="missing")]
            csv_rows.setdefault(name, []).append({
                "experiment": experiment.title, "model": m.group.model, "table": table, "level": label,
                "seeds": stats["test_err"].n, **{f"{metric}_{s}": getattr(stats[metric], s)
                                                 for metric in METRICS for s in ("mean", "std")},
                "reliability": UNRELIABLE if flagged else "passed"})
        body.append(line)
    lines = [f"{table}: test error and POCP (%), mean over seeds ({', '.join(f'{m.group.model}: {m.runs}' for m in models)} "
             "seeds)", "", *md_table(header, body), ""]
    if name == "corruptions":
        lines += _mce_lines(models, fmt)
    if problems:
        lines += ["Failed sanity checks (the numbers above are then not trustworthy robustness claims):", ""]
        lines += [f"- {problem}" for problem in problems] + [""]
    return lines


def _mce_lines(models: list[_ModelCells], fmt: Callable[..., str]) -> list[str]:
    baselines = {(m.group.family, m.group.depth): m for m in models if m.group.min_net is False}
    lines = []
    for m in models:
        reference = baselines.get((m.group.family, m.group.depth))
        if not m.group.min_net or reference is None:
            continue
        mce = _mce(m, reference)
        lines.append(f"- {m.group.model}: mCE {fmt(mce, missing='missing (needs all 15)')} % relative to "
                     f"{reference.group.model} (100 % = as robust as the baseline).")
    return lines + [""] if lines else []


def _figure_for(table: str, models: list[_ModelCells], view: View, path: Path) -> bool:
    """Test error and POCP against the level, a line per model (baseline dashed black, Min-Net blue)."""
    series = []
    for m in models:
        points = sorted((x, cells) for label, cells in m.cells.get(table, {}).items()
                        if (x := view.x_value(label)) is not None)
        if points:
            series.append((m, points))
    if not series:
        return False
    fig = _figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    markers = "odsv^<>p*h"
    scale, x_label = view.x_axis(table)
    flagged_label = f"{UNRELIABLE} (a sanity check failed)"
    for index, (m, points) in enumerate(series):
        style = _style(bool(m.group.min_net))
        xs = [x * scale for x, _ in points]
        bad = [any(c.problem for c in cells) for _, cells in points]
        for ax, metric in zip(axes, METRICS):
            ys = [_mean(cells, metric).mean for _, cells in points]
            ax.plot(xs, ys, color=style["color"], linestyle=style["linestyle"], marker=markers[index % len(markers)],
                    label=f"{m.group.model} ({style['name']})")
            if any(bad):
                ax.plot([x for x, b in zip(xs, bad) if b], [y for y, b in zip(ys, bad) if b], "x", color="tab:red",
                        markersize=12, markeredgewidth=2, label=flagged_label)
        if any(bad):
            flagged_label = None  # one legend entry for the red crosses
    for ax, metric in zip(axes, METRICS):
        ax.set_xlabel(x_label)
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
    axes[0].set_title(table, loc="left", fontsize="medium")
    axes[1].legend(fontsize="small")
    _save(fig, path)
    return True
