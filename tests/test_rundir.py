"""The run directory: the train lock, recovery from kills and lost files, file modes, full and
read-only disks, damaged configs and checkpoints, per-suite result files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minnets import rundir
from minnets.cli import main
from minnets.data import load_dataset
from minnets.errors import MinnetsError


def train_args(run: Path, *extra: str, model: str = "resnet_n3", epochs: int = 2) -> list[str]:
    return ["train", "--model", model, "--dataset", "shapes10", "--subset", "64", "--test-subset", "100",
            "--batch-size", "32", "--epochs", str(epochs), "--device", "cpu", "--quiet", "--out", str(run), *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run, copied by the tests that damage it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_args(run)) == 0
    return run


def copy_run(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real small (or read-only) filesystem; skips where mounting is not allowed."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)  # a failed write may hold a handle a while


# --- the lock ------------------------------------------------------------------------------------


def test_second_trainer_refuses_naming_the_first(finished: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(finished, tmp_path)
    (run / "summary.json").unlink()  # work left to do, so that a second trainer would train
    before = (run / "checkpoint.pt").stat().st_mtime_ns
    with rundir.run_lock(run):  # the first trainer, as far as the lock file can tell
        assert main(train_args(run)) == 2
    error = capsys.readouterr().err
    assert f"is being trained by {socket.gethostname()} pid {os.getpid()}" in error and error.count("\n") == 1
    assert (run / "checkpoint.pt").stat().st_mtime_ns == before and not (run / "summary.json").exists()
    assert not (run / rundir.LOCK).exists()  # released when the holder is done


def test_stale_lock_of_a_dead_trainer_is_taken_over(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    (run / "model.safetensors").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / rundir.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "start": None,
                                               "token": "old", "acquired": "then"}))
    assert main(train_args(run)) == 0
    assert rundir.run_status(run) == "done" and not (run / rundir.LOCK).exists()


# --- recovery ------------------------------------------------------------------------------------


def test_lost_final_weights_are_rebuilt_from_the_checkpoint(finished: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(finished, tmp_path)
    weights = load_file(str(run / "model.safetensors"))
    (run / "model.safetensors").unlink()
    assert rundir.run_status(run) == "partial"  # not "done": the sweep sends it back to training
    assert main(["evaluate", str(run), "--device", "cpu"]) == 2
    assert f"minnets train --config {run / 'config.json'} --out {run}" in capsys.readouterr().err
    assert main(["train", "--config", str(run / "config.json"), "--out", str(run), "--quiet"]) == 0  # as advised
    rebuilt = load_file(str(run / "model.safetensors"))
    assert rebuilt.keys() == weights.keys() and all(torch.equal(rebuilt[k], weights[k]) for k in weights)
    assert rundir.read_summary(run) == rundir.read_summary(finished)


@pytest.mark.parametrize("summary_written", [False, True])
def test_metrics_row_lost_to_a_kill_is_rewritten_from_the_checkpoint(finished: Path, tmp_path: Path,
                                                                     summary_written: bool) -> None:
    """Killed after the last checkpoint's rename but before metrics.csv (and summary.json) were written."""
    run = copy_run(finished, tmp_path)
    lines = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("\n".join(lines[:-1]) + "\n")
    if not summary_written:
        (run / "summary.json").unlink()
        (run / "model.safetensors").unlink()
    assert len(rundir.read_metrics(run)) == 1
    assert main(train_args(run)) == 0
    assert rundir.read_metrics(run) == rundir.read_metrics(finished)
    assert rundir.read_summary(run) == rundir.read_summary(finished)


