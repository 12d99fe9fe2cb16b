"""The report's robustness sections: one code path for every suite's tables and figures.

For each suite (:data:`VIEWS`) and experiment, the runs' ``<suite>.csv`` rows are averaged
over seeds per model and level, and shown with Min-Nets beside their baselines: tables of test
error and POCP (paper Eq. 5) per level, figures of both against the level, and CSVs with the
std over seeds. What a suite adds is only how its levels are labelled and summarised
(:class:`View`):

* ``jpeg`` (paper Section 3.2): a table per JPEG mode, levels = quality. The paper published
  this suite, so it is laid out as the paper lays it out (:class:`PaperLayout`): Tables 2-5,
  one per family and metric (DenseNet before ResNet), a row per model with the published
  numbers and Δ = ours - paper beneath ours (paper mode on CIFAR-10 only), and Figures 3 and
  4, POCP and test error against the quality, a panel per depth with the paper's curves.
* ``adversarial``: one table per (attack, norm), a row per eps; a level with a failed sanity
  check in any seed is marked **unreliable** and the failed checks are listed under the table.
* ``corruptions``: a row per corruption (mean over its severities), rows for each severity
  averaged over the 15 benchmark corruptions, and the means over the 15 and the 19 as
  RobustBench reports them (Hendrycks & Dietterich 2019); the mCE of each Min-Net with its
  paired baseline (same family and depth) as the reference
  (:func:`minnets.robustness.corruptions.summarize`); and one figure of a test image under
  every corruption at every severity (:func:`corruption_grid`).

A suite no run has results for is marked **missing**, with the command that makes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minnets.errors import MinnetsError
from minnets.reports import published
from minnets.reports.figures import METRIC_LABELS, _figure, _figure_legend, _save, _style
from minnets.reports.runs import Run
from minnets.reports.tables import (
    DEPTH_SYMBOLS,
    FAMILY_LABELS,
    NA,
    Experiment,
    ModelGroup,
    Stats,
    difference,
    paper_mode_first,
    paper_value,
)
from minnets.robustness.evaluate import read_suite_csv, suite_csv
from minnets.robustness.jpeg import JpegSuite
from minnets.robustness.suite import Row, Suite, get_suite
from minnets.text import slug

BEYOND_JPEG = ("corruptions", "adversarial")  # the suites of the section "Robustness beyond JPEG"
METRICS = ("test_err", "pocp")
METRIC_NAMES = {"test_err": "test error", "pocp": "POCP"}
UNRELIABLE = "unreliable"
GRID_FIGURE = "corruptions_grid.png"

Formatter = Callable[..., str]
MarkdownTable = Callable[[list[str], list[list[str]]], list[str]]
Published = Callable[[ModelGroup, str, str, str], float | str | None]


@dataclass(frozen=True)
class Cell:
    """One level of one run: its numbers and, when a check failed, why."""

    test_err: float
    pocp: float
    problem: str = ""


@dataclass(frozen=True)
class PaperLayout:
    """How the paper shows a suite it published (JPEG: Tables 2-5, Figures 3 and 4).

    ``published(group, table, metric, level)`` is the paper's number for a model: ``NA`` where
    the paper has none that applies, ``None`` where it is unpublished.
    """

    tables: Mapping[tuple[str, str], int]  # (family, metric) -> number of the paper's table
    figures: Mapping[str, int]  # metric -> number of the paper's figure, in figure order
    levels: tuple[str, ...]  # the published levels, in the paper's column order
    clean: str  # the unperturbed level: its POCP is 0 by definition, so POCP tables omit it
    published: Published
    csv: Mapping[str, str]  # metric -> CSV file of its tables
    table_name: str  # what a table of the view is ("mode"): headings and the CSV column
    level_text: str  # what a level is, in words ("JPEG quality")
    column: Callable[[str], str]  # level -> column header
    note: str  # second line of each figure's title, formatted with ``table``


@dataclass(frozen=True)
class View:
    """How a suite's rows become tables: ``cells(rows)`` -> {table: {row label: Cell}} per run."""

    title: str
    level_name: str  # first column of the tables and the CSV column of the level
    cells: Callable[[Sequence[Row]], dict[str, dict[str, Cell]]]
    x_value: Callable[[str], float | None]  # where a row label sits on the x axis (None: not drawn)
    x_axis: Callable[[str], tuple[float, str]]  # table -> (scale of x_value, x axis label)
    x_limits: tuple[float, float] | None = None  # e.g. (103, 7): high to low
    x_ticks: tuple[float, ...] | None = None
    order: Callable[[list[str]], list[str]] = list  # the tables in the order they are shown
    options: Mapping[str, Any] = field(default_factory=dict)  # the suite's constructor options
    paper: PaperLayout | None = None  # set for a suite the paper published: laid out as there
    notes: Callable[[list[_ModelCells], Formatter], list[str]] | None = None  # lines under each table


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


