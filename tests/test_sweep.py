"""minnets sweep: grids, locks, and real tiny sweeps that are killed, restarted and run twice at once.

The sweeps train resnet_n3 on shapes10 for one epoch on 32 images; a run costs about 10 s of
CPU, most of it the interpreter start and the evaluation of the 2,000 test images.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from minnets.cli import main
from minnets.config import RunConfig
from minnets.errors import MinnetsError
from minnets.sweep import Job, JobLock, SlurmOptions, load_grid, make_jobs, parse_gpus, run_sweep
from minnets.sweep.locks import Holder, _start_time, process_alive
from minnets.sweep.pool import LOG_MARK, Settings, local_slots, lock_path, stages_needed

TINY = {"dataset": "shapes10", "epochs": 1, "subset": 32, "test_subset": 200, "batch_size": 32, "channels_last": True}  # NHWC: faster on CPU
NAMES = [f"resnet_n3-s{seed}" for seed in (1, 2, 3, 4)]


def write_grid(tmp_path: Path, data: object, name: str = "grid.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def tiny_grid(tmp_path: Path, seeds: tuple[int, ...] = (1, 2, 3, 4), **extra: object) -> Path:
    return write_grid(tmp_path, {"models": ["resnet_n3"], "seeds": list(seeds), "overrides": {**TINY, **extra}})


# --- grids -------------------------------------------------------------------------------------------


def test_named_grids_hold_the_papers_runs_in_rounds_of_seeds() -> None:
    resnet, densenet, paper = load_grid("paper-resnet"), load_grid("paper-densenet"), load_grid("paper")
    assert (len(resnet), len(densenet), len(paper)) == (40, 18, 58)
    assert len({job.name for job in paper}) == 58
    assert {job.seed for job in resnet} == {9, 16, 507, 723, 744}
    assert {job.seed for job in densenet} == {9, 507, 723}
    assert all(job.overrides == {} for job in paper)
    # Round 1 trains every model once (seed 9), shallow before deep, ResNets before DenseNets.
    first = paper[:14]
    assert {job.seed for job in first} == {9} and len({job.model for job in first}) == 14
    assert [job.model for job in first[:3]] == ["resnet_n3", "min_resnet_n3", "resnet_n5"]
    assert first[-1].model == "min_densenet_l100"
    assert paper[0].name == "resnet_n3-s9"


def test_json_grid_with_patterns_default_seeds_and_overrides(tmp_path: Path) -> None:
    grid = write_grid(tmp_path, {"models": ["min_resnet_n[35]", "densenet_l22"],
                                 "overrides": {"dataset": "shapes10", "epochs": 2, "lr": 0.05, "subset": None,
                                               "channels_last": True, "memory_efficient": False, "device": "cpu"}})
    jobs = load_grid(grid)
    assert [job.name for job in jobs[:3]] == ["min_resnet_n3-s9", "min_resnet_n5-s9", "densenet_l22-s9"]
    assert sorted(job.seed for job in jobs if job.model == "densenet_l22") == [9, 507, 723]
    assert sorted(job.seed for job in jobs if job.model == "min_resnet_n5") == [9, 16, 507, 723, 744]
    assert jobs[0].config() == RunConfig(model="min_resnet_n3", seed=9, dataset="shapes10", epochs=2, lr=0.05,
                                         channels_last=True, device="cpu")
    off = load_grid(write_grid(tmp_path, {"models": ["resnet_n3"], "seeds": [1],
                                          "overrides": {"channels_last": False, "nesterov": False}}, "off.json"))
    assert off[0].config().channels_last is False and off[0].config().nesterov is False  # switched off from a grid
    quick = load_grid(write_grid(tmp_path, {"models": ["resnet_n3"], "overrides": {"recipe": "quick"}}, "q.json"))
    assert [job.seed for job in quick] == [0, 1, 2]


@pytest.mark.parametrize("data, message", [
    ({"models": ["resnet_n3"], "epochs": 3}, "unknown key"),
    ({"models": ["resnet_n33"]}, "unknown model"),
    ({"models": ["nothing_*"]}, "matches no model"),
    ({"models": []}, "non-empty list"),
    ({"models": ["resnet_n3"], "seeds": [1, "2"]}, "list of integers"),
    ({"models": ["resnet_n3"], "overrides": {"epoch": 3}}, "unknown override 'epoch'"),
    ({"models": ["resnet_n3"], "overrides": {"seed": 3}}, "grid sets it"),
    ({"models": ["resnet_n3"], "overrides": {"epochs": "3"}}, "must be an integer or null"),
    ({"models": ["resnet_n3"], "overrides": {"compile": 1}}, "must be true or false"),
    ({"models": ["resnet_n3"], "overrides": {"recipe": "fast"}}, "unknown recipe"),
    # values `minnets train` would refuse, refused before any job starts
    ({"models": ["resnet_n3"], "overrides": {"amp": "fp16"}}, r"job resnet_n3-s9: --amp must be one of none, bf16"),
    ({"models": ["resnet_n3"], "overrides": {"dataset": "imagenet"}}, "--dataset must be one of"),
    ({"models": ["resnet_n3"], "overrides": {"epochs": 0}}, "--epochs must be at least 1, got 0"),
    ({"models": ["resnet_n3"], "overrides": {"lr": -1}}, "--lr must be a finite number above 0"),
    ({"models": ["resnet_n3"], "overrides": {"unit": "product"}}, "--unit product needs a Min-Net"),
    ([1, 2], "JSON object"),
])
def test_bad_grid_files_are_one_line_errors(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(MinnetsError, match=message) as error:
        load_grid(write_grid(tmp_path, data))
    assert "\n" not in str(error.value) and str(tmp_path / "grid.json") in str(error.value)


def test_unknown_grid_name_and_broken_json(tmp_path: Path) -> None:
    with pytest.raises(MinnetsError, match="unknown grid 'paper-vgg'.*paper-resnet"):
        load_grid("paper-vgg")
    broken = tmp_path / "broken.json"
    broken.write_text("{models: ")
    with pytest.raises(MinnetsError, match="not valid JSON"):
        load_grid(broken)


def test_dry_run_prints_one_line_per_run_with_its_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    (root / NAMES[0]).mkdir(parents=True)
    (root / NAMES[0] / "config.json").write_text("{}")
    (root / NAMES[0] / "summary.json").write_text("{}")
    (root / NAMES[0] / "model.safetensors").write_text("")
    (root / NAMES[1]).mkdir()
    (root / NAMES[1] / "config.json").write_text("{}")
    lock = JobLock(lock_path(root.resolve(), NAMES[1]))
    assert lock.try_acquire()
    assert main(["sweep", str(tiny_grid(tmp_path)), "--out", str(root), "--dry-run"]) == 0
    lock.release()
    *lines, total, estimate = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    # the done run counts no epoch; the partial one (no metrics.csv yet) and the two pending one each
    assert total == "total: 4 runs (2 pending, 1 partial, 1 trained), 3 epochs left (96 training images)"
    assert estimate.startswith("estimated wall time: ") and "with 1 worker, from 1 network timed just now on cpu" in estimate
    assert [line.split()[:4] for line in lines] == [
        [str(root.resolve() / name), "resnet_n3", str(seed), status]
        for name, seed, status in zip(NAMES, (1, 2, 3, 4), ("done", "partial", "pending", "pending"))
    ]
    assert f"running on {socket.gethostname()} pid {os.getpid()}" in lines[1]
    assert not (root / NAMES[2]).exists()  # a dry run creates nothing


def test_reproduce_is_the_paper_grid_and_checks_the_data_first(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["reproduce", "resnet", "--out", str(tmp_path / "runs"), "--dry-run", "--no-estimate"]) == 0
    *lines, total = capsys.readouterr().out.splitlines()
    assert len(lines) == 40 and lines[0].split()[1:] == ["resnet_n3", "9", "pending"]
    assert total == "total: 40 runs (40 pending, 0 partial, 0 trained), 8,000 epochs left (400,000,000 training images)"
    monkeypatch.delenv("MINNETS_DATA", raising=False)
    (tmp_path / "empty").mkdir()
    assert main(["reproduce", "all", "--out", str(tmp_path / "runs"), "--data", str(tmp_path / "empty")]) == 2
    assert "CIFAR-10 not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --- what is left of a job, where it runs ---------------------------------------------------------------


def test_stages_needed_follow_summary_and_jpeg_csv(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert stages_needed(run, ("jpeg",)) == ["train", "jpeg"]
    assert stages_needed(run, ()) == ["train"]
    (run / "summary.json").write_text("{}")
    assert stages_needed(run, ()) == ["train"]  # finished, but its weights are lost: train rebuilds them
    (run / "model.safetensors").write_text("")
    assert stages_needed(run, ()) == []
    assert stages_needed(run, ("jpeg",)) == ["jpeg"]
    header = "quality,mode,test_err,pocp,n_images,codec\n"
    from minnets.robustness import get_suite

    codec = get_suite("jpeg").version()  # rows of another codec version are evaluated again
    rows = [f"{q},paper,10.0,{0.0 if q == 100 else 1.0},2000,{codec}" for q in range(100, 0, -10)]
    (run / "jpeg.csv").write_text(header + "\n".join(rows[:-1]) + "\n")  # quality 10 missing
    assert stages_needed(run, ("jpeg",)) == ["jpeg"]
    (run / "jpeg.csv").write_text(header + "\n".join(r.replace("paper", "pillow") for r in rows) + "\n")
    assert stages_needed(run, ("jpeg",)) == ["jpeg"]
    (run / "jpeg.csv").write_text(header + "\n".join(rows) + "\n")
    assert stages_needed(run, ("jpeg",)) == []


def test_workers_take_gpus_round_robin_or_share_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("minnets.sweep.pool.cpu_count", lambda: 16)
    slots = local_slots(4, ["0", "1"])
    assert [slot.env["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0", "1", "0", "1"]
    assert [slot.label for slot in slots] == ["gpu 0", "gpu 1", "gpu 0", "gpu 1"]
    assert all(slot.device is None and slot.env["OMP_NUM_THREADS"] == "4" for slot in slots)
    cpu = local_slots(3, [])
    assert all(s.device == "cpu" and s.env["CUDA_VISIBLE_DEVICES"] == "" and s.env["OMP_NUM_THREADS"] == "5"
               for s in cpu)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert "OMP_NUM_THREADS" not in local_slots(2, [])[0].env
    assert parse_gpus("0, 1") == ["0", "1"] and parse_gpus("none") == [] and parse_gpus(None) is None
    with pytest.raises(MinnetsError, match="--gpus"):
        parse_gpus("0,,1")


# --- locks -------------------------------------------------------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def plant_lock(path: Path, host: str, pid: int, start: str | None = None, age: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "start": start, "token": "planted", "acquired": "then"}))
    if age:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))


def test_lock_excludes_until_released_and_never_removes_anothers(tmp_path: Path) -> None:
    path = tmp_path / ".locks" / "job.lock"
    first, second = JobLock(path), JobLock(path)
    assert first.try_acquire() and first.held
    assert not second.try_acquire()
    assert second.blocked_by is not None and second.blocked_by.pid == os.getpid()
    assert first.refresh()
    first.release()
    assert not path.exists()
    assert second.try_acquire()
    first.release()  # no longer first's: must not remove second's lock
    assert path.exists() and second.refresh()
    second.release()


@pytest.mark.parametrize("case", ["dead pid", "reused pid", "old foreign heartbeat"])
def test_stale_locks_are_taken_over(tmp_path: Path, case: str) -> None:
    path = tmp_path / "job.lock"
    if case == "dead pid":
        plant_lock(path, socket.gethostname(), dead_pid())
    elif case == "reused pid":  # our pid, but the holder was another process that had it before
        plant_lock(path, socket.gethostname(), os.getpid(), start="1")
        if _start_time(os.getpid()) is None:
            pytest.skip("no /proc/PID/stat: process start times are unknown here")
    else:
        plant_lock(path, "another-host", 1, age=120)
    lock = JobLock(path, stale_seconds=60)
    assert lock.try_acquire()
    assert json.loads(path.read_text())["token"] != "planted"
    lock.release()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to tell zombies")
def test_a_zombie_holds_no_lock() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert process_alive(process.pid, _start_time(process.pid))
    process.kill()
    deadline = time.monotonic() + 10
    while process_alive(process.pid) and time.monotonic() < deadline:  # not reaped yet: a zombie
        time.sleep(0.05)
    assert not process_alive(process.pid)
    process.wait()


def test_live_locks_are_respected(tmp_path: Path) -> None:
    path = tmp_path / "job.lock"
    plant_lock(path, "another-host", 1, age=30)  # heartbeat fresher than the timeout
    lock = JobLock(path, stale_seconds=60)
    assert not lock.try_acquire()
    assert lock.blocked_by == Holder("another-host", 1, None, "planted", "then")
    assert lock.holder() is not None
    assert not lock.refresh()
    lock.release()
    assert path.exists()


RACER = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("racer_locks", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["racer_locks"] = module
spec.loader.exec_module(module)
lock = module.JobLock(sys.argv[2])
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
print("won" if lock.try_acquire() else "lost", flush=True)
while not os.path.exists(sys.argv[4]):  # hold it until every racer has tried
    time.sleep(0.05)
"""


