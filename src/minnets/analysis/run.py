"""``analyze_run``: every hyperselectivity measurement of one trained run, as tables and figures.

Steps (a progress line each): filter-pair angles of every Min-block, trained and at
initialisation (:mod:`~minnets.analysis.geometry`); silent units on N test images
(:mod:`~minnets.analysis.silent`); end-stopping of the first analysed block
(:mod:`~minnets.analysis.end_stopping`); iso-response geometry of K units per block
(:mod:`~minnets.analysis.iso_response`). Each step's numbers are kept in ``steps/<step>.json``
with the settings that produced them, so a killed analysis resumes at the step it was in and
a rerun with other settings recomputes only what they change. ``analysis.json``, the CSVs and
the PNGs are then written from those numbers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minnets.analysis import figures
from minnets.analysis.end_stopping import end_stopping, square_stimuli
from minnets.analysis.geometry import describe, filter_angles
from minnets.analysis.iso_response import (
    LEVELS, Plane, optimal_directions, orthogonalise, plane_fits, response_plane,
)
from minnets.analysis.silent import unit_activity
from minnets.analysis.units import AnalysedBlock, UnitProbe, analysed_blocks, centre_response
from minnets.data import load_dataset
from minnets.errors import MinnetsError
from minnets.files import atomic_write, read_json, write_json
from minnets.models import create_model
from minnets.config import RunConfig
from minnets.rundir import WEIGHTS, analysis_dir, load_run_model, test_split

__all__ = ["ANALYSIS_JSON", "analyze_run", "analysis_settings"]

ANALYSIS_JSON = "analysis.json"
SQUARE_SIDE = 16  # pixels, of the end-stopping squares
EXAMPLES_PER_BLOCK = 2  # response maps drawn per block


def analysis_settings(units: int = 8, images: int = 200, radius: float = 5.0, grid: int = 41, base_image: int = 0,
                      seed: int = 0, ascent_steps: int = 40) -> dict[str, Any]:
    """The analysis settings, as recorded in analysis.json (radius in normalised input units)."""
    if units < 1 or images < 1 or grid < 5 or grid % 2 == 0 or not radius > 0 or ascent_steps < 1:
        raise MinnetsError(f"need --units >= 1, --images >= 1, an odd --grid >= 5, --radius > 0 and --ascent-steps "
                           f">= 1 (got {units}, {images}, {grid}, {radius}, {ascent_steps})")
    return {"units": units, "images": images, "radius": radius, "grid": grid, "base_image": base_image,
            "seed": seed, "ascent_steps": ascent_steps, "levels": list(LEVELS), "square_side": SQUARE_SIDE}


def _log(message: str) -> None:
    print(f"analyze: {message}", file=sys.stderr, flush=True)


class _Steps:
    """Numbers of finished steps in ``out/steps/<name>.json``, reused while the settings match."""

    def __init__(self, out: Path, settings: dict[str, Any], total: int) -> None:
        self.dir, self.settings, self.total, self.done = out / "steps", settings, total, 0

    def run(self, name: str, what: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.done += 1
        path = self.dir / f"{name}.json"
        if path.is_file():
            try:
                saved = read_json(path)
            except MinnetsError:
                saved = None
            if isinstance(saved, dict) and saved.get("settings") == self.settings:
                _log(f"[{self.done}/{self.total}] {what}: kept from an earlier run")
                return saved["result"]
        start = time.perf_counter()
        result = _jsonable(compute())
        write_json(path, {"settings": self.settings, "result": result})
        _log(f"[{self.done}/{self.total}] {what}: done in {time.perf_counter() - start:.1f} s")
        return result


def analyze_run(run_dir: Path, out: Path | None = None, *, units: int = 8, images: int = 200, radius: float = 5.0,
                grid: int = 41, base_image: int = 0, seed: int = 0, ascent_steps: int = 40,
                data_root: Path | None = None) -> Path:
    """Analyse the finished run in ``run_dir``; writes into ``out`` (default ``run_dir/analysis``)
    and returns the path of analysis.json."""
    run_dir = Path(run_dir)
    settings = analysis_settings(units, images, radius, grid, base_image, seed, ascent_steps)
    model, config = load_run_model(run_dir, "cpu")
    model.float()  # a float64 run is analysed in float32: the measurements need no more
    # Kept steps are reused only for these very weights (a run retrained in place is re-analysed).
    settings["weights_sha256"] = hashlib.sha256((run_dir / WEIGHTS).read_bytes()).hexdigest()
    out = Path(out) if out is not None else analysis_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.dataset, root=data_root if data_root is not None else config.data)
    test_images, _ = test_split(data, config)
    if not 0 <= base_image < len(test_images):
        raise MinnetsError(f"--base-image {base_image} is not a test image index of the run (0 to {len(test_images) - 1})")
    normalise = _normaliser(data.mean, data.std)
    blocks = analysed_blocks(model)
    probe = UnitProbe(model)
    min_blocks = [b for b in blocks if b.kind == "min"]
    steps = _Steps(out, settings, 3 + len(blocks))
    operator = config.unit
    _log(f"{run_dir} ({config.model}, {'unit ' + operator if min_blocks else 'baseline'}): "
         f"blocks {', '.join(b.name for b in blocks)}")

    angles = steps.run("filters", "filter-pair angles", lambda: _angles(min_blocks, _initial_model(config)))
    test = normalise(test_images[:images])
    activity = steps.run("silent", f"silent units on {len(test)} test images",
                         lambda: {b.name: unit_activity(lambda x, b=b: probe(x, b), test.split(100))
                                  for b in blocks})
    first = blocks[0]
    stimuli = normalise(square_stimuli(data.test_images.shape[1], SQUARE_SIDE), scaled=True)
    stopping = steps.run("end_stopping", f"end-stopping of {first.name}",
                         lambda: end_stopping(lambda x: probe(x, first), stimuli, SQUARE_SIDE))
    x0 = normalise(test_images[base_image:base_image + 1])[0]
    iso = {}
    for block in blocks:
        with torch.no_grad():
            active = (centre_response(probe, block)(x0[None])[0] > 0).tolist()
        chosen = _choose_units(activity[block.name]["silent"], active, units, seed)
        iso[block.name] = steps.run(
            f"iso_{block.name}", f"iso-response geometry of {block.name} ({len(chosen)} units)",
            lambda block=block, chosen=chosen: _iso_response(probe, block, x0, chosen, settings))
    return _write(out, run_dir, config, operator, settings, blocks, angles, activity, stopping, iso, stimuli, probe)


def _initial_model(config: RunConfig) -> nn.Module:
    """The run's model as training created it: same seed, same constructor arguments."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return create_model(config.model, num_classes=config.num_classes, **config.model_kwargs())