def _mce_lines(models: list[_ModelCells], fmt: Formatter) -> list[str]:
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


def _severity_value(label: str) -> float | None:
    return float(label.split()[1].rstrip(",")) if label.startswith("severity ") else None


def _eps_axis(table: str) -> tuple[float, str]:
    return (255.0, "eps (in 1/255)") if table.endswith("Linf") else (1.0, "eps (L2)")


def _jpeg_cells(rows: Sequence[Row]) -> dict[str, dict[str, Cell]]:
    tables: dict[str, dict[str, Cell]] = {}
    for row in rows:
        tables.setdefault(str(row["mode"]), {})[str(row["quality"])] = Cell(float(row["test_err"]), float(row["pocp"]))
    return tables


def _jpeg_published(group: ModelGroup, table: str, metric: str, level: str) -> float | str | None:
    """Paper Tables 2-5 (mean over seeds, one decimal), in the paper's JPEG mode only."""
    if table != published.paper_jpeg_mode():
        return NA
    if metric == "pocp" and level == "100":  # the uncompressed test set changes no prediction
        return NA if group.published is None else 0.0
    return paper_value(group, "jpeg_test_err" if metric == "test_err" else "pocp", int(level))


JPEG_LAYOUT = PaperLayout(
    tables={("densenet", "test_err"): 2, ("densenet", "pocp"): 3, ("resnet", "test_err"): 4, ("resnet", "pocp"): 5},
    figures={"pocp": 3, "test_err": 4},
    levels=tuple(str(q) for q in published.qualities()),
    clean="100",
    published=_jpeg_published,
    csv={"test_err": "jpeg_error.csv", "pocp": "jpeg_pocp.csv"},
    table_name="mode",
    level_text="JPEG quality",
    column=lambda level: f"Q={level}" if level == "100" else level,
    note="JPEG mode '{table}'; Q=100 is the uncompressed test set",
)

VIEWS: dict[str, View] = {
    "jpeg": View("JPEG robustness", "quality", _jpeg_cells, float, lambda table: (1.0, "JPEG quality Q"),
                 x_limits=(103, 7), x_ticks=tuple(published.qualities()),
                 order=lambda tables: paper_mode_first(set(tables)), options={"cache": False}, paper=JPEG_LAYOUT),
    "corruptions": View("CIFAR-10-C corruptions", "corruption", _corruption_cells, _severity_value,
                        lambda table: (1.0, "severity (mean of the 15 corruptions)"), notes=_mce_lines),
    "adversarial": View("Adversarial robustness", "eps", _adversarial_cells, _eps_value, _eps_axis),
}


def csv_files() -> list[str]:
    """The CSV files of every suite's tables (written, or removed when empty, with every report)."""
    return [file for name, view in VIEWS.items()
            for file in (view.paper.csv.values() if view.paper else [f"{name}_summary.csv"])]


@dataclass
class _ModelCells:
    group: ModelGroup
    runs: int  # seeds with results
    cells: dict[str, dict[str, list[Cell]]]  # table -> label -> one Cell per seed
    rows: list[Sequence[Row]]  # each seed's CSV rows
    seeds: dict[str, int] = field(default_factory=dict)  # table -> seeds with results in it