def test_racing_for_a_stale_lock_exactly_one_wins(tmp_path: Path) -> None:
    from minnets.sweep import locks

    path = tmp_path / "job.lock"
    plant_lock(path, socket.gethostname(), dead_pid())
    start, done = time.time() + 1.0, tmp_path / "all-tried"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, locks.__file__, str(path), str(start), str(done)],
                               stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outcomes = sorted(racer.stdout.readline().strip() for racer in racers)
    done.touch()
    for racer in racers:
        racer.communicate(timeout=60)
    assert outcomes == ["lost"] * 5 + ["won"]


# --- real sweeps -------------------------------------------------------------------------------------------


def train_starts(run_dir: Path) -> int:
    log = run_dir / "train.log"
    return sum(line.startswith(f"{LOG_MARK} train") for line in log.read_text().splitlines()) if log.exists() else 0


def done_runs(root: Path) -> set[str]:
    return {name for name in NAMES if (root / name / "summary.json").exists()}


def partial_runs(root: Path) -> set[str]:
    return {name for name in NAMES if (root / name / "config.json").exists()} - done_runs(root)


def start_sweep(grid: Path, root: Path, output: Path, workers: int = 2) -> subprocess.Popen[bytes]:
    with open(output, "ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "minnets", "sweep", str(grid), "--out", str(root),
                                 "--workers", str(workers), "--gpus", "none", "--no-report"],
                                stdout=handle, stderr=subprocess.STDOUT)