def _normaliser(mean: tuple[float, ...], std: tuple[float, ...]) -> Callable[..., torch.Tensor]:
    """uint8 NHWC images (or float NCHW in [0, 1] with ``scaled``) -> the network's input."""
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def normalise(images: Any, scaled: bool = False) -> torch.Tensor:
        x = images if scaled else torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
        return (x - mean_t) / std_t

    return normalise


def _angles(blocks: list[AnalysedBlock], initial: nn.Module) -> dict[str, Any]:
    """Trained and initial filter-pair angles and the kernels, per block with filter pairs."""
    start = {b.name: b for b in analysed_blocks(initial)}
    result = {}
    for block in blocks:
        pair = block.filter_pair()
        if pair is None:
            continue
        v, g = pair
        result[block.name] = {"trained": filter_angles(v, g), "initial": filter_angles(*start[block.name].filter_pair()),
                              "v": v[:, 0].numpy(), "g": g[:, 0].numpy()}
    return result


def _choose_units(silent: list[bool], active: list[bool], count: int, seed: int) -> list[int]:
    """``count`` channels drawn without replacement (seeded) from those not silent, first from
    those active at the base image's centre pixel (their ascent starts on a non-zero gradient)."""
    order = torch.randperm(len(silent), generator=torch.Generator().manual_seed(seed)).tolist()
    ranked = sorted((m for m in order if not silent[m]), key=lambda m: not active[m])
    return sorted(ranked[:count])


