"""The run directory: every file a training run leaves, written so that no work is lost.

``config.json`` (how to rerun), ``metrics.csv`` (a row per epoch), ``checkpoint.pt`` (the
latest full state), ``model.safetensors`` (final weights) and ``summary.json`` (written last:
its presence means the run is finished). Every file is written to a temporary name in the
same folder and then renamed, so a killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from minnets.errors import MinnetsError
from minnets.files import atomic_write, read_json

__all__ = [
    "CONFIG", "METRICS", "CHECKPOINT", "WEIGHTS", "SUMMARY", "METRIC_COLUMNS",
    "write_metrics", "read_metrics",
    "save_checkpoint", "load_checkpoint", "save_weights", "load_run_model", "run_status",
]

CONFIG, METRICS, CHECKPOINT, WEIGHTS, SUMMARY = (
    "config.json", "metrics.csv", "checkpoint.pt", "model.safetensors", "summary.json"
)
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_err", "test_loss", "test_err", "seconds")


def write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    def write(tmp: Path) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: row[key] for key in METRIC_COLUMNS} for row in history)
        tmp.write_text(buffer.getvalue())

    atomic_write(Path(run_dir) / METRICS, write)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The per-epoch rows as numbers (``epoch`` as int); empty if no epoch has finished."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [
            {key: int(value) if key == "epoch" else float(value) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The latest training state, loaded without executing code (``weights_only=True``)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for damaged or foreign files
        raise MinnetsError(
            f"cannot read checkpoint {path} ({type(error).__name__}); delete it to restart the run from scratch"
        ) from None


def save_weights(path: Path, model: nn.Module) -> None:
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def run_status(run_dir: Path) -> str:
    """``done`` (summary written), ``partial`` (started: config or checkpoint) or ``pending``."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY).exists():
        return "done"
    if (run_dir / CHECKPOINT).exists() or (run_dir / CONFIG).exists():
        return "partial"
    return "pending"


def load_run_model(run_dir: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The final model of a finished run (eval mode) and its config; loads no pickles."""
    from minnets.models import create_model

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise MinnetsError(f"{run_dir} is not a run directory (no {CONFIG}); train one with `minnets train --out DIR`")
    config = read_json(run_dir / CONFIG)
    weights = run_dir / WEIGHTS
    if not weights.exists():
        raise MinnetsError(
            f"{run_dir} has no final weights ({WEIGHTS}): the run is unfinished; "
            f"resume it with `minnets train --model {config.get('model')} --out {run_dir} ...`"
        )
    model = create_model(config["model"], num_classes=config["num_classes"], **config.get("model_kwargs", {}))
    try:
        model.load_state_dict(load_file(str(weights), device=str(device)))
    except Exception as error:
        raise MinnetsError(f"cannot load {weights} ({error}); the file is damaged or not from {config['model']}") from None
    return model.to(device).eval(), config