def wait_until(condition, process: subprocess.Popen[bytes], output: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the sweep ended early:\n{output.read_text()}"
        assert time.monotonic() < deadline, f"timed out:\n{output.read_text()}"
        time.sleep(0.1)


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def assert_no_runs_left(root: Path) -> None:
    if not Path("/proc/self/cmdline").exists():
        return
    deadline = time.monotonic() + 15
    while processes_mentioning(str(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(root)) == [], "training processes outlived their sweep"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="orphan runs die with the sweep on Linux only")
def test_sweep_killed_by_sigterm_then_sigkill_resumes_without_redoing_finished_runs(tmp_path: Path) -> None:
    grid, root = tiny_grid(tmp_path), tmp_path / "root"

    # 1. SIGTERM once a run is finished and another is underway.
    out1 = tmp_path / "sweep1.out"
    sweep = start_sweep(grid, root, out1)
    wait_until(lambda: done_runs(root) and partial_runs(root), sweep, out1)
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=60) != 0
    assert "run the same command again to resume" in out1.read_text()
    assert not list((root / ".locks").glob("*.lock")), "SIGTERM must release the locks"
    assert_no_runs_left(root)
    finished = done_runs(root)
    assert finished and finished != set(NAMES)
    stamps = {name: [(root / name / f).stat() for f in ("summary.json", "model.safetensors")] for name in finished}

    # 2. SIGKILL once the restarted sweep has started training: its runs die, its locks stay behind.
    out2 = tmp_path / "sweep2.out"
    starts = sum(train_starts(root / name) for name in NAMES)
    sweep = start_sweep(grid, root, out2)
    wait_until(lambda: sum(train_starts(root / name) for name in NAMES) > starts and done_runs(root) != set(NAMES),
               sweep, out2)
    sweep.kill()
    sweep.wait(timeout=60)
    assert_no_runs_left(root)
    assert list((root / ".locks").glob("*.lock")), "a killed sweep leaves its locks"

    # 3. The same command again: stale locks recovered, the rest finished, finished runs untouched.
    out3 = tmp_path / "sweep3.out"
    sweep = start_sweep(grid, root, out3)
    assert sweep.wait(timeout=600) == 0, out3.read_text()
    assert done_runs(root) == set(NAMES)
    assert "running elsewhere" not in out3.read_text()
    for name in finished:
        assert train_starts(root / name) == 1
        after = [(root / name / f).stat() for f in ("summary.json", "model.safetensors")]
        assert [(s.st_ino, s.st_mtime_ns) for s in after] == [(s.st_ino, s.st_mtime_ns) for s in stamps[name]]
    assert "[4/4 done]" in out3.read_text()