def _centre_window(shape: tuple[int, ...], sigma: float = 3.0) -> torch.Tensor:
    """A Gaussian window (``sigma`` pixels) on the image centre, where the analysed units look."""
    rows = torch.arange(shape[-2], dtype=torch.float32) - shape[-2] // 2
    cols = torch.arange(shape[-1], dtype=torch.float32) - shape[-1] // 2
    return torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma**2)).expand(shape)


def _iso_response(probe: UnitProbe, block: AnalysedBlock, x0: torch.Tensor, chosen: list[int],
                  settings: dict[str, Any]) -> dict[str, Any]:
    """e1 of every chosen unit; planes with a random e2 (drawn with the energy profile of the
    unit's gradient at its optimum, so it lies where the unit looks) and with the next chosen
    unit's e1 as e2; contour fits on both."""
    if not chosen:
        return {"units": [], "fits": [], "planes": {}}
    response = centre_response(probe, block)
    radius, generator = settings["radius"], torch.Generator().manual_seed(settings["seed"])
    e1 = optimal_directions(response, x0, chosen, radius, steps=settings["ascent_steps"],
                            start_window=_centre_window(tuple(x0.shape)), generator=generator)
    rows, planes = [], {}
    for k, unit in enumerate(chosen):
        x = (x0 + radius * e1[k]).detach().requires_grad_(True)
        value = response(x[None])[0, unit]
        value.backward()
        peak = float(value.detach())
        sensitivity = x.grad.abs() if x.grad.abs().sum() > 0 else torch.ones_like(x0)
        directions = {"random": orthogonalise(e1[k], torch.randn(x0.shape, generator=generator) * sensitivity)}
        if len(chosen) > 1:
            directions["other_unit"] = orthogonalise(e1[k], e1[(k + 1) % len(chosen)])
        for kind, e2 in directions.items():
            plane = response_plane(response, x0, unit, e1[k], e2, radius, size=settings["grid"])
            fits = plane_fits(plane, settings["levels"])
            if len({key.split("_")[0] for key in planes} | {str(unit)}) <= EXAMPLES_PER_BLOCK and any(
                    math.isfinite(fit.c2) for fit in fits):
                planes[f"{unit}_{kind}"] = plane.values
            rows.extend({"unit": unit, "plane": kind, "peak": peak, "base": plane.base, **vars(fit)} for fit in fits)
    return {"units": chosen, "fits": rows, "planes": planes}


def _unit_summary(fits: list[dict[str, Any]], key: str, plane: str) -> np.ndarray:
    """Per unit, the median of ``key`` over the fitted contour levels of one plane kind."""
    per_unit: dict[int, list[float]] = {}
    for row in fits:
        if row["plane"] == plane and row[key] is not None and math.isfinite(row[key]):
            per_unit.setdefault(row["unit"], []).append(row[key])
    return np.array([float(np.median(values)) for values in per_unit.values()])


