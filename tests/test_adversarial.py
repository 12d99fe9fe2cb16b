"""Adversarial suite: our APGD-CE/PGD/FGSM against published facts and pyautoattack, and the sanity checks."""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from minnets.cli import main
from minnets.data import load_dataset
from minnets.errors import MinnetsError
from minnets.robustness.adversarial import (
    AdversarialSuite,
    apgd,
    apgd_checkpoints,
    fgsm,
    parse_eps,
    parse_eps_list,
    pgd,
    run_attack,
)
from minnets.robustness.evaluate import ImageModel, evaluate_suite, predict
from minnets.robustness.suite import Clean

HAS_PYAUTOATTACK = importlib.util.find_spec("pyautoattack") is not None
N_TEST = 48


@pytest.fixture(scope="module")
def cifar(cifar_root):
    return load_dataset("cifar10", root=cifar_root)


@pytest.fixture(scope="module")
def trained(cifar) -> nn.Module:
    """A small CNN trained briefly on 3,000 real CIFAR-10 images (about 45 % test accuracy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(512, 10))
    mean, std = torch.tensor(cifar.mean).view(1, 3, 1, 1), torch.tensor(cifar.std).view(1, 3, 1, 1)
    x = torch.from_numpy(cifar.train_images[:3000].transpose(0, 3, 1, 2).copy()).float() / 255
    y = torch.from_numpy(cifar.train_labels[:3000]).long()
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        for idx in torch.randperm(3000).split(100):
            loss = nn.functional.cross_entropy(model((x[idx] - mean) / std), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    torch.set_num_threads(before)
    return model.eval()


@pytest.fixture
def clean(cifar, trained, one_thread) -> Clean:
    return Clean(trained, cifar.test_images[:N_TEST], cifar.test_labels[:N_TEST], cifar.mean, cifar.std, "cifar10")


def images01(clean: Clean) -> tuple[torch.Tensor, torch.Tensor]:
    return clean.images01(), torch.as_tensor(clean.labels, dtype=torch.long)


def robust_error(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100 * float((model(x_adv).argmax(1) != y).float().mean())


# --- published facts ---------------------------------------------------------------------------------


def test_apgd_checkpoints_follow_the_published_recursion() -> None:
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (then 1.05 > 1), by hand from
    # p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, Section 3.2).
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.5", 0.5), ("0", 0.0), (" 1/255", 1 / 255)])
def test_eps_parse_as_written(text: str, value: float) -> None:
    assert parse_eps(text) == pytest.approx(value, abs=0)
    assert float(Fraction(text.strip())) == value


def test_eps_list_is_sorted_by_value_and_keeps_the_spelling() -> None:
    assert parse_eps_list("8/255,1/255,4/255,0.0157") == ["1/255", "4/255", "0.0157", "8/255"]


@pytest.mark.parametrize("text", ["8/0", "-1/255", "eight", "nan"])
def test_bad_eps_are_refused(text: str) -> None:
    with pytest.raises(MinnetsError, match="eps"):
        parse_eps(text)


def test_image_model_takes_unit_range_images_and_matches_training_normalisation(clean: Clean) -> None:
    wrapped = ImageModel(clean.model, clean.mean, clean.std)
    wrapped.train()
    assert not wrapped.training and not clean.model.training  # attacks see the eval-mode model
    with torch.no_grad():
        preds = wrapped(clean.images01()).argmax(1).numpy()
    np.testing.assert_array_equal(preds, predict(clean.model, clean.images, clean.mean, clean.std))


# --- attacks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm, eps", [("Linf", 4 / 255), ("L2", 0.25)])
@pytest.mark.parametrize("attack", [fgsm, pgd, apgd])
def test_attacks_stay_in_the_ball_and_the_image_box(clean: Clean, attack, norm: str, eps: float) -> None:
    x, y = images01(clean)
    x_adv = attack(clean.model01(), x, y, eps, norm, torch.Generator().manual_seed(0))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5)
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert robust_error(clean.model01(), x_adv, y) > robust_error(clean.model01(), x, y)


def test_apgd_error_rises_with_eps_and_reaches_100_percent(clean: Clean) -> None:
    suite = AdversarialSuite("Linf", "1/255,2/255,4/255,16/255,64/255", "apgd")
    rows = evaluate_suite(suite, clean)
    errors = [row["test_err"] for row in rows]
    assert [row["eps"] for row in rows] == ["0", "1/255", "2/255", "4/255", "16/255", "64/255"]
    assert errors == sorted(errors) and errors[0] < errors[2] < errors[3]
    assert errors[-1] == 100.0
    # Every image the attack made wrong had its prediction changed: POCP >= the rise in error.
    assert rows[0]["pocp"] == 0 and all(row["pocp"] >= row["test_err"] - errors[0] - 1e-9 for row in rows)
    assert all(row["checks"] == "passed" for row in rows), [row["checks"] for row in rows]


def test_pgd_and_apgd_beat_fgsm(clean: Clean) -> None:
    x, y = images01(clean)
    model, eps = clean.model01(), 2 / 255
    errors = {attack.__name__: robust_error(model, attack(model, x, y, eps, "Linf", torch.Generator().manual_seed(1)), y)
              for attack in (fgsm, pgd, apgd)}
    assert errors["pgd"] >= errors["fgsm"] and errors["apgd"] >= errors["fgsm"], errors


@pytest.mark.skipif(not HAS_PYAUTOATTACK, reason="pyautoattack (the robust extra) is not installed")
@pytest.mark.parametrize("norm, eps", [("Linf", 2 / 255), ("L2", 0.15)])
def test_apgd_agrees_with_pyautoattack_apgd_ce(clean: Clean, norm: str, eps: float) -> None:
    from pyautoattack.autopgd_base import APGDAttack

    x, y = images01(clean)
    model = clean.model01()
    ours = robust_error(model, apgd(model, x, y, eps, norm, torch.Generator().manual_seed(0)), y)
    reference = APGDAttack(model, n_iter=100, norm=norm, n_restarts=1, eps=eps, seed=0, loss="ce", rho=0.75,
                           device="cpu")
    theirs = robust_error(model, reference.perturb(x, y), y)
    clean_error = robust_error(model, x, y)
    assert theirs > clean_error + 10  # the comparison is at an eps where the attack matters
    assert abs(ours - theirs) <= 100 * 3 / N_TEST, (ours, theirs)  # within three of the 48 images


@pytest.mark.skipif(not HAS_PYAUTOATTACK, reason="pyautoattack (the robust extra) is not installed")
def test_standard_autoattack_runs_through_run_attack(clean: Clean) -> None:
    """The ``autoattack`` entry end to end on a few images: adversarial images in the eps-ball, at a
    large eps every image fooled (pyautoattack returns images and labels; a tuple once slipped through)."""
    few = Clean(clean.model, clean.images[:4], clean.labels[:4], clean.mean, clean.std, "cifar10")
    eps = 16 / 255
    x_adv = run_attack("autoattack", few, eps, "Linf", seed=0)
    x, y = images01(few)
    assert x_adv.shape == x.shape and float((x_adv - x).abs().max()) <= eps + 1e-6
    assert robust_error(few.model01(), x_adv, y) == 100.0


# --- sanity checks -----------------------------------------------------------------------------------


class Quantised(nn.Module):
    """Rounds its input to 5 grey levels first: the gradient is zero everywhere (masked gradients)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