def test_two_sweeps_on_one_root_run_each_job_once(tmp_path: Path) -> None:
    # One worker each, two jobs: each sweep trains one job and waits for the other's.
    grid, root = tiny_grid(tmp_path, seeds=(1, 2)), tmp_path / "root"
    outputs = [tmp_path / "a.out", tmp_path / "b.out"]
    sweeps = [start_sweep(grid, root, output, workers=1) for output in outputs]
    for sweep, output in zip(sweeps, outputs):
        assert sweep.wait(timeout=600) == 0, output.read_text()
    assert done_runs(root) == set(NAMES[:2])
    assert [train_starts(root / name) for name in NAMES[:2]] == [1, 1]
    texts = [output.read_text() for output in outputs]
    assert "running elsewhere" in "".join(texts)
    assert all("sweep finished: 2/2 runs done" in text for text in texts)
    # A third sweep finds nothing to do.
    again = run_sweep(grid, root, workers=2, gpus=[], evaluate=False, echo=lambda line: None)
    assert [r.detail for r in again.results] == ["finished already"] * 2
    assert [train_starts(root / name) for name in NAMES[:2]] == [1, 1]


def test_failing_runs_are_reported_and_runs_held_elsewhere_are_waited_for(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    grid = tiny_grid(tmp_path, seeds=(1,), subset=99_999)  # more than shapes10's 10,000: refused once loaded
    root = tmp_path / "root"
    assert main(["sweep", str(grid), "--out", str(root), "--gpus", "none", "--no-report"]) == 2
    captured = capsys.readouterr()
    assert "FAILED  resnet_n3-s1: train exited with 2" in captured.out
    assert "--subset must be between 1 and 10000, got 99999" in captured.out
    assert "sweep finished: the run failed" in captured.out
    assert "1 of 1 run failed (resnet_n3-s1)" in captured.err
    assert not list((root / ".locks").glob("*.lock"))

    # Held by a live process on this host: the sweep waits, and takes the job over once it is gone.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    plant_lock(lock_path(root.resolve(), "resnet_n3-s1"), socket.gethostname(), holder.pid, _start_time(holder.pid))
    timer = threading.Timer(1.5, lambda: (holder.kill(), holder.wait()))
    timer.start()
    lines: list[str] = []
    result = run_sweep(grid, root, gpus=[], evaluate=False, echo=lines.append, settings=Settings(recheck_seconds=0.2))
    timer.join()
    assert f"running elsewhere ({socket.gethostname()} pid {holder.pid}" in "\n".join(lines)
    assert [r.status for r in result.results] == ["failed"]
    assert train_starts(root / "resnet_n3-s1") == 2


def test_slurm_backend_without_submitit_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(MinnetsError, match=r"pip install 'minnets\[slurm\]'"):
        run_sweep(tiny_grid(tmp_path), tmp_path / "root", backend="slurm", evaluate=False)


def test_slurm_backend_runs_the_unfinished_jobs_as_tasks(tmp_path: Path) -> None:
    pytest.importorskip("submitit", reason="submitit (the optional extra 'slurm') is not installed")
    jobs, root = make_jobs(["resnet_n3"], [1, 2], TINY), tmp_path / "root"
    (root / jobs[1].name).mkdir(parents=True)  # finished already: not submitted
    (root / jobs[1].name / "summary.json").write_text("{}")
    (root / jobs[1].name / "model.safetensors").write_text("")
    lines: list[str] = []
    result = run_sweep(jobs, root, backend="slurm", evaluate=False, echo=lines.append,
                       slurm=SlurmOptions(cluster="local", gpus_per_task=0, cpus_per_task=1, time_min=30),
                       settings=Settings(recheck_seconds=0.5))
    assert [r.status for r in result.results] == ["done", "done"], "\n".join(lines)
    assert result.results[1].detail == "finished already"
    assert (root / jobs[0].name / "summary.json").exists() and train_starts(root / jobs[0].name) == 1
    assert any("submitted 1 task as job array" in line for line in lines)
    assert list((root / ".submitit").iterdir()), "submitit's task files go to ROOT/.submitit"


def test_slurm_backend_needs_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("submitit", reason="submitit (the optional extra 'slurm') is not installed")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MinnetsError, match="sbatch"):
        run_sweep([Job("resnet_n3", 1, TINY)], tmp_path / "root", backend="slurm", evaluate=False)


