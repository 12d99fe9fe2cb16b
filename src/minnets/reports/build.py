"""``build_report``: report.md with the paper's tables and figures, CSVs and PNGs, from runs.

The report is meant to be rebuilt at any time during a sweep, so everything that is not there
yet (seeds, models, JPEG results, unfinished training) is marked rather than fatal.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from minnets import __version__
from minnets.data import ENV_VAR, ImageDataset, load_dataset
from minnets.errors import MinnetsError
from minnets.reports import figures, published
from minnets.reports.analysis import analysis_sections, and_operator_sections
from minnets.reports.runs import SETTING_KEYS, Run, find_runs
from minnets.reports.suites import corruption_grid, csv_files, suite_section, suite_sections
from minnets.reports.tables import (
    FAMILY_LABELS,
    NA,
    STATS,
    Experiment,
    build_experiments,
    paper_mode_first,
    table1_rows,
)
from minnets.text import plural

EXAMPLE_INDEX = 0  # the test image shown in Figure 5 and under every corruption
TestSets = dict[str, tuple[ImageDataset | None, Path | None, str]]  # dataset -> (data, its folder, why absent)
DEMO_DATASETS = ("shapes10",)  # generated for demos and tests; its numbers measure nothing the paper did
CONVENTIONS = (
    "Test errors and POCP (percentage of changed predictions) are in percent. *mean*, *std*, "
    "*min*, *max* are over seeds; *std* is the sample standard deviation (ddof=1). *paper* "
    "columns are the published numbers (the paper's Figure 2 and Tables 1-5, and the parameter "
    "counts of its models) and "
    "*Δ* = ours - paper. **missing**: no finished run or result yet; **–**: not published "
    "(the paper gives no min, max or min-over-epochs numbers for the ResNets) or undefined "
    "(the std of one seed); **n/a**: the paper has no comparable number (a dataset other than "
    "CIFAR-10, a model the paper did not train, or a JPEG mode other than `{mode}`)."
)


def build_report(runs_root: Path, out_dir: Path, data_root: Path | None = None) -> Path:
    """Write report.md, its figures and CSVs for every run below ``runs_root``; returns report.md.

    ``data_root`` is where the runs' dataset lives, for the example image of Figure 5; by
    default the folder the runs themselves recorded (their config's ``data``), else $MINNETS_DATA.
    """
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    runs, skipped = find_runs(runs_root)
    if not runs:
        reason = f" ({len(skipped)} unreadable, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise MinnetsError(
            f"no run directories found under {runs_root}{reason}; pass the folder that holds "
            "your run directories (each has a config.json)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    experiments = build_experiments(runs)
    lines = _header(runs_root, runs, skipped, experiments)
    table1 = []
    suite_rows: dict[str, list[dict[str, Any]]] = {name: [] for name in csv_files()}  # CSV file -> rows
    analysis_rows: dict[str, list[dict[str, Any]]] = {}
    test_sets: TestSets = {}
    extra = {"corruptions": _corruption_grid(experiments, data_root, out_dir, test_sets)}
    for experiment in experiments:
        rows = table1_rows(experiment)
        table1 += rows
        lines += _experiment_section(experiment, rows, out_dir, suite_rows)
        lines += suite_sections(experiment, out_dir, suite_rows, _fmt, _md_table, extra)
    lines += and_operator_sections(runs, out_dir, analysis_rows, _fmt, _md_table)
    lines += analysis_sections(runs, out_dir, analysis_rows, _fmt, _md_table)
    lines += _figure5_section(experiments, data_root, out_dir, test_sets)
    lines += _missing_section(experiments, skipped)
    lines += _runs_section(runs)
    _write_csv(out_dir / "table1.csv", table1)
    _write_csv(out_dir / "runs.csv", [_run_row(run) for run in runs])
    for name, rows in suite_rows.items():
        _write_csv(out_dir / name, rows)
    for name, summary in analysis_rows.items():
        _write_csv(out_dir / f"{name}_summary.csv", summary)
    report = out_dir / "report.md"
    _write_text(report, "\n".join(lines) + "\n")
    return report


def _header(runs_root: Path, runs: list[Run], skipped: list[tuple[str, str]],
            experiments: list[Experiment]) -> list[str]:
    finished = sum(run.finished for run in runs)
    datasets: dict[str, int] = {}
    for run in runs:
        datasets[run.dataset] = datasets.get(run.dataset, 0) + 1
    counts = f"{plural(len(runs), 'run')}: {finished} finished, {len(runs) - finished} unfinished"
    if skipped:
        counts += f", plus {plural(len(skipped), 'unreadable run directory', 'unreadable run directories')} (see Missing)"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Min-Nets report", ""]
    demo = sorted(set(datasets) & set(DEMO_DATASETS))
    if demo:
        lines += [f"**{' and '.join(demo)} is demo data, not a benchmark**: generated images for trying "
                  "the tools quickly; its numbers are not comparable with the paper's, which are on "
                  f"{published.paper_dataset()}.", ""]
    lines += ["Recipes:", ""]
    lines += [f"- {line}" for experiment in experiments for line in _recipe_lines(experiment)]
    return lines + [
        "",
        f"Built by minnets {__version__} on {stamp} from `{runs_root}`.",
        f"{counts}. Datasets: " + ", ".join(f"{d} ({plural(n, 'run')})" for d, n in sorted(datasets.items())) + ".",
        "Every run is one row of [runs.csv](runs.csv); gaps are listed under "
        "[Missing and unfinished](#missing-and-unfinished).",
        "",
        CONVENTIONS.format(mode=published.paper_jpeg_mode()),
        "",
    ]


def _recipe_lines(experiment: Experiment) -> list[str]:
    """What the runs of an experiment did, one line per family: recipe, epochs, images, seeds."""
    lines = []
    for family in experiment.families():
        runs = [run for group in experiment.models if group.family == family for run in group.runs]
        if not runs:
            continue

        def values(key: str) -> str:
            found = sorted({run.config.get(key) for run in runs}, key=lambda v: (v is None, str(v)))
            return " or ".join("?" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for v in found)

        def images(key: str, what: str) -> str:
            counts = {run.config.get(key) for run in runs}
            if counts == {None}:
                return f"all {what} images"
            return "the first " + " or ".join("all" if n is None else f"{n:,}" for n in sorted(
                counts, key=lambda n: (n is None, n))) + f" {what} images"

        seeds = sorted({run.seed for run in runs}, key=lambda s: (s is None, s))
        label = FAMILY_LABELS.get(family, "other models")
        lines.append(f"{experiment.title}, {label}: recipe `{values('recipe')}`, {values('epochs')} epochs, "
                     f"batch {values('batch_size')}, lr {values('lr')}; trained on {images('subset', 'training')}, "
                     f"tested on {images('test_subset', 'test')}; "
                     f"{plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))}), {plural(len(runs), 'run')}.")
    return lines


def _experiment_section(experiment: Experiment, table1: list[dict[str, Any]], out_dir: Path,
                        suite_rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [f"## Experiment: {experiment.title}", ""]
    if experiment.setting:
        lines += [f"Runs with these settings only: {experiment.setting}.", ""]
    if not experiment.paper_applies:
        lines += [f"The paper reports {published.paper_dataset()} only, so this experiment has no paper "
                  "columns.", ""]
    for family in experiment.grid_families:
        grid = published.paper_grid(family)
        lines += [f"The {grid['label']} runs follow the paper's grid (seeds "
                  f"{', '.join(map(str, grid['seeds']))}; {grid['epochs']} epochs); absent "
                  "models and seeds are listed under Missing.", ""]
    lines += _recipe_notes(experiment)
    lines += _table1_markdown(table1, paper=experiment.paper_applies)
    slug = experiment.slug
    fig2 = f"fig2_error_vs_params_{slug}.png"
    lines += ["### Figure 2: test error against parameters", ""]
    if figures.error_vs_params(experiment, out_dir / fig2) is not None:
        lines += [f"![Figure 2: test error against parameters]({fig2})", "",
                  "Diamonds: our mean over seeds; bars: std; shaded: min to max over seeds; "
                  "faint dotted circles: the paper's means.", ""]
    else:
        lines += ["No finished ResNet or DenseNet run yet: nothing to draw.", ""]
    lines += suite_section("jpeg", experiment, out_dir, suite_rows, _fmt, _md_table)
    lines += ["### Training curves", "",
              "Train error (left) and test error (right) after every epoch, one line per seed; baseline "
              "and Min-Net share each panel; faint lines are unfinished runs.", ""]
    for family in experiment.families():
        name = f"curves_{slug}_{family or 'other'}.png"
        figures.training_curves(experiment, family, out_dir / name)
        lines += [f"![Training curves: {FAMILY_LABELS.get(family, 'other models')}]({name})", ""]
    return lines


def _recipe_notes(experiment: Experiment) -> list[str]:
    """Warn where CIFAR-10 runs are shorter or smaller than the paper's, so a large Δ is expected."""
    if not experiment.paper_applies:
        return []
    notes = []
    for family in experiment.families():
        grid = published.paper_grid(family) if family else None
        runs = [run for group in experiment.models if group.family == family for run in group.runs]
        if grid is None or not runs:
            continue
        epochs = sorted({run.config.get("epochs") for run in runs} - {None, grid["epochs"]})
        subsets = sorted({run.config.get("subset") for run in runs} - {None})
        test_subsets = sorted({run.config.get("test_subset") for run in runs} - {None})
        if epochs or subsets or test_subsets:
            what = [f"epochs = {', '.join(map(str, epochs))} (paper: {grid['epochs']})"] if epochs else []
            what += [f"subset = {', '.join(map(str, subsets))} training images (paper: all)"] if subsets else []
            what += [f"test_subset = {', '.join(map(str, test_subsets))} test images (paper: all)"] if test_subsets else []
            notes += [f"**Not the paper's recipe**: {grid['label']} runs with {' and '.join(what)}; "
                      "compare with the paper columns for orientation only.", ""]
    return notes


def _table1_markdown(rows: list[dict[str, Any]], paper: bool) -> list[str]:
    """Table 1 in two parts; ``paper``: with the published numbers and Δ (on the paper's dataset)."""
    lines = ["### Table 1: test error after the last epoch and minimum over all epochs", "",
             "All numbers: [table1.csv](table1.csv).", ""]
    for prefix, title in (("final", "(a) After the last epoch"),
                          ("min", "(b) Minimum over all epochs")):
        header = ["model", "params"] + (["paper params"] if paper else []) if prefix == "final" else ["model"]
        header += ["seeds", *STATS] + ([f"paper {s}" for s in STATS] + ["Δ mean", "Δ std"] if paper else [])
        body = []
        for row in rows:
            cells = [row["model"]]
            if prefix == "final":
                cells += [_fmt_int(row["params"])] + ([_fmt_int(row["paper_params"])] if paper else [])
            cells.append(_seeds_cell(row))
            cells += [_fmt(row[f"{prefix}_{s}"], missing="missing" if s != "std" else "–") for s in STATS]
            if paper:
                cells += [_fmt(row[f"paper_{prefix}_{s}"]) for s in STATS]
                cells += [_fmt(row[f"diff_{prefix}_{s}"], signed=True) for s in ("mean", "std")]
            body.append(cells)
        lines += [f"{title}:", "", *_md_table(header, body), ""]
    return lines


def _seeds_cell(row: dict[str, Any]) -> str:
    cell = f"{row['n_seeds']}/{row['n_expected']}" if row["n_expected"] else str(row["n_seeds"])
    if row["unfinished"]:
        cell += f" (+{row['unfinished']} unfinished)"
    return cell


def _test_set(dataset: str, experiments: list[Experiment], data_root: Path | None,
              loaded: TestSets) -> tuple[ImageDataset | None, Path | None, str]:
    """(data, the folder it came from, "") for ``dataset``, or (None, None, why not); each dataset loaded once.

    The images come from ``data_root`` if given, else from the data folders the runs recorded
    (those of the dataset's own runs first; the first that loads), else from the dataset's
    default ($MINNETS_DATA).
    """
    if dataset in loaded:
        return loaded[dataset]
    ordered = sorted(experiments, key=lambda e: e.dataset != dataset)
    recorded = [run.config.get("data") for e in ordered for run in e.runs]
    roots = [data_root] if data_root is not None else [*dict.fromkeys(r for r in recorded if r), None]
    problems = []
    for root in roots:
        try:
            data = load_dataset(dataset, root=root)
        except (MinnetsError, OSError) as error:
            problems.append(str(error))
            continue
        folder = root if root is not None else os.environ.get(ENV_VAR)
        loaded[dataset] = (data, Path(folder).expanduser() if folder else None, "")
        break
    else:
        loaded[dataset] = (None, None, f"the test images of `{dataset}` could not be loaded "
                           f"({'; '.join(dict.fromkeys(problems))}). Rebuild with `--data DIR` pointing at the dataset.")
    return loaded[dataset]


def _corruption_grid(experiments: list[Experiment], data_root: Path | None, out_dir: Path,
                     loaded: TestSets) -> list[str]:
    """The corruptions section's figure: CIFAR-10 test image EXAMPLE_INDEX under every corruption;
    the frost pictures are looked for beside the data (``frost/``) and in the corruption cache."""
    data, root, problem = _test_set("cifar10", experiments, data_root, loaded)
    if data is None:
        return corruption_grid(out_dir, None, "", problem)
    label = data.classes[int(data.test_labels[EXAMPLE_INDEX])]
    return corruption_grid(out_dir, data.test_images[EXAMPLE_INDEX], f"cifar10 test image {EXAMPLE_INDEX} ({label})",
                           index=EXAMPLE_INDEX, frost_dirs=[root / "frost"] if root is not None else [])


def _figure5_section(experiments: list[Experiment], data_root: Path | None, out_dir: Path,
                     loaded: TestSets) -> list[str]:
    """Figure 5 from the first experiment's dataset (CIFAR-10 when there is any); see :func:`_test_set`."""
    dataset = experiments[0].dataset
    modes = paper_mode_first({m for e in experiments for m in e.jpeg_modes()} | {published.paper_jpeg_mode()})
    lines = ["## Figure 5: one test image at every JPEG quality", ""]
    data, _, problem = _test_set(dataset, experiments, data_root, loaded)
    if data is None:
        return lines + [f"**Figure 5 is missing**: {problem}", ""]
    name = "fig5_jpeg_examples.png"
    label = data.classes[int(data.test_labels[EXAMPLE_INDEX])]
    title = f"{dataset} test image {EXAMPLE_INDEX} ({label})"
    figures.jpeg_examples(data.test_images[EXAMPLE_INDEX], modes, title, out_dir / name)
    return lines + [f"![Figure 5: {title} at every JPEG quality]({name})", "",
                    "One row per JPEG mode; Q=100 is the uncompressed image, as in the paper.", ""]


def _missing_section(experiments: list[Experiment], skipped: list[tuple[str, str]]) -> list[str]:
    lines = ["## Missing and unfinished", ""]
    absent, unfinished, no_jpeg, partial, duplicates = [], [], [], [], []
    qualities = set(published.qualities())
    for experiment in experiments:
        for group in experiment.models:
            seeds = [run.seed for run in group.runs]
            if group.expected_seeds:
                gone = [s for s in group.expected_seeds if s not in seeds]
                if gone:
                    absent.append([experiment.title, group.model, " ".join(map(str, gone))])
            repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=lambda s: (s is None, s))
            if repeated:
                duplicates.append([experiment.title, group.model, " ".join(map(str, repeated))])
            for run in group.runs:
                if not run.finished:
                    done = f"{run.curve[-1][0] if run.curve else 0}/{run.config.get('epochs', '?')}"
                    unfinished.append([run.name, run.model, str(run.seed), done])
                elif not run.jpeg:
                    no_jpeg.append([run.name, run.model, str(run.seed)])
                for mode, results in (run.jpeg or {}).items():
                    lacking = sorted(qualities - set(results), reverse=True)
                    if lacking:
                        partial.append([run.name, mode, " ".join(map(str, lacking))])
    sections = [
        ("Expected by the paper's grid but absent", ["experiment", "model", "missing seeds"], absent),
        ("Unfinished runs (no summary.json)", ["run", "model", "seed", "epochs done"], unfinished),
        ("Finished runs without JPEG results (no jpeg.csv)", ["run", "model", "seed"], no_jpeg),
        ("Incomplete JPEG results", ["run", "mode", "missing qualities"], partial),
        ("Repeated seeds (all of them are averaged; remove the extra runs if unintended)",
         ["experiment", "model", "seeds"], duplicates),
        ("Unreadable run directories (left out)", ["run", "problem"], [list(s) for s in skipped]),
    ]
    for title, header, body in sections:
        if body:
            lines += [f"### {title}", "", *_md_table(header, body), ""]
    if len(lines) == 2:
        lines += ["Nothing is missing: every run finished and has JPEG results.", ""]
    return lines


