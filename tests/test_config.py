"""The run config: every field survives config.json, the command line and the sweep's hand-off;
what decides a resume; one-line errors for damaged files and refused values."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import pytest

from minnets.config import SCHEMA_VERSION, RunConfig, add_config_arguments, config_from_args
from minnets.errors import MinnetsError
from minnets.sweep import Job
from minnets.training.trainer import check_same_run

# A value other than the default for every field: a new field fails test_every_field_is_covered
# until it is added here, so no field can miss the round trips below.
CHANGED = dict(
    model="min_densenet_l22", dataset="shapes10", data="/data/cifar", recipe="quick", epochs=7, batch_size=48,
    lr=0.05, momentum=0.8, nesterov=True, weight_decay=5e-4, milestones=[3, 5], gamma=0.2, seed=723, subset=640,
    test_subset=200, init="same", unit="product", memory_efficient=True, amp="bf16", channels_last=True,
    float64=False, compile=True, threads=3, device="cuda:1", num_classes=10, world_size=2,
    versions={"torch": "2.13"}, command=["minnets", "train"], schema_version=SCHEMA_VERSION,
)


def changed() -> RunConfig:
    return RunConfig(**CHANGED)


def test_every_field_is_covered() -> None:
    assert set(CHANGED) == {f.name for f in fields(RunConfig)}
    defaults = RunConfig(model="resnet_n3")
    unchanged = [f.name for f in fields(RunConfig) if f.name not in ("model", "float64", "schema_version")
                 and getattr(defaults, f.name) == CHANGED[f.name]]
    assert unchanged == []  # float64 stays False: it excludes --amp bf16


def test_json_round_trip_of_every_field(tmp_path: Path) -> None:
    config = changed()
    config.to_json(tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data == CHANGED  # the whole config, with its schema version, as plain JSON
    assert RunConfig.from_json(tmp_path / "config.json") == config


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser)
    return parser.parse_args(argv)


def flags(config: RunConfig) -> list[str]:
    """The command line of a config, written out by hand from the flags' documented forms."""
    argv = []
    for f in fields(RunConfig):
        if not f.metadata["cli"]:
            continue
        value, flag = getattr(config, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, ",".join(map(str, value))]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def test_every_option_is_a_flag_and_booleans_switch_off() -> None:
    config = changed()
    recorded = ("num_classes", "world_size", "versions", "command", "schema_version")
    expected = replace(config, **{name: getattr(RunConfig(model="x"), name) for name in recorded})
    assert config_from_args(parse(flags(config))) == expected
    off = config_from_args(parse(["--model", "resnet_n3", "--channels-last", "--no-channels-last", "--no-nesterov"]))
    assert off.channels_last is False and off.nesterov is False


def test_flags_override_a_config_file_and_unset_flags_keep_its_values(tmp_path: Path) -> None:
    changed().to_json(tmp_path / "base.json")
    base = RunConfig.from_json(tmp_path / "base.json")
    config = config_from_args(parse(["--config", "x", "--seed", "9", "--no-compile", "--device", "cpu"]), base)
    assert config == replace(changed(), seed=9, compile=False, device="cpu")


def test_sweep_hands_each_worker_its_config_as_a_file(tmp_path: Path) -> None:
    overrides = {key: value for key, value in CHANGED.items() if key not in
                 ("model", "seed", "num_classes", "world_size", "versions", "command", "schema_version")}
    job = Job("min_densenet_l22", 723, overrides)
    assert job.name == "min_densenet_l22-product-s723"
    job.config().to_json(tmp_path / "job.json")
    worker = config_from_args(parse(["--config", str(tmp_path / "job.json"), "--device", "cpu"]),
                              RunConfig.from_json(tmp_path / "job.json"))
    assert worker == replace(job.config(), device="cpu")
    assert replace(worker, device="cuda:1") == replace(changed(), num_classes=None, world_size=None, versions={},
                                                       command=[])


