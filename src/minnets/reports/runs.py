"""Reading run directories (config.json, metrics.csv, summary.json, jpeg.csv) for reports.

A report has to cope with whatever a runs tree holds while a sweep is still going: finished
and unfinished runs, runs without JPEG results, and the odd broken directory. Broken ones are
returned as "skipped" with the reason instead of stopping the whole report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minnets.config import RunConfig
from minnets.errors import MinnetsError
from minnets.files import read_json
from minnets.models import model_info
from minnets.robustness import JPEG_CSV, read_jpeg_csv
from minnets.rundir import CONFIG, SUMMARY, read_metrics

# The run config's settings (RunConfig.setting: what a resumed run must agree on, less model,
# seed, dataset and thread count): runs that differ in one of them are never averaged. The
# values are read from config.json with .get, so runs written before a setting existed still
# report (as None) instead of being left out.
SETTING_KEYS = tuple(RunConfig(model="").setting())


@dataclass(frozen=True)
class Run:
    """One run directory as a report sees it; ``summary`` is None while training is unfinished."""

    path: Path
    name: str  # path relative to the runs root, for display
    config: dict[str, Any]
    summary: dict[str, Any] | None
    family: str | None
    depth: int | None
    min_net: bool | None
    curve: tuple[tuple[int, float, float], ...]  # (epoch, train error, test error in %) per finished epoch
    jpeg: dict[str, dict[int, dict[str, Any]]] | None  # mode -> quality -> jpeg.csv row; None: no file

    @property
    def model(self) -> str:
        return str(self.config["model"])

    @property
    def dataset(self) -> str:
        return str(self.config["dataset"])

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def setting(self, keys: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(_hashable(self.config.get(key)) for key in keys)


def model_meta(name: str) -> tuple[str | None, int | None, bool | None]:
    """(family, depth, min_net) from the model registry, for runs without summary.json.

    A model the registry does not know gives (None, None, None): reported as "other models".
    """
    try:
        info = model_info(name)
    except MinnetsError:
        return None, None, None
    return info["family"], int(info["depth"]), bool(info["min_net"])


def find_runs(runs_root: Path) -> tuple[list[Run], list[tuple[str, str]]]:
    """All run directories (any folder holding config.json) below ``runs_root``, recursively.

    Returns the readable runs sorted by path and (relative path, reason) for the broken ones.
    """
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise MinnetsError(
            f"runs root {runs_root} is not a directory; pass the folder that holds your run "
            "directories (each with a config.json)"
        )
    runs, skipped = [], []
    for config_path in sorted(runs_root.rglob(CONFIG), key=_natural_key):
        run_dir = config_path.parent
        name = run_dir.relative_to(runs_root).as_posix() or "."
        try:
            runs.append(read_run(run_dir, name))
        except MinnetsError as error:  # damaged JSON or jpeg.csv: the message says what to do
            skipped.append((name, str(error)))
        except (OSError, ValueError, KeyError, TypeError) as error:
            skipped.append((name, f"{type(error).__name__}: {error}"))
    return runs, skipped


def read_run(run_dir: Path, name: str) -> Run:
    """Read one run directory; raises MinnetsError, OSError, ValueError or KeyError on damage."""
    config = read_json(run_dir / CONFIG)
    for key in ("model", "dataset"):
        if key not in config:
            raise KeyError(f"{CONFIG} has no {key!r}")
    summary = read_json(run_dir / SUMMARY) if (run_dir / SUMMARY).is_file() else None
    if summary is not None:
        family, depth, min_net = summary["family"], int(summary["depth"]), bool(summary["min_net"])
    else:
        family, depth, min_net = model_meta(str(config["model"]))
    return Run(
        path=run_dir,
        name=name,
        config=config,
        summary=summary,
        family=family,
        depth=depth,
        min_net=min_net,
        curve=tuple((int(row["epoch"]), row["train_err"], row["test_err"]) for row in read_metrics(run_dir)),
        jpeg=_read_jpeg(run_dir),
    )


def _read_jpeg(run_dir: Path) -> dict[str, dict[int, dict[str, Any]]] | None:
    if not (run_dir / JPEG_CSV).is_file():
        return None
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for row in read_jpeg_csv(run_dir):
        results.setdefault(row["mode"], {})[row["quality"]] = row
    return results


def _natural_key(path: Path) -> list[Any]:
    """Sort seed_9 before seed_16: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return value