def _collect(experiment: Experiment, name: str) -> tuple[list[_ModelCells], list[str]]:
    """Every model's cells over its seeds (in the experiment's order), and the runs whose CSV could not be read."""
    view = VIEWS[name]
    suite = get_suite(name, **view.options)
    models, damaged = [], []
    for group in experiment.models:
        found = _ModelCells(group, 0, {}, [])
        for run in group.runs:
            try:
                rows = _suite_rows(run, suite)
            except MinnetsError as error:
                damaged.append(f"{run.name}: {error}")
                continue
            if rows is None:
                continue
            found.runs += 1
            found.rows.append(rows)
            for table, cells in view.cells(rows).items():
                found.seeds[table] = found.seeds.get(table, 0) + 1
                for label, cell in cells.items():
                    found.cells.setdefault(table, {}).setdefault(label, []).append(cell)
        models.append(found)
    return models, damaged


def _suite_rows(run: Run, suite: Suite) -> Sequence[Row] | None:
    """The run's rows of ``suite``, None without its CSV; jpeg.csv was read with the run (``Run.jpeg``)."""
    if suite.name == JpegSuite.name:
        return None if run.jpeg is None else [row for by_quality in run.jpeg.values() for row in by_quality.values()]
    if not suite_csv(run.path, suite).is_file():
        return None
    return read_suite_csv(run.path, suite)


def _pairs(models: list[_ModelCells]) -> list[_ModelCells]:
    """Models ordered as the paper pairs them: each baseline, then its Min-Net; others after."""
    return sorted(models, key=lambda m: (m.group.family is None, m.group.family or "", m.group.depth or 0,
                                         bool(m.group.min_net), m.group.model))


def _mean(cells: list[Cell], metric: str) -> Stats:
    return Stats.of([getattr(cell, metric) for cell in cells])


def suite_sections(experiment: Experiment, out_dir: Path, csv_rows: dict[str, list[dict[str, Any]]],
                   fmt: Formatter, md_table: MarkdownTable, extra: Mapping[str, list[str]] | None = None,
                   ) -> list[str]:
    """Markdown lines of the section "Robustness beyond JPEG" (:data:`BEYOND_JPEG`) for one experiment.

    ``extra[suite]``: lines shown at the top of that suite's part (the corruption figure).
    """
    lines = ["### Robustness beyond JPEG", ""]
    for name in BEYOND_JPEG:
        lines += suite_section(name, experiment, out_dir, csv_rows, fmt, md_table, (extra or {}).get(name, []))
    return lines


def suite_section(name: str, experiment: Experiment, out_dir: Path, csv_rows: dict[str, list[dict[str, Any]]],
                  fmt: Formatter, md_table: MarkdownTable, extra: Sequence[str] = ()) -> list[str]:
    """Markdown lines of one suite's tables and figures for one experiment; figures and CSV rows as side effects.

    ``csv_rows[file]`` collects the rows of each CSV file of :func:`csv_files` over experiments.
    ``fmt`` and ``md_table`` are the report's number and table formatters.
    """
    view = VIEWS[name]
    layout = view.paper
    if layout is None:
        lines = [f"#### {view.title} (`{name}.csv`)", ""]
    else:
        numbers = sorted(layout.tables.values())
        lines = [f"### Tables {numbers[0]} to {numbers[-1]}: {view.title}", ""]
    lines += list(extra)
    try:
        models, damaged = _collect(experiment, name)
    except MinnetsError as error:  # the suite is not installed here
        return lines + [f"**missing**: {error}.", ""]
    lines += [f"Unreadable `{name}.csv` (not counted): {problem}" for problem in damaged]
    present = [m for m in _pairs(models) if m.runs]
    if not present:
        command = get_suite(name, **view.options).command("RUN_DIR")
        return lines + [f"**missing**: no run has {name} results yet (run `{command}` on finished runs).", ""]
    tables = view.order(list(dict.fromkeys(t for m in present for t in m.cells)))
    if layout is not None:  # every model of the experiment is a row, the absent ones marked missing
        figures: list[str] = []
        for table in tables:
            lines += _paper_tables(experiment, name, table, models, view, layout, csv_rows, fmt, md_table)
            figures += _paper_figures(experiment, table, models, view, layout, out_dir)
        if figures:
            numbers = " and ".join(str(n) for n in layout.figures.values())
            what = " and ".join(METRIC_NAMES[m] for m in layout.figures)
            lines += [f"### Figures {numbers}: {what} against {layout.level_text}", "", *figures]
        return lines
    absent = [m.group.model for m in _pairs(models) if not m.runs]
    if absent:
        lines += [f"**missing** for {', '.join(absent)} (no `{name}.csv` yet).", ""]
    for table in tables:
        lines += _table(experiment, name, table, present, view, csv_rows, fmt, md_table)
        figure = f"{name}_{experiment.slug}_{slug(table)}.png"
        if _draw(out_dir / figure, [[_Panel(table, "test_err", present), _Panel("", "pocp", present)]], view, table):
            lines += [f"![{view.title}: {table}]({figure})", ""]
    lines += [f"Std over seeds and every level: [{name}_summary.csv]({name}_summary.csv).", ""]
    return lines