def test_masked_gradients_mark_every_row_unreliable(cifar, trained, one_thread) -> None:
    masked = Quantised(trained).eval()
    clean = Clean(masked, cifar.test_images[:16], cifar.test_labels[:16], cifar.mean, cifar.std, "cifar10")
    rows = evaluate_suite(AdversarialSuite("Linf", "2/255,8/255", "apgd"), clean)
    for row in rows:
        assert row["checks"].startswith("unreliable: ") and "zero-grad 100.0%" in row["checks"]
        assert "large-eps apgd 64/255" in row["checks"]


def test_checks_are_cached_in_the_run_and_reused(clean: Clean, tmp_path) -> None:
    clean.cache_dir = tmp_path
    suite = AdversarialSuite("Linf", "2/255", "fgsm")
    first = evaluate_suite(suite, clean)
    cached = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    assert any(name.startswith("fgsm-") for name, _ in cached) and any(name.startswith("pgd-") for name, _ in cached)
    again = evaluate_suite(AdversarialSuite("Linf", "2/255", "fgsm"), clean, done=first)
    assert again == first and sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == cached


def test_suite_refuses_unknown_norms_and_attacks() -> None:
    with pytest.raises(MinnetsError, match="choose Linf or L2"):
        AdversarialSuite("L3")
    with pytest.raises(MinnetsError, match="unknown attack 'cw'"):
        AdversarialSuite(attack="cw")


@pytest.mark.parametrize("argv, message", [
    (["--suite", "adversarial", "--eps", "8/0"], "invalid eps '8/0'"),
    (["--suite", "adversarial", "--eps=-1/255"], "eps must be a non-negative number"),
    (["--suite", "jpeg", "--qualities", "0"], "JPEG quality must be an integer from 1 to 100"),
    (["--suite", "adversarial"], "does not exist; train it first"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message) -> None:
    assert main(["robustness", str(tmp_path / "nowhere"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minnets: error: ") and message in err and err.count("\n") == 1