def _write(out: Path, run_dir: Path, config: RunConfig, operator: str, settings: dict[str, Any],
           blocks: list[AnalysedBlock], angles: dict[str, Any], activity: dict[str, Any], stopping: dict[str, Any],
           iso: dict[str, Any], stimuli: torch.Tensor, probe: UnitProbe) -> Path:
    variant = f"unit {operator}" if any(block.kind == "min" for block in blocks) else "baseline"
    title = f"{config.model} ({variant}, seed {config.seed}, {config.dataset})"
    summary: dict[str, Any] = {}
    for block in blocks:
        entry: dict[str, Any] = {"kind": block.kind, "channels": block.channels}
        if block.kind == "min" and block.name not in angles:
            entry["gamma_note"] = "one filter per unit (operator single): no filter pair, no angle"
        if block.name in angles:
            entry["gamma_deg"] = describe(angles[block.name]["trained"])
            entry["gamma_deg_initial"] = describe(angles[block.name]["initial"])
        silent = activity[block.name]["silent"]
        entry["silent_fraction"] = float(np.mean(silent))
        entry["silent_units"] = int(np.sum(silent))
        entry["mean_activity"] = float(np.mean(activity[block.name]["activity"]))
        fits = iso[block.name]["fits"]
        entry["iso_units"] = iso[block.name]["units"]
        for plane in ("random", "other_unit"):
            entry[f"curvature_{plane}"] = describe(_unit_summary(fits, "c2", plane))
            entry[f"slope_{plane}"] = describe(_unit_summary(fits, "slope", plane))
        summary[block.name] = entry
    summary[blocks[0].name]["end_stopping"] = describe(np.array(stopping["es"], dtype=float))

    tables = {
        "blocks.csv": [{"block": name, **_flatten(entry)} for name, entry in summary.items()],
        "gamma.csv": [{"block": name, "channel": m, "gamma_deg": a, "gamma_deg_initial": b}
                      for name, value in angles.items()
                      for m, (a, b) in enumerate(zip(value["trained"], value["initial"]))],
        "units.csv": [{"block": name, "channel": m, "peak": p, "activity": a, "silent": bool(s)}
                      for name, value in activity.items()
                      for m, (p, a, s) in enumerate(zip(value["peak"], value["activity"], value["silent"]))],
        "end_stopping.csv": [{"block": blocks[0].name, "channel": m, "r_corner": c, "r_edge": e, "r_uniform": u,
                              "es": s} for m, (c, e, u, s) in enumerate(zip(
                                  stopping["r_corner"], stopping["r_edge"], stopping["r_uniform"], stopping["es"]))],
        "iso_response.csv": [{"block": name, **row} for name, value in iso.items() for row in value["fits"]],
    }
    for name, rows in tables.items():
        _write_csv(out / name, rows)

    pictures = {}
    if angles:
        pictures["gamma_hist.png"] = figures.gamma_histograms(angles, title, out / "gamma_hist.png")
        for name, value in angles.items():
            file = f"filters_{name}.png"
            pictures[file] = figures.filter_pairs(np.array(value["v"]), np.array(value["g"]),
                                                  np.array(value["trained"]), f"{title}, {name}", out / file)
    axis = np.linspace(-1.0, 1.0, settings["grid"])
    examples = [(name, key, Plane(axis, axis, np.array(values)), [r for r in iso[name]["fits"]
                                                                   if f"{r['unit']}_{r['plane']}" == key])
                for name in iso for key, values in iso[name]["planes"].items()]
    pictures["iso_examples.png"] = figures.iso_examples(examples, settings["levels"], title, out / "iso_examples.png")
    curvature = {name: {plane: _unit_summary(iso[name]["fits"], "c2", plane) for plane in ("random", "other_unit")}
                 for name in iso}
    pictures["curvature.png"] = figures.curvature_distributions(curvature, title, out / "curvature.png")
    with torch.no_grad():
        maps = probe(stimuli, blocks[0]).double().numpy()
    pictures["end_stopping.png"] = figures.end_stopping(stimuli, maps, np.array(stopping["es"], dtype=float),
                                                        f"{title}, {blocks[0].name}", out / "end_stopping.png")
    report = {
        "run": str(run_dir), "model": config.model, "dataset": config.dataset, "seed": config.seed,
        "unit": operator, "settings": settings, "blocks": summary,
        "tables": sorted(tables), "figures": sorted(name for name, drawn in pictures.items() if drawn),
    }
    path = out / ANALYSIS_JSON
    write_json(path, _jsonable(report))
    _log(f"wrote {path} with {len(tables)} tables and {len(report['figures'])} figures")
    return path


def _flatten(entry: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in entry.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{k}": v for k, v in value.items()})
        elif not isinstance(value, list):
            flat[key] = value
    return flat


def _jsonable(value: Any) -> Any:
    """numpy -> lists and floats, NaN and infinities -> None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else (round(v, 6) if isinstance(v, float) else v)
                          for k, v in _jsonable(row).items()} for row in rows)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))