def test_temporary_files_left_by_a_kill_are_removed(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    (run / "summary.json").unlink()
    left = [run / ".checkpoint.pt.k1ll3d.tmp", run / ".metrics.csv.abc.tmp", run / ".summary.json.x.tmp"]
    for path in left:
        path.write_bytes(b"half")
    (run / ".jpeg.csv.other.tmp").write_bytes(b"another stage's")  # not the trainer's: kept
    assert main(train_args(run)) == 0
    assert not any(path.exists() for path in left) and (run / ".jpeg.csv.other.tmp").exists()


# --- files ---------------------------------------------------------------------------------------


def test_run_files_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        assert main(train_args(tmp_path / "run", epochs=1)) == 0
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
    assert set(modes) == {"config.json", "metrics.csv", "checkpoint.pt", "model.safetensors", "summary.json"}
    assert set(modes.values()) == {0o640}, modes


def test_disk_full_while_checkpointing_is_one_line(tmp_path: Path, capsys) -> None:
    with tmpfs(tmp_path / "small", "600k") as small:  # config.json fits, a 2.2 MB checkpoint does not
        assert main(train_args(small / "run", epochs=1)) == 2
        error = capsys.readouterr().err
        assert "no space left on the device to write" in error and "checkpoint.pt" in error
        assert error.count("\n") == 1
        assert not list((small / "run").glob(".*.tmp"))


def test_read_only_out_is_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as read_only:
        assert main(train_args(read_only / "run", epochs=1)) == 2
        error = capsys.readouterr().err
        assert "Read-only file system" in error and error.count("\n") == 1
    with pytest.raises(MinnetsError, match="is a file"):
        rundir.check_out_dir(Path(__file__))


@pytest.mark.parametrize(("content", "message"), [
    ("[]", "must hold a JSON object"),
    ("{}", "missing key 'model'"),
])
def test_damaged_config_is_one_line_for_every_reader(finished: Path, tmp_path: Path, capsys, content: str,
                                                     message: str) -> None:
    run = copy_run(finished, tmp_path)
    (run / "config.json").write_text(content)
    for argv in (["evaluate", str(run), "--device", "cpu"], train_args(run)):
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert message in error and str(run / "config.json") in error and error.count("\n") == 1


def test_checkpoint_of_another_model_is_one_line(finished: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "min"
    assert main(train_args(run, model="min_resnet_n3", epochs=1)) == 0
    for name in ("summary.json", "model.safetensors"):
        (run / name).unlink()
    shutil.copy(finished / "checkpoint.pt", run / "checkpoint.pt")  # resnet_n3's
    assert main(train_args(run, model="min_resnet_n3", epochs=1)) == 2
    error = capsys.readouterr().err
    assert "checkpoint.pt does not fit min_resnet_n3" in error and error.count("\n") == 1


def test_thread_count_is_recorded_and_a_resume_keeps_the_runs_own(finished: Path, tmp_path: Path, capsys) -> None:
    """Float results depend on the thread count: a resume adopts the stored one, or refuses another."""
    run = copy_run(finished, tmp_path)
    stored = rundir.read_config(run)
    assert stored.threads == torch.get_num_threads()
    (run / "model.safetensors").unlink()
    other = stored.threads + 1
    assert main(train_args(run, "--threads", str(other))) == 2
    assert f"threads: {stored.threads} there, {other} here" in capsys.readouterr().err
    torch.set_num_threads(other)
    try:
        assert main([*train_args(run)[:-1], str(run)]) == 0  # no --threads: resumes with the run's own
    finally:
        torch.set_num_threads(stored.threads)
    assert rundir.run_status(run) == "done"


def test_evaluation_uses_the_runs_test_subset(finished: Path, capsys) -> None:
    config = rundir.read_config(finished)
    images, labels = rundir.test_split(load_dataset("shapes10"), config)
    assert config.test_subset == 100 and len(images) == len(labels) == 100
    assert main(["evaluate", str(finished), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(100 images, its --test-subset 100)" in out
    assert f"test error {rundir.read_summary(finished)['final_test_err']:.2f}%" in out


# --- per-suite results -------------------------------------------------------------------------


def test_result_files_round_trip_and_locations(tmp_path: Path) -> None:
    assert rundir.read_results(tmp_path, "corruptions") == []
    rows = [{"corruption": "fog", "severity": 1, "test_err": 12.5, "extra": "dropped"},
            {"corruption": "snow", "severity": 5, "test_err": 40.0}]
    path = rundir.write_results(tmp_path, "corruptions", rows, ["corruption", "severity", "test_err"])
    assert path == rundir.result_csv(tmp_path, "corruptions") == tmp_path / "corruptions.csv"
    assert path.read_text().splitlines()[0] == "corruption,severity,test_err"
    assert rundir.read_results(tmp_path, "corruptions") == [
        {"corruption": "fog", "severity": "1", "test_err": "12.5"},
        {"corruption": "snow", "severity": "5", "test_err": "40.0"}]
    assert not list(tmp_path.glob(".*"))
    assert rundir.suite_cache_dir(tmp_path, "adversarial") == tmp_path / "cache" / "adversarial"
    assert rundir.analysis_dir(tmp_path) == tmp_path / "analysis"
    (tmp_path / "file").write_text("")
    with pytest.raises(MinnetsError, match="cannot write"):
        rundir.check_writable(tmp_path / "file")