def _table(experiment: Experiment, name: str, table: str, models: list[_ModelCells], view: View,
           csv_rows: dict[str, list[dict[str, Any]]], fmt: Formatter, md_table: MarkdownTable) -> list[str]:
    """One table with a row per level and a column pair (error, POCP) per model."""
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
            csv_rows.setdefault(f"{name}_summary.csv", []).append({
                "experiment": experiment.title, "model": m.group.model, "table": table, "level": label,
                "seeds": stats["test_err"].n, **{f"{metric}_{s}": getattr(stats[metric], s)
                                                 for metric in METRICS for s in ("mean", "std")},
                "reliability": UNRELIABLE if flagged else "passed"})
        body.append(line)
    lines = [f"{table}: test error and POCP (%), mean over seeds ({', '.join(f'{m.group.model}: {m.runs}' for m in models)} "
             "seeds)", "", *md_table(header, body), ""]
    if view.notes is not None:
        lines += view.notes(models, fmt)
    if problems:
        lines += ["Failed sanity checks (the numbers above are then not trustworthy robustness claims):", ""]
        lines += [f"- {problem}" for problem in problems] + [""]
    return lines


def _paper_tables(experiment: Experiment, name: str, table: str, models: list[_ModelCells], view: View,
                  layout: PaperLayout, csv_rows: dict[str, list[dict[str, Any]]], fmt: Formatter,
                  md_table: MarkdownTable) -> list[str]:
    """The paper's tables of one of the view's tables: one per family and metric, in the paper's order
    (other models last), a row per model with the published numbers and Δ beneath ours."""
    keys = sorted(((family, metric) for family in experiment.families() for metric in METRICS),
                  key=lambda key: layout.tables.get(key, 99))
    lines: list[str] = []
    rows: dict[tuple[str | None, str], list[dict[str, Any]]] = {}  # (family, metric) -> CSV rows
    for family, metric in keys:
        own = [m for m in models if m.group.family == family]
        levels = [level for level in layout.levels if not (metric == "pocp" and level == layout.clean)]
        number = layout.tables.get((family, metric))
        csv_name = layout.csv[metric]
        lines += [f"#### {f'Table {number}' if number else 'Other models'}: {FAMILY_LABELS.get(family, 'other models')}, "
                  f"{METRIC_NAMES[metric]} (%) per {layout.level_text}, {layout.table_name} `{table}`", ""]
        header = ["model", "", "seeds"] + [layout.column(level) for level in levels]
        body = []
        for m in own:
            group = m.group
            stats = [_mean(m.cells.get(table, {}).get(level, []), metric) for level in levels]
            paper = [layout.published(group, table, metric, level) for level in levels]
            diff = [difference(s.mean, p) for s, p in zip(stats, paper)]
            seeds = str(m.seeds.get(table, 0)) + (f"/{len(group.expected_seeds)}" if group.expected_seeds else "")
            body.append([group.model, "ours", seeds, *(fmt(s.mean, missing="missing") for s in stats)])
            if any(p != NA for p in paper):
                body.append(["", "paper", "", *(fmt(p, digits=1) for p in paper)])
                body.append(["", "Δ", "", *(fmt(d, signed=True) for d in diff)])
            rows.setdefault((family, metric), []).extend({
                "dataset": experiment.dataset, "setting": experiment.setting, layout.table_name: table,
                "paper_table": number or "", "family": family or "other", "depth": group.depth, "model": group.model,
                "min_net": group.min_net, view.level_name: level, "n_seeds": s.n, "mean": s.mean, "std": s.std,
                "paper": p, "diff": d} for level, s, p, d in zip(levels, stats, paper, diff))
        lines += [*md_table(header, body), "", f"All numbers, with std over seeds: [{csv_name}]({csv_name}).", ""]
    for key in sorted(rows, key=lambda key: experiment.families().index(key[0])):
        csv_rows.setdefault(layout.csv[key[1]], []).extend(rows[key])  # the CSVs in the experiment's model order
    other = [label for label in dict.fromkeys(label for m in models for label in m.cells.get(table, {}))
             if label not in layout.levels]
    if other:
        lines += [f"Also evaluated in {layout.table_name} `{table}`, but not a column of the paper's tables or "
                  f"figures: {', '.join(layout.column(label) for label in other)} (see the runs' `{name}.csv`).", ""]
    return lines