# --- the run contract in sweeps ---------------------------------------------------------------------


def test_ablation_grid_holds_every_and_operator_beside_the_baselines() -> None:
    from minnets.ops import operator_names

    jobs = load_grid("ablation")
    units = operator_names()
    assert units[0] == "min" and {"product", "max", "sum", "smoothmin", "powermean", "geomean", "single"} <= set(units)
    assert len(jobs) == (1 + len(units)) * (5 + 3)  # paper seeds: five ResNet, three DenseNet
    resnet = {(job.model, job.overrides.get("unit", "min")) for job in jobs if job.seed == 16}
    assert resnet == {("resnet_n3", "min")} | {("min_resnet_n3", unit) for unit in units}
    assert {job.seed for job in jobs if job.model == "min_densenet_l22"} == {9, 507, 723}
    assert [job.name for job in jobs[:3]] == ["resnet_n3-s9", "min_resnet_n3-s9", "min_resnet_n3-product-s9"]
    assert all(job.config().recipe is None and job.config().unit == job.overrides.get("unit", "min") for job in jobs)


def test_sweep_out_that_is_a_file_and_unknown_suites_are_one_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert main(["sweep", str(tiny_grid(tmp_path)), "--out", str(tmp_path / "file"), "--gpus", "none"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["sweep", str(tiny_grid(tmp_path)), "--out", str(tmp_path / "root"), "--gpus", "none",
                 "--suites", "jpeg,weather"]) == 2
    assert "unknown suite 'weather'" in capsys.readouterr().err


def test_sweep_hands_the_config_to_its_worker_and_runs_the_suite_stages(tmp_path: Path) -> None:
    grid = tiny_grid(tmp_path, seeds=(1,), channels_last=False)  # a boolean switched off from the grid
    lines: list[str] = []
    result = run_sweep(grid, tmp_path / "root", gpus=[], suites=("jpeg",), echo=lines.append)
    assert [r.status for r in result.results] == ["done"], "\n".join(lines)
    run = tmp_path / "root" / "resnet_n3-s1"
    job = RunConfig.from_json(run / "job.json")
    assert job == load_grid(grid)[0].config() and job.channels_last is False
    stored = RunConfig.from_json(run / "config.json")
    assert stored.identity() == {**job.resolved(10, 10_000, 2_000, stored.threads).identity()}
    log = (run / "jpeg.log").read_text()
    assert f"minnets robustness {run} --suite jpeg" in log
    from minnets.robustness import suite_complete

    assert suite_complete(run, "jpeg") and result.report is not None
