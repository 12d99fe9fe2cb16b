"""Training: recipes (SPEC section 7), run directories, resume, divergence, DDP, real CIFAR-10."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minnets import MinnetsError
from minnets.cli import main
from minnets.config import RunConfig
from minnets.training import RECIPES, load_run_model, read_metrics, run_status
from minnets.training import train as train_quietly
from minnets.training.recipes import lr_at_epoch

TINY = dict(model="resnet_n3", dataset="shapes10", subset=128, test_subset=500, batch_size=64, device="cpu")


def tiny(**overrides) -> RunConfig:
    return RunConfig(**{**TINY, "epochs": 2, **overrides})


def train(config: RunConfig, run_dir: Path) -> dict:
    return train_quietly(config, run_dir, quiet=True)


def cli_args(options: RunConfig, out: Path) -> list[str]:
    args = ["train", "--model", options.model, "--dataset", options.dataset, "--subset", str(options.subset),
            "--test-subset", str(options.test_subset),
            "--batch-size", str(options.batch_size), "--epochs", str(options.epochs), "--seed", str(options.seed),
            "--device", "cpu", "--quiet", "--out", str(out)]
    return args + (["--float64"] if options.float64 else [])


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_paper_recipes_match_spec():
    resnet, densenet = RECIPES["paper-resnet"], RECIPES["paper-densenet"]
    assert (resnet.epochs, resnet.batch_size, resnet.lr, resnet.momentum, resnet.nesterov) == (200, 128, 0.1, 0.9, False)
    assert (densenet.epochs, densenet.batch_size, densenet.lr, densenet.nesterov) == (300, 64, 0.1, True)
    assert resnet.weight_decay == densenet.weight_decay == 1e-4
    assert resnet.seeds == (9, 16, 507, 723, 744) and densenet.seeds == (9, 507, 723)
    assert resnet.milestones(200) == [100, 150] and densenet.milestones(300) == [150, 225]
    lrs = [lr_at_epoch(0.1, [100, 150], 0.1, epoch) for epoch in range(200)]
    assert lrs[0] == lrs[99] == 0.1
    assert lrs[100] == lrs[149] == 0.01 and lrs[150] == lrs[199] == 0.001  # exact decimals, as published
    assert RECIPES["paper-resnet"].milestones(20) == [10, 15]  # a shortened run keeps the shape


@pytest.mark.parametrize(("epochs", "lrs"), [(1, [0.1]), (2, [0.1, 0.01]), (3, [0.1, 0.01, 0.001]),
                                             (4, [0.1, 0.1, 0.01, 0.001]), (5, [0.1, 0.1, 0.1, 0.01, 0.001])])
def test_short_schedules_keep_distinct_ordered_drops(epochs, lrs):
    """--epochs 3 once gave milestones [2, 2]: 0.1, 0.1, 0.001, skipping 0.01."""
    for recipe in RECIPES.values():
        milestones = recipe.milestones(epochs)
        assert milestones == sorted(set(milestones)) and all(1 <= m < epochs for m in milestones)
        assert [lr_at_epoch(0.1, milestones, 0.1, e) for e in range(epochs)] == lrs, recipe.name


def test_run_directory_holds_every_file(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny(), run)
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.csv", "checkpoint.pt", "model.safetensors",
                                                "summary.json"}
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*"))
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "resnet_n3" and config["recipe"] == "paper-resnet" and config["epochs"] == 2
    assert config["milestones"] == [1] and config["lr"] == 0.1 and config["subset"] == 128
    assert config["test_subset"] == 500
    assert {"torch", "numpy", "opencv", "device", "git_revision"} <= set(config["versions"])
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,lr,train_loss,train_err,test_loss,test_err,seconds"
    rows = read_metrics(run)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[0]["lr"] == 0.1 and rows[1]["lr"] == 0.01
    assert all(0 <= row["test_err"] <= 100 and row["test_loss"] > 0 for row in rows)
    assert set(summary) == {"model", "dataset", "family", "depth", "min_net", "num_params", "seed", "final_test_err",
                            "min_test_err", "argmin_epoch", "epochs", "wall_seconds"}
    assert summary["num_params"] == 270_298 and summary["final_test_err"] == rows[-1]["test_err"]
    assert summary["min_test_err"] == min(row["test_err"] for row in rows)
    assert json.loads((run / "summary.json").read_text()) == summary
    assert run_status(run) == "done"

    model, loaded_config = load_run_model(run)
    assert loaded_config.model == "resnet_n3" and not model.training
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_finished_run_is_not_trained_again_and_other_configs_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(epochs=1), run)
    stamps = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(cli_args(tiny(epochs=1), run)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == stamps
    capsys.readouterr()
    assert main(cli_args(tiny(epochs=1, seed=3), run)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "seed: 0 there, 3 here" in error and "--out" in error


def test_run_killed_after_an_epoch_resumes_to_the_same_metrics(tmp_path):
    options = tiny(epochs=3)
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "minnets", *cli_args(options, reference)], check=True, env=subprocess_env())

    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "minnets", *cli_args(options, run)], env=subprocess_env())
    deadline = time.monotonic() + 300
    while len(read_metrics(run)) < 1 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 1 <= len(read_metrics(run)) < 3 and run_status(run) == "partial"
    # Resumed by a process with another thread count (as a sweep worker may be): the run keeps its own.
    other_threads = {**subprocess_env(), "OMP_NUM_THREADS": "2"}
    resumed = subprocess.run([sys.executable, "-m", "minnets", *cli_args(options, run)], check=True,
                             env=other_threads, capture_output=True, text=True)
    assert "warning: resuming with the run's 1 CPU thread(s), not this process's 2" in resumed.stderr
    assert json.loads((run / "config.json").read_text())["threads"] == 1

    ours, theirs = read_metrics(run), read_metrics(reference)
    assert len(ours) == len(theirs) == 3
    for mine, expected in zip(ours, theirs):
        for key in ("lr", "train_loss", "train_err", "test_loss", "test_err"):
            assert mine[key] == pytest.approx(expected[key], abs=1e-6), key


def test_diverging_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(epochs=1), run)  # a good epoch 1 ...
    good = (run / "checkpoint.pt").read_bytes()
    (run / "summary.json").unlink()  # ... then pretend the run was meant to go on with a huge lr
    config = json.loads((run / "config.json").read_text())
    config.update(epochs=3, lr=1e6, milestones=[1, 2])
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(MinnetsError, match=r"diverged in epoch 2 .* keeps the checkpoint of epoch 1"):
        train(tiny(epochs=3, lr=1e6), run)
    assert (run / "checkpoint.pt").read_bytes() == good
    assert len(read_metrics(run)) == 1


@pytest.mark.parametrize(("args", "expected"), [
    (["--model", "resnet_n4"], "unknown model 'resnet_n4'; did you mean"),
    (["--model", "resnet_n3", "--subset", "0"], "--subset must be at least 1, got 0"),
    (["--model", "resnet_n3", "--subset", "10001"], "--subset must be between 1 and 10000, got 10001"),
    (["--model", "resnet_n3", "--epochs", "0"], "--epochs must be at least 1"),
    (["--model", "resnet_n3", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),  # was: the recipe's 128
    (["--model", "resnet_n3", "--batch-size", "-4"], "--batch-size must be at least 1, got -4"),
    (["--model", "resnet_n3", "--lr", "nan"], "--lr must be a finite number above 0, got nan"),
    (["--model", "resnet_n3", "--lr", "-1"], "--lr must be a finite number above 0, got -1.0"),  # was: a traceback
    (["--model", "resnet_n3", "--device", "mps"], "--device must be auto, cpu, cuda or cuda:N, got 'mps'"),
    (["--model", "resnet_n3", "--epochs", "4", "--milestones", "2,2"], "--milestones must be increasing"),
    (["--model", "resnet_n3", "--epochs", "4", "--milestones", "2,4"], "must lie before --epochs 4"),
    (["--model", "resnet_n3", "--unit", "product"], "--unit product needs a Min-Net"),
    (["--model", "resnet_n3", "--amp", "bf16", "--float64"], "--amp and --float64 exclude each other"),
])
def test_bad_inputs_give_one_line_errors_and_leave_nothing_behind(tmp_path, capsys, args, expected):
    assert main(["train", "--dataset", "shapes10", "--out", str(tmp_path / "x"), *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("minnets: error: ") and expected in error and error.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_out_that_is_a_file_or_not_a_run_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--model", "resnet_n3", "--dataset", "shapes10", "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["train", "--model", "resnet_n3", "--dataset", "shapes10", "--out", str(tmp_path / "file" / "r")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_evaluate_prints_error_loss_and_per_class_error(tmp_path, capsys):
    run = tmp_path / "run"
    summary = train(tiny(epochs=1, test_subset=None), run)  # evaluate uses the whole test set
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"test error {summary['final_test_err']:.2f}%" in out
    assert "corner" in out or len(out.splitlines()) >= 12  # one line per class


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))  # as saved: float64 for --float64, no cast


def test_two_pass_batchnorm_is_float64_exact_and_keeps_the_module_interface():
    """The BatchNorm a float64 CPU run trains with in any number of processes: within a few ulp of
    a long-double reference (torch's own CPU BatchNorm is 3e-14 to 4e-13 off there, which made
    one process differ from two, whose BatchNorm is this one), same parameters and state dict."""
    import numpy as np
    from torch import nn

    from minnets.training.distributed import CrossProcessBatchNorm2d, two_pass_batchnorm

    g = torch.Generator().manual_seed(0)
    x = (3 + torch.randn(32, 8, 16, 16, generator=g, dtype=torch.float64)).relu()
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64) / x[:, 0].numel()
    plain = nn.Sequential(nn.BatchNorm2d(8)).double()
    with torch.no_grad():
        plain[0].weight.copy_(1 + 0.1 * torch.arange(8, dtype=torch.float64))
        plain[0].bias.copy_(0.01 * torch.arange(8, dtype=torch.float64))
    keys = list(plain.state_dict())
    model = two_pass_batchnorm(nn.Sequential(nn.BatchNorm2d(8)).double())
    model.load_state_dict(plain.state_dict())
    assert type(model[0]) is CrossProcessBatchNorm2d and list(model.state_dict()) == keys

    x_ = x.clone().requires_grad_()
    y = model(x_)
    (y * dy).sum().backward()
    X, DY = x.numpy().astype(np.longdouble), dy.numpy().astype(np.longdouble)
    gamma = plain[0].weight.detach().numpy().astype(np.longdouble)[None, :, None, None]
    beta = plain[0].bias.detach().numpy().astype(np.longdouble)[None, :, None, None]
    dims = (0, 2, 3)
    mean = X.mean(dims, keepdims=True)
    var = ((X - mean) ** 2).mean(dims, keepdims=True)
    rstd = 1 / np.sqrt(var + np.longdouble(1e-5))
    xhat = (X - mean) * rstd
    reference = {
        "out": xhat * gamma + beta,
        "grad x": gamma * rstd * (DY - DY.mean(dims, keepdims=True) - xhat * (DY * xhat).mean(dims, keepdims=True)),
        "grad weight": (DY * xhat).sum(dims), "grad bias": DY.sum(dims),
    }
    ours = {"out": y, "grad x": x_.grad, "grad weight": model[0].weight.grad, "grad bias": model[0].bias.grad}
    for key, expected in reference.items():
        got = ours[key].detach().numpy().astype(np.longdouble)
        assert np.sqrt(((got - expected) ** 2).sum() / (expected ** 2).sum()) < 2e-15, key

    plain(x)  # the running statistics as nn.BatchNorm2d keeps them
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(model.state_dict()[f"0.{key}"], plain.state_dict()[f"0.{key}"],
                                   rtol=1e-14, atol=0)
    model.load_state_dict(plain.state_dict())
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))  # evaluation is nn.BatchNorm2d's own


def test_two_gloo_processes_match_one_process(tmp_path):
    """Same global batches, BatchNorm over the global batch: one process's weights and metrics.

    A Min-Net in float64, its BatchNorms the two-pass ones in both runs (one process's too, see
    :mod:`minnets.training.distributed`), on uneven shares (batches of 45: 23 + 22 images, and a
    last one of 38). What remains is summation order (1e-16 relative in BatchNorm's moments,
    1e-14 in a conv's weight gradient over the batch): the weights agree to 7e-14 after these 3
    steps (4e-12 with torch's own BatchNorm in the one process, what the bound catches).

    Only the first steps are compared: a Min-Net's training amplifies any perturbation 5 to 13
    times per SGD step at lr 0.1, until (after about 12 steps on CIFAR) one ReLU's input changes
    sign at one pixel and the gradient jumps by 1e-3; from then on the two runs are two nearby
    trainings (2 epochs on 1,024 CIFAR images: test loss 4e-5 apart). A ResNet does not amplify.
    """
    options = tiny(model="min_resnet_n3", epochs=1, batch_size=45, float64=True)
    single, double = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "minnets", *cli_args(options, single)], check=True, env=subprocess_env())
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*torchrun, "-m", "minnets", *cli_args(options, double)], check=True, env=subprocess_env())
    assert json.loads((double / "config.json").read_text())["world_size"] == 2
    for one, two in zip(read_metrics(single), read_metrics(double), strict=True):
        for key in ("train_err", "test_err"):
            assert two[key] == one[key], key
        for key in ("train_loss", "test_loss"):
            assert two[key] == pytest.approx(one[key], rel=1e-13, abs=0), key
    tolerance = 5e-13  # of each tensor's largest entry
    ours, theirs = weights(single), weights(double)
    assert ours.keys() == theirs.keys()
    for key, tensor in ours.items():
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float64, key
            scale = tensor.abs().max().clamp(min=1e-3)  # num_batches_tracked and exact zeros aside
            assert (theirs[key] - tensor).abs().max() <= tolerance * scale, key
        else:
            assert torch.equal(theirs[key], tensor), key


def test_real_cifar10_a_few_hundred_steps_learn(tmp_path, cifar_root):
    options = RunConfig(model="resnet_n3", dataset="cifar10", data=str(cifar_root), subset=16_000, epochs=1,
                        batch_size=64, device="cpu")
    summary = train(options, tmp_path / "cifar")  # 250 steps, evaluated on all 10,000 test images
    assert summary["final_test_err"] < 75.0, summary


SPEED_MODEL = "min_resnet_n3"  # a Min-Net: its pyramid blocks and its fused native Min-blocks both take part


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> list[dict[str, float]]:
    run = tmp_path_factory.mktemp("plain") / "run"
    train(tiny(model=SPEED_MODEL, subset=64, batch_size=32, epochs=1, lr=0.01), run)
    return read_metrics(run)


@pytest.mark.parametrize(
    ("option", "rtol"),
    [({"channels_last": True}, 1e-3), ({"amp": "bf16"}, 3e-2), ({"compile": True}, 1e-3)],
    ids=["channels-last", "amp-bf16", "compile"],
)
def test_speed_options_agree_with_the_plain_path(tmp_path, plain_run, option, rtol):
    """A few steps at a small learning rate, where float differences are not yet amplified."""
    run = tmp_path / "run"
    train(tiny(model=SPEED_MODEL, subset=64, batch_size=32, epochs=1, lr=0.01, **option), run)
    (key, value), = option.items()
    assert json.loads((run / "config.json").read_text())[key] == value
    for ours, plain in zip(read_metrics(run), plain_run, strict=True):
        for metric in ("train_loss", "test_loss"):
            assert ours[metric] == pytest.approx(plain[metric], rel=rtol), metric
