"""The adversarial suite without the optional ``pyautoattack`` package (the ``robust`` extra).

``pyautoattack`` is installed in the development environment, so these tests hide it; they fail
if the suite's own attacks (APGD-CE, PGD, FGSM in plain PyTorch) start to need it, or if asking
for ``square``/``autoattack`` without it is anything but one clear line.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from minnets.cli import main
from minnets.config import RunConfig
from minnets.errors import MinnetsError
from minnets.models import create_model
from minnets.robustness.adversarial import AdversarialSuite
from minnets.robustness.evaluate import evaluate_suite, predict
from minnets.robustness.suite import Clean
from minnets.rundir import write_config

NOT_RUN = "passed (square not run: pyautoattack not installed)"
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture
def no_pyautoattack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import pyautoattack`` (and its submodules) fail as if the package were not installed."""
    for name in [n for n in sys.modules if n == "pyautoattack" or n.startswith("pyautoattack.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    assert importlib.util.find_spec("pyautoattack") is None
    with pytest.raises(ImportError):
        import pyautoattack  # noqa: F401
    with pytest.raises(ImportError):
        from pyautoattack.square import SquareAttack  # noqa: F401


@pytest.fixture
def clean(one_thread) -> Clean:
    """A linear model on 32 random 8 x 8 images, labelled with its own clean predictions (0 % error)."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    images = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    return Clean(model, images, predict(model, images, MEAN, STD), MEAN, STD, "toy")


@pytest.mark.parametrize("attack", ["apgd", "pgd", "fgsm"])
def test_own_attacks_and_their_checks_run_without_pyautoattack(no_pyautoattack, clean: Clean, attack: str) -> None:
    rows = evaluate_suite(AdversarialSuite("Linf", "1/510,2/255", attack), clean)
    assert [row["eps"] for row in rows] == ["0", "1/510", "2/255"]
    errors = [row["test_err"] for row in rows]
    assert errors[0] == 0 and 0 < errors[1] < errors[2], errors  # the attack works, more with a larger eps
    assert all(row["pocp"] == row["test_err"] for row in rows)  # every image starts correct
    # Every check but Square ran and passed; the rows say that Square was not run, and why.
    assert [row["checks"] for row in rows] == [NOT_RUN] * 3


@pytest.mark.parametrize("attack", ["autoattack", "square"])
def test_suite_asking_for_a_pyautoattack_attack_without_it_is_a_clear_error(no_pyautoattack, attack: str) -> None:
    with pytest.raises(MinnetsError, match=r"^the square and autoattack attacks need the pyautoattack package: "
                                           r"pip install 'minnets\[robust\]'$"):
        AdversarialSuite("Linf", "8/255", attack)


@pytest.mark.parametrize("attack", ["autoattack", "square"])
def test_cli_asking_for_a_pyautoattack_attack_without_it_says_so_in_one_line(
        no_pyautoattack, tmp_path: Path, capsys: pytest.CaptureFixture[str], attack: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, RunConfig(model="resnet_n3", dataset="cifar10", data=str(tmp_path / "no-data"), num_classes=10,
                                seed=0, epochs=1))
    save_file(create_model("resnet_n3", num_classes=10).state_dict(), str(run / "model.safetensors"))
    assert main(["robustness", str(run), "--suite", "adversarial", "--attack", attack, "--n", "4",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == ("minnets: error: the square and autoattack attacks need the pyautoattack package: "
                   "pip install 'minnets[robust]'\n")
    assert not (run / "adversarial.csv").exists()