def _paper_figures(experiment: Experiment, table: str, models: list[_ModelCells], view: View,
                   layout: PaperLayout, out_dir: Path) -> list[str]:
    """The paper's figures of one of the view's tables: one per metric, a row per family with
    results, a panel per depth holding its baseline and Min-Net (paper Figures 3 and 4)."""
    families = [f for f in experiment.families()
                if f is not None and any(m.seeds.get(table) for m in models if m.group.family == f)]
    grid_of = {family: [[m for m in models if m.group.family == family and m.group.depth == depth]
                        for depth in sorted({m.group.depth for m in models if m.group.family == family})]
               for family in families}
    lines = []
    for metric, number in layout.figures.items():
        panels = [[_Panel(f"{FAMILY_LABELS[family]} {DEPTH_SYMBOLS[family]}={pair[0].group.depth}", metric,
                          sorted(pair, key=lambda m: bool(m.group.min_net)), named=True)
                   for pair in grid_of[family]]
                  for family in families]
        name = f"fig{number}_{metric}_vs_{view.level_name}_{experiment.slug}_{slug(table)}.png"
        what = "changed predictions (POCP)" if metric == "pocp" else METRIC_NAMES[metric]
        title = f"Figure {number}: {what} against {layout.level_text} on {experiment.title}\n" + layout.note.format(
            table=table)
        if _draw(out_dir / name, panels, view, table, title, layout):
            lines += [f"![Figure {number}: {METRIC_NAMES[metric]} against {layout.level_text}, "
                      f"{layout.table_name} {table}]({name})", ""]
    return lines


@dataclass(frozen=True)
class _Panel:
    title: str
    metric: str
    models: list[_ModelCells]
    named: bool = False  # the title names the panel's models (a family and depth)