def test_identity_decides_resume_and_setting_decides_averaging(tmp_path: Path) -> None:
    stored = changed()
    identity = set(stored.identity())
    assert {"test_subset", "unit", "threads", "seed", "model", "milestones", "subset"} <= identity
    assert identity.isdisjoint({"device", "data", "compile", "memory_efficient", "versions", "command"})
    assert set(stored.setting()) == identity - {"model", "seed", "dataset", "num_classes", "threads"}
    values = {"dataset": "cifar10", "recipe": "paper-densenet", "epochs": 8, "batch_size": 64, "lr": 0.1,
              "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4, "milestones": [4, 6], "gamma": 0.1,
              "seed": 9, "subset": 64, "test_subset": None, "init": "published", "unit": "min",
              "amp": "none", "channels_last": False, "float64": True, "threads": 1, "num_classes": 100,
              "model": "densenet_l22"}
    assert set(values) == identity
    for key, value in values.items():
        other = replace(stored, **{key: value, **({"amp": "none"} if key == "float64" else {})})
        with pytest.raises(MinnetsError, match=f"{key}: .* there, .* here"):
            check_same_run(tmp_path, stored, other)
    check_same_run(tmp_path, stored, replace(stored, device="cpu", data="/elsewhere", compile=False,
                                             memory_efficient=False, versions={}, command=["again"]))


@pytest.mark.parametrize(("content", "message"), [
    ("[1, 2]", "must hold a JSON object"),
    ('"text"', "must hold a JSON object"),
    ("{not json", "is damaged"),
])
def test_config_file_that_is_not_an_object_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(MinnetsError, match=message) as error:
        RunConfig.from_json(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("threads"), "missing key 'threads'"),
    (lambda d: d.pop("schema_version"), "missing key 'schema_version'; it was written by a minnets from before"),
    (lambda d: d.update(colour="red"), "unknown key 'colour'"),
    (lambda d: d.update(epochs="7"), "--epochs must be an integer or null, got '7'"),
    (lambda d: d.update(lr=-1), "--lr must be a finite number above 0, got -1"),
    (lambda d: d.update(schema_version=99), "schema_version 99 is not 1"),
])
def test_config_file_with_missing_unknown_or_bad_keys_is_one_line(tmp_path: Path, edit, message: str) -> None:
    data = changed().to_dict()
    edit(data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MinnetsError, match=message) as error:
        RunConfig.from_json(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


@pytest.mark.parametrize(("change", "message"), [
    ({"epochs": 0}, "--epochs must be at least 1, got 0"),
    ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    ({"batch_size": -4}, "--batch-size must be at least 1, got -4"),
    ({"lr": float("nan")}, "--lr must be a finite number above 0, got nan"),
    ({"lr": float("inf")}, "--lr must be a finite number above 0, got inf"),
    ({"momentum": 1.0}, r"--momentum must be in \[0, 1\)"),
    ({"gamma": 0.0}, r"--gamma must be in \(0, 1\]"),
    ({"threads": 0}, "--threads must be at least 1"),
    ({"amp": "fp16"}, "--amp must be one of none, bf16, got 'fp16'"),
    ({"dataset": "imagenet"}, "--dataset must be one of cifar10, cifar100, shapes10"),
    ({"recipe": "fast"}, "--recipe must be one of"),
    ({"unit": "minimum"}, "--unit: unknown AND operator 'minimum'"),
    ({"device": "mps"}, "--device must be auto, cpu, cuda or cuda:N"),
    ({"milestones": [5, 3]}, "--milestones must be increasing"),
    ({"milestones": [3, 7]}, "must lie before --epochs 7"),
    ({"compile": 1}, "--compile must be true or false, got 1"),
    ({"model": "resnet_n4"}, "unknown model 'resnet_n4'"),
])
def test_refused_values_are_one_line_naming_the_option(change: dict, message: str) -> None:
    with pytest.raises(MinnetsError, match=message) as error:
        replace(changed(), **change).validate()
    assert "\n" not in str(error.value)


def test_resolved_config_fills_the_recipe_and_stores_the_data_folder_absolute(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = RunConfig(model="min_resnet_n3", data="cifar", epochs=3, unit="smoothmin").resolved(10, 50_000, 10_000, 2)
    assert config.data == str(tmp_path / "cifar")
    assert (config.recipe, config.batch_size, config.lr, config.momentum, config.nesterov) == (
        "paper-resnet", 128, 0.1, 0.9, False)
    assert (config.milestones, config.gamma, config.weight_decay, config.threads) == ([1, 2], 0.1, 1e-4, 2)
    assert config.unit == "smoothmin:tau=0.1"  # canonical, so "smoothmin" resumes "smoothmin:tau=0.1"
    with pytest.raises(MinnetsError, match="--test-subset must be between 1 and 10000, got 10001"):
        replace(config, test_subset=10_001).resolved(10, 50_000, 10_000, 2)