def _runs_section(runs: list[Run]) -> list[str]:
    header = ["run", "dataset", "model", "seed", "status", "epochs", "final", "min", "JPEG modes"]
    body = []
    for run in runs:
        row = _run_row(run)
        body.append([run.name, run.dataset, run.model, str(run.seed), row["status"],
                     f"{row['epochs_done']}/{row['epochs'] or '?'}", _fmt(row["final_test_err"], missing="–"),
                     _fmt(row["min_test_err"], missing="–"), row["jpeg_modes"] or "none"])
    return ["## Runs", "", *_md_table(header, body), ""]


def _run_row(run: Run) -> dict[str, Any]:
    summary = run.summary or {}
    return {
        "run": run.name,
        "dataset": run.dataset,
        "model": run.model,
        "family": run.family,
        "depth": run.depth,
        "min_net": run.min_net,
        "seed": run.seed,
        "status": "finished" if run.finished else "unfinished",
        "epochs_done": run.curve[-1][0] if run.curve else 0,
        **{key: run.config.get(key) for key in SETTING_KEYS},
        "num_params": summary.get("num_params"),
        "final_test_err": summary.get("final_test_err"),
        "min_test_err": summary.get("min_test_err"),
        "argmin_epoch": summary.get("argmin_epoch"),
        "wall_seconds": summary.get("wall_seconds"),
        "jpeg_modes": " ".join(sorted(run.jpeg or {})),
        "versions": json.dumps(run.config.get("versions", {}), sort_keys=True),
    }


def _fmt(value: Any, digits: int = 2, signed: bool = False, missing: str = "–") -> str:
    if value == NA:
        return NA
    if value is None:
        return missing
    value = round(value, digits) + 0.0  # + 0.0 turns -0.0 into 0.0: no "-0.00"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_int(value: Any) -> str:
    if value == NA:
        return NA
    return "missing" if value is None else f"{value:,}"


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [row(header), "|" + "|".join("---" for _ in header) + "|", *(row(cells) for cells in body)]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """CSV with "" for absent numbers and "n/a" where the paper has no comparable number.

    Without rows the file is removed, so a rebuilt report never shows stale results.
    """
    if not rows:
        path.unlink(missing_ok=True)
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    _write_text(path, buffer.getvalue())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 6)
    return value


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
