"""``minnets demo``: where its data comes from is decided by the sweep's own data check."""

from __future__ import annotations

from minnets.cli import main


def test_cifar_without_a_data_folder_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MINNETS_DATA", raising=False)
    code = main(["demo", "--dataset", "cifar10", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pass --data DIR or set MINNETS_DATA (or add --download)" in err
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").iterdir())



def test_the_demos_sweep_shows_each_runs_epoch_lines_with_eta_on_the_console(tmp_path):
    """The demo's sweep echoes the epoch lines its train subprocesses write to train.log."""
    from minnets.sweep import Settings, make_jobs, run_sweep

    jobs = make_jobs(["resnet_n3"], seeds=[0], overrides={
        "dataset": "shapes10", "recipe": "quick", "epochs": 2, "subset": 64, "test_subset": 64})
    lines: list[str] = []
    result = run_sweep(jobs, tmp_path / "demo", gpus=[], evaluate=False, echo=lines.append,
                       settings=Settings(echo_epochs=True, poll_seconds=0.1))
    assert not result.failed
    epochs = [line for line in lines if "resnet_n3-s0: epoch" in line]
    assert [line.split("epoch")[1].split()[0] for line in epochs] == ["1/2", "2/2"]
    assert all("ETA" in line and "test loss" in line for line in epochs)
    logged = [line for line in (tmp_path / "demo" / "resnet_n3-s0" / "train.log").read_text().splitlines()
              if line.startswith("epoch ")]
    assert [line.split(": ", 1)[1] for line in epochs] == logged  # the very lines of train.log


def test_demo_refuses_zero_seeds_in_one_line(tmp_path, capsys):
    assert main(["demo", "--seeds", "0", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds must be at least 1" in err