def _draw(path: Path, panels: list[list[_Panel]], view: View, table: str, title: str | None = None,
          layout: PaperLayout | None = None) -> bool:
    """A grid of panels, each a metric against the level, a line per model (baseline dashed black,
    Min-Net blue), one legend below; with ``layout`` the paper's numbers faint and dotted.

    With ``layout`` only its levels are drawn. Where a panel's title names its models and it holds one of each kind, the legend names the
    kind only. Returns False (and draws nothing) when no model has a level to draw.
    """
    def points(m: _ModelCells) -> list[tuple[float, list[Cell]]]:
        return sorted((x, cells) for label, cells in m.cells.get(table, {}).items()
                      if (layout is None or label in layout.levels) and (x := view.x_value(label)) is not None)

    if not any(points(m) for row in panels for panel in row for m in panel.models):
        return False
    ncols = max(len(row) for row in panels)
    fig = _figure(figsize=(max(3.6 * ncols, 8.0), 3.3 * len(panels) + 1.2))
    axes = fig.subplots(len(panels), ncols, squeeze=False)
    scale, x_label = view.x_axis(table)
    markers = "Dosv^<>p*h"
    handles: dict[str, Any] = {}
    for r, row in enumerate(panels):
        for c, ax in enumerate(axes[r]):
            if c >= len(row):
                ax.set_visible(False)
                continue
            panel = row[c]
            by_kind = panel.named and max(Counter(bool(m.group.min_net) for m in panel.models).values(), default=0) <= 1
            absent = []
            for index, m in enumerate(panel.models):
                style = _style(bool(m.group.min_net))
                name = style["name"] if by_kind else f"{m.group.model} ({style['name']})"
                if layout is not None:
                    paper = [(view.x_value(level) * scale, value) for level in layout.levels
                             if isinstance(value := layout.published(m.group, table, panel.metric, level), float | int)]
                    if paper:
                        (line,) = ax.plot(*zip(*paper), color=style["color"], linestyle=":", marker="o", markersize=4,
                                          markerfacecolor="none", alpha=0.45, zorder=3)
                        handles[f"paper: {name}"] = line
                drawn = points(m)
                if not drawn:
                    absent.append(name)
                    continue
                xs = [x * scale for x, _ in drawn]
                ys = [_mean(cells, panel.metric).mean for _, cells in drawn]
                (line,) = ax.plot(xs, ys, color=style["color"], linestyle=style["linestyle"],
                                  marker="D" if by_kind else markers[index % len(markers)], markersize=4)
                handles[f"ours: {name}, mean over seeds"] = line
                bad = [any(cell.problem for cell in cells) for _, cells in drawn]
                if any(bad):
                    (line,) = ax.plot([x for x, b in zip(xs, bad) if b], [y for y, b in zip(ys, bad) if b], "x",
                                      color="tab:red", markersize=12, markeredgewidth=2)
                    handles[f"{UNRELIABLE} (a sanity check failed)"] = line
            if absent:
                ax.text(0.04, 0.96, "no results yet: " + ", ".join(absent), transform=ax.transAxes, va="top",
                        fontsize=8, color="gray")
            ax.set_title(panel.title)
            ax.set_xlabel(x_label)
            if c == 0 or row[c - 1].metric != panel.metric:
                ax.set_ylabel(METRIC_LABELS[panel.metric])
            if view.x_limits is not None:
                ax.set_xlim(*view.x_limits)
            if view.x_ticks is not None:
                ax.set_xticks(view.x_ticks)
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _figure_legend(fig, handles)
    _save(fig, path)
    return True


def corruption_grid(out_dir: Path, image: np.ndarray | None, title: str, problem: str = "", index: int = 0,
                    frost_dirs: Sequence[Path] = ()) -> list[str]:
    """Lines for the corruptions section: ``image`` (test image ``index``) under every corruption at
    severities 1-5.

    Drawn once per report as :data:`GRID_FIGURE` (seed 0, as the regenerated CIFAR-10-C is made)
    by :func:`minnets.robustness.corruptions.plot_corruption_grid`. Frost needs its six pictures:
    the first of ``frost_dirs`` (then the corruption cache's) holding them is used, else frost is
    left out and a line says so. Without an ``image``, one line says why (``problem``).
    """
    if image is None:
        return [f"**The corruption figure is missing**: {problem}", ""]
    try:
        from minnets.robustness import cifar10c
        from minnets.robustness.corruptions import CORRUPTIONS, frost_pictures, plot_corruption_grid
    except ImportError as error:
        return [f"**The corruption figure is missing**: the corruptions cannot be made here ({error}).", ""]
    folders = [*frost_dirs, cifar10c.default_frost_dir()]
    frost, reasons = None, []
    for folder in folders:
        try:
            frost_pictures(folder)
        except MinnetsError as error:
            reasons.append(str(error))
            continue
        frost = folder
        break
    names = [name for name in CORRUPTIONS if frost is not None or name != "frost"]
    try:
        plot_corruption_grid(out_dir / GRID_FIGURE, image, index=index, frost_dir=frost, corruptions=names)
    except MinnetsError as error:
        return [f"**The corruption figure is missing**: {error}", ""]
    lines = [f"![CIFAR-10-C: {title} under every corruption]({GRID_FIGURE})", "",
             f"{title}: a row per corruption, the clean image then severities 1 to 5 (seed 0, as "
             "`minnets corruptions make` regenerates them); \"(approx.)\" marks the numpy stand-in for "
             "ImageMagick.", ""]
    if frost is None:
        lines += [f"Frost is not shown: its six pictures are not in {' or '.join(f'`{f}`' for f in folders)} "
                  f"({reasons[0]}); `minnets corruptions make --download` fetches them into the corruption cache.", ""]
    return lines
