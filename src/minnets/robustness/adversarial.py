"""Adversarial robustness as RobustBench measures it, with the checks that keep it honest.

The model is attacked through :class:`~minnets.robustness.evaluate.ImageModel` ([0, 1] images
in, normalisation inside, eval mode, fp32 logits). Attacks, all untargeted on the true label:

* ``apgd``: APGD-CE, Croce & Hein, "Reliable evaluation of adversarial robustness with an
  ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1: step size 2 eps halved
  at checkpoints ``w_j = ceil(p_j N)`` (``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1}
  - 0.03, 0.06)``) when fewer than ``rho = 0.75`` of the steps since the last checkpoint raised
  the loss or neither step size nor best loss changed, restarting from the best point;
  momentum ``alpha = 0.75``; 100 iterations; random start in the ball.
* ``pgd``: Madry et al., ICLR 2018: random start, 50 steps of ``2.5 eps / steps``.
* ``fgsm``: Goodfellow et al., ICLR 2015 (one signed step; for L2 one normalised step).
* ``square``: the gradient-free Square Attack (Andriushchenko et al., ECCV 2020) as the
  ``pyautoattack`` package implements it (the optional ``robust`` extra).
* ``autoattack``: standard AutoAttack from ``pyautoattack`` (APGD-CE, APGD-T, FAB-T, Square).

A point counts as fooled if any iterate fooled it. Robust error and POCP (paper Eq. 5, the
changed predictions the FP-net papers also reported under attack) are per eps; ``eps = 0`` is
the clean row.

A minimum passes gradient to one branch only and may mask gradients, so every result carries
sanity checks (Carlini et al. 2019, "On evaluating adversarial robustness"); a failed one marks
the row ``unreliable`` and names the check:

* ``monotone``: robust error does not fall as eps grows (by more than the tolerance);
* ``large-eps``: the attack fools >= 99 % of the images at a large eps (Linf 64/255, L2 8);
* ``fgsm``: the iterative attack is at least as strong as FGSM;
* ``square``: Square fools no more than the tolerance of the images the attack left correct
  (without ``pyautoattack`` not run, and the row's ``checks`` say so);
* ``zero-grad``: at most 1 % of the clean images have an all-zero input gradient of the loss.

Tolerance: 0.5 % of the images, at least one image (random starts differ from run to run).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import math
import sys
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from minnets.errors import MinnetsError
from minnets.files import atomic_write
from minnets.robustness.evaluate import predict01
from minnets.robustness.suite import Clean, Perturbed, Row, Suite

NORMS = ("Linf", "L2")
ATTACKS = ("apgd", "pgd", "fgsm", "square", "autoattack")
DEFAULT_EPS = {"Linf": "1/255,2/255,4/255,8/255", "L2": "0.125,0.25,0.5,1"}
LARGE_EPS = {"Linf": "64/255", "L2": "8"}
ATTACKS_VERSION = "1"  # raise when an attack's arithmetic changes: old rows are then evaluated again
APGD_ITERATIONS, PGD_STEPS, SQUARE_QUERIES = 100, 50, 1000
COLUMNS = ("attack", "norm", "eps", "test_err", "pocp", "n_images", "checks", "version")
ZERO_GRAD_LIMIT = 1.0  # percent

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor, float, str, torch.Generator], torch.Tensor]


# --- eps -----------------------------------------------------------------------------------------


def parse_eps(text: str) -> float:
    """``"8/255"`` or ``"0.5"`` -> its value; negative or malformed values are one-line errors."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise MinnetsError(f"invalid eps {text!r}: give a number or a fraction such as 8/255") from None
    if value < 0 or not math.isfinite(value):
        raise MinnetsError(f"eps must be a non-negative number, got {text!r}")
    return value


def parse_eps_list(text: str) -> list[str]:
    """Distinct eps strings as written, smallest first (values checked)."""
    parts = [part.strip() for part in text.split(",")]
    by_value: dict[float, str] = {}
    for part in parts:
        by_value.setdefault(parse_eps(part), part)
    return [by_value[v] for v in sorted(by_value)]


# --- geometry ------------------------------------------------------------------------------------


def _flat_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of unit size: sign for Linf, normalised gradient for L2."""
    if norm == "Linf":
        return grad.sign()
    return grad / _flat_norm(grad).clamp_min(1e-12)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | float, norm: str) -> torch.Tensor:
    """Into the eps-ball around ``x`` and the image box [0, 1] (for L2 ball first, then the box)."""
    delta = x_adv - x
    if norm == "Linf":
        delta = torch.minimum(torch.maximum(delta, -eps), eps) if isinstance(eps, torch.Tensor) \
            else delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """Uniform in the Linf box; for L2 uniform in the ball (Gaussian direction, radius eps u^(1/d))."""
    if norm == "Linf":
        noise = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1).to(x.device) * eps
    else:
        direction = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        radius = torch.rand(len(x), generator=generator, dtype=x.dtype).to(x.device) ** (1 / x[0].numel()) * eps
        noise = direction / _flat_norm(direction) * radius.view(-1, 1, 1, 1)
    return _project(x + noise, x, eps, norm)


def _loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image cross-entropy, its input gradient and the predictions, in one pass."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad.detach(), logits.detach().argmax(1)


# --- attacks ---------------------------------------------------------------------------------------


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """One step of size eps along the loss gradient (its sign for Linf)."""
    _, grad, _ = _loss_and_grad(model, x, y)
    return _project(x + eps * _direction(grad, norm), x, eps, norm)


class _Fooled:
    """Remembers, per image, the first iterate that was misclassified."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.y, self.x, self.hit = y, x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def update(self, x_adv: torch.Tensor, preds: torch.Tensor) -> None:
        new = (preds != self.y) & ~self.hit
        self.x[new], self.hit = x_adv[new], self.hit | new

    def result(self, fallback: torch.Tensor) -> torch.Tensor:
        return torch.where(self.hit.view(-1, 1, 1, 1), self.x, fallback)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
        generator: torch.Generator, steps: int = PGD_STEPS) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy from a random start (Madry et al. 2018)."""
    step = 2.5 * eps / steps
    x_adv = _random_start(x, eps, norm, generator)
    fooled = _Fooled(x, y)
    for _ in range(steps):
        _, grad, preds = _loss_and_grad(model, x_adv, y)
        fooled.update(x_adv, preds)
        x_adv = _project(x_adv + step * _direction(grad, norm), x, eps, norm)
    fooled.update(x_adv, predict_tensor(model, x_adv))
    return fooled.result(x_adv)


def apgd_checkpoints(n_iter: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j n_iter)`` where APGD may halve its step (Croce & Hein 2020)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # Rounded first, so that 0.41 * 100 (41.000000000000007 in floats) gives 41, not 42.
    return sorted({math.ceil(round(q * n_iter, 9)) for q in p if q <= 1} - {0})


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
         generator: torch.Generator, n_iter: int = APGD_ITERATIONS, rho: float = 0.75,
         alpha: float = 0.75) -> torch.Tensor:
    """APGD with the cross-entropy loss (Croce & Hein 2020, Algorithm 1), per image step sizes."""
    shape = (len(x), 1, 1, 1)
    checkpoints = set(apgd_checkpoints(n_iter))
    eta = torch.full(shape, 2.0 * eps, dtype=x.dtype, device=x.device)
    x_cur = _random_start(x, eps, norm, generator)
    loss, grad, preds = _loss_and_grad(model, x_cur, y)
    fooled = _Fooled(x, y)
    fooled.update(x_cur, preds)
    best_loss, x_best, grad_best = loss.clone(), x_cur.clone(), grad.clone()
    # First step without momentum: x1 = P(x0 + eta * direction(grad f(x0))).
    x_prev, x_cur = x_cur, _project(x_cur + eta * _direction(grad, norm), x, eps, norm)
    successes = torch.zeros(len(x), device=x.device)
    last_checkpoint, eta_last, best_last = 0, eta.clone(), best_loss.clone()
    for k in range(1, n_iter + 1):
        new_loss, new_grad, preds = _loss_and_grad(model, x_cur, y)
        fooled.update(x_cur, preds)
        successes += (new_loss > loss).to(successes.dtype)
        improved = new_loss > best_loss
        x_best[improved], grad_best[improved], best_loss[improved] = x_cur[improved], new_grad[improved], \
            new_loss[improved]
        loss, grad = new_loss, new_grad
        if k in checkpoints:
            too_few = successes < rho * (k - last_checkpoint)
            stalled = (eta.view(-1) == eta_last.view(-1)) & (best_loss == best_last)
            halve = too_few | stalled
            eta[halve] /= 2
            # Restart the halved images from their best point, without momentum.
            x_cur, x_prev = x_cur.clone(), x_prev.clone()
            x_cur[halve], x_prev[halve], grad[halve] = x_best[halve], x_best[halve], grad_best[halve]
            successes.zero_()
            last_checkpoint, eta_last, best_last = k, eta.clone(), best_loss.clone()
        if k == n_iter:
            break
        z = _project(x_cur + eta * _direction(grad, norm), x, eps, norm)
        x_next = _project(x_cur + alpha * (z - x_cur) + (1 - alpha) * (x_cur - x_prev), x, eps, norm)
        x_prev, x_cur = x_cur, x_next
    return fooled.result(x_best)


def _has_pyautoattack() -> bool:
    return importlib.util.find_spec("pyautoattack") is not None


def _pyautoattack() -> Any:
    try:
        import pyautoattack
    except ImportError:
        raise MinnetsError("the square and autoattack attacks need the pyautoattack package: "
                           "pip install 'minnets[robust]'") from None
    return pyautoattack


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
           generator: torch.Generator, n_queries: int = SQUARE_QUERIES) -> torch.Tensor:
    """The Square Attack of ``pyautoattack`` (margin loss, p_init 0.8, as AutoAttack runs it)."""
    _pyautoattack()
    from pyautoattack.square import SquareAttack

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    attack = SquareAttack(model, p_init=0.8, n_queries=n_queries, eps=eps, norm=norm, n_restarts=1, seed=seed,
                          verbose=False, device=x.device, resc_schedule=False)
    with torch.no_grad():
        return attack.perturb(x, y)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
               generator: torch.Generator) -> torch.Tensor:
    """Standard AutoAttack (``pyautoattack``), the attack RobustBench ranks models by."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    adversary = _pyautoattack().AutoAttack(model, norm=norm, eps=eps, version="standard", seed=seed,
                                           device=x.device)
    adversary.verbose = False
    adversarial, _labels = adversary.run_standard_evaluation(x, y, batch_size=len(x))  # (images, predictions)
    return adversarial


ATTACK_FUNCTIONS: dict[str, Attack] = {"apgd": apgd, "pgd": pgd, "fgsm": fgsm, "square": square,
                                       "autoattack": autoattack}


def predict_tensor(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def run_attack(attack: str, clean: Clean, eps: float, norm: str, seed: int, indices: np.ndarray | None = None,
               desc: str = "") -> torch.Tensor:
    """Adversarial images (CPU, [0, 1]) for the clean images (or those at ``indices``), in batches."""
    model = clean.model01()
    labels = torch.as_tensor(np.asarray(clean.labels), dtype=torch.long)
    indices = np.arange(len(clean.images)) if indices is None else indices
    generator = torch.Generator().manual_seed(seed)
    out = []
    batch = max(1, min(clean.batch_size, 250))
    for start in tqdm(range(0, len(indices), batch), desc=desc or attack, unit="batch", leave=False,
                      disable=None, file=sys.stderr):
        chosen = indices[start:start + batch]
        x = torch.from_numpy(np.ascontiguousarray(clean.images[chosen].transpose(0, 3, 1, 2))).to(
            clean.device, torch.float32).div_(255)
        out.append(ATTACK_FUNCTIONS[attack](model, x, labels[chosen].to(clean.device), eps, norm,
                                            generator).detach().cpu())
    height, width, channels = clean.images.shape[1:]
    return torch.cat(out) if out else torch.empty(0, channels, height, width)


# --- the suite -------------------------------------------------------------------------------------


def _level_seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode())


def _pyautoattack_version() -> str:
    try:
        return importlib.metadata.version("pyautoattack")
    except importlib.metadata.PackageNotFoundError:
        return "absent"


class AdversarialSuite(Suite):
    """One attack under one norm at each eps (plus eps 0, the clean images), with sanity checks."""

    name: ClassVar[str] = "adversarial"
    columns: ClassVar[tuple[str, ...]] = COLUMNS
    key: ClassVar[tuple[str, ...]] = ("attack", "norm", "eps")

    def __init__(self, norm: str = "Linf", eps: Sequence[str] | str | None = None, attack: str = "apgd",
                 seed: int = 0) -> None:
        if norm not in NORMS:
            raise MinnetsError(f"unknown norm {norm!r}; choose Linf or L2")
        if attack not in ATTACKS:
            raise MinnetsError(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")
        if attack in ("square", "autoattack"):
            _pyautoattack()
        eps = DEFAULT_EPS[norm] if eps is None else eps
        self.eps = parse_eps_list(eps if isinstance(eps, str) else ",".join(eps))
        if parse_eps(self.eps[0]) != 0:
            self.eps.insert(0, "0")
        self.norm, self.attack, self.seed = norm, attack, seed
        self._memo: dict[str, np.ndarray] = {}  # attack predictions of this process, by cache tag

    def levels(self) -> list[Row]:
        return [{"attack": self.attack, "norm": self.norm, "eps": eps} for eps in self.eps]

    def version(self) -> str:
        return _version(self.attack, self.seed)

    def perturb(self, level: Row, clean: Clean) -> Perturbed:
        eps = parse_eps(level["eps"])
        if eps == 0:
            return Perturbed(clean.images, {"checks": "pending"})
        images = run_attack(self.attack, clean, eps, self.norm, _level_seed(self.seed, self.attack, self.norm, eps),
                            desc=f"{self.attack} {self.norm} eps {level['eps']}")
        preds = predict01(clean.model01(), images, clean.batch_size)
        self._remember(clean, self._tag(clean, self.attack, level["eps"]), preds)
        return Perturbed(images, {"checks": "pending"})

    def _tag(self, clean: Clean, attack: str, eps: str, indices: np.ndarray | None = None) -> str:
        """Cache name of one attack's predictions: attack, norm, eps value, version, images attacked."""
        digest = hashlib.sha256(f"{attack}|{self.norm}|{parse_eps(eps)!r}|{_version(attack, self.seed)}|"
                                f"{len(clean.images)}".encode())
        if indices is not None:
            digest.update(np.asarray(indices, dtype=np.int64).tobytes())
        return f"{attack}-{self.norm}-{digest.hexdigest()[:16]}"

    def _remember(self, clean: Clean, tag: str, preds: np.ndarray) -> None:
        self._memo[tag] = preds
        _save_preds(clean, tag, preds)

    def _preds(self, clean: Clean, attack: str, eps: str, indices: np.ndarray | None = None) -> np.ndarray:
        """Predictions of ``attack`` at ``eps`` (cached per run); at ``indices`` only, if given."""
        tag = self._tag(clean, attack, eps, indices)
        n = len(clean.images) if indices is None else len(indices)
        preds = self._memo.get(tag)
        if preds is None:
            preds = _load_preds(clean, tag, n)
            if preds is not None:
                self._memo[tag] = preds
        if preds is None:
            value = parse_eps(eps)
            images = run_attack(attack, clean, value, self.norm, _level_seed(self.seed, attack, self.norm, value),
                                indices, desc=f"check: {attack} {self.norm} eps {eps}")
            preds = predict01(clean.model01(), images, clean.batch_size)
            self._remember(clean, tag, preds)
        return preds

    def finish(self, rows: list[Row], clean: Clean) -> list[Row]:
        """Run the sanity checks (their attacks cached per run) and fill every row's ``checks``."""
        labels = np.asarray(clean.labels)
        n = len(labels)
        tolerance = max(1, math.ceil(0.005 * n))
        failed_everywhere: list[str] = []
        zero = zero_gradient_percent(clean)
        if zero > ZERO_GRAD_LIMIT:
            failed_everywhere.append(f"zero-grad {zero:.1f}%")
        strong = "apgd" if self.attack in ("fgsm", "square", "autoattack") else self.attack
        large = LARGE_EPS[self.norm]
        large_err = 100 * np.count_nonzero(self._preds(clean, strong, large) != labels) / n
        if large_err < 99:
            failed_everywhere.append(f"large-eps {strong} {large} {large_err:.1f}%")
        out, previous = [], None
        for row in rows:
            failures = list(failed_everywhere)
            eps = row["eps"]
            if parse_eps(eps) > 0:
                wrong = self._preds(clean, self.attack, eps) != labels
                if previous is not None and row["test_err"] < previous - 100 * tolerance / n:
                    failures.append("monotone")
                iterative = {"fgsm": "pgd", "square": "apgd"}.get(self.attack, self.attack)
                iterative_wrong = wrong if iterative == self.attack else self._preds(clean, iterative, eps) != labels
                fgsm_wrong = self._preds(clean, "fgsm", eps) != labels
                if np.count_nonzero(fgsm_wrong) > np.count_nonzero(iterative_wrong) + tolerance:
                    failures.append(f"fgsm beats {iterative}")
                if self.attack != "autoattack":
                    failures += self._square_check(clean, eps, self.attack if self.attack != "square" else "apgd",
                                                   wrong if self.attack != "square" else
                                                   self._preds(clean, "apgd", eps) != labels, tolerance)
            previous = row["test_err"]
            passed = "passed" if self.attack == "autoattack" or _has_pyautoattack() else \
                "passed (square not run: pyautoattack not installed)"
            out.append({**row, "checks": "unreliable: " + "; ".join(failures) if failures else passed})
        return out

    def _square_check(self, clean: Clean, eps: str, gradient_attack: str, gradient_wrong: np.ndarray,
                      tolerance: int) -> list[str]:
        """Square on the images the gradient attack left correct: fooling more than ``tolerance`` fails."""
        if not _has_pyautoattack():
            return []  # no Square here: the row's checks say so
        survivors = np.flatnonzero(~gradient_wrong)
        if len(survivors) == 0:
            return []
        extra = np.count_nonzero(self._preds(clean, "square", eps, survivors) != np.asarray(clean.labels)[survivors])
        return [f"square fools {extra} more than {gradient_attack}"] if extra > tolerance else []

    def complete(self, rows: Sequence[Row]) -> bool:
        return super().complete(rows) and all(row.get("checks") != "pending" for row in rows
                                              if tuple(row[k] for k in self.key) in
                                              {tuple(level[k] for k in self.key) for level in self.levels()})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("adversarial suite")
        group.add_argument("--norm", choices=NORMS, default="Linf", help="threat model (default: %(default)s)")
        group.add_argument("--eps", metavar="E,E,...",
                           help=f"comma-separated radii, fractions allowed (default: {DEFAULT_EPS['Linf']} for "
                           f"Linf, {DEFAULT_EPS['L2']} for L2); eps 0 (clean) is always included")
        group.add_argument("--attack", choices=ATTACKS, default="apgd",
                           help="apgd: APGD-CE, 100 iterations (default); autoattack and square need pyautoattack")
        group.add_argument("--seed", type=int, default=0, help="seed of the random starts (default: 0)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdversarialSuite:
        return cls(args.norm, args.eps, args.attack, args.seed)


def _version(attack: str, seed: int) -> str:
    settings = {"apgd": f"apgd-ce n_iter={APGD_ITERATIONS}", "pgd": f"pgd steps={PGD_STEPS}", "fgsm": "fgsm",
                "square": f"square queries={SQUARE_QUERIES} pyautoattack {_pyautoattack_version()}",
                "autoattack": f"autoattack standard pyautoattack {_pyautoattack_version()}"}[attack]
    return f"{settings} seed={seed}; minnets attacks {ATTACKS_VERSION}; torch {torch.__version__}"


def zero_gradient_percent(clean: Clean) -> float:
    """Percent of clean images whose cross-entropy has an all-zero input gradient (masked gradients)."""
    model = clean.model01()
    labels = torch.as_tensor(np.asarray(clean.labels), dtype=torch.long)
    zero = 0
    for start in range(0, len(clean.images), clean.batch_size):
        x = clean.images01(start, start + clean.batch_size)
        _, grad, _ = _loss_and_grad(model, x, labels[start:start + clean.batch_size].to(clean.device))
        zero += int((grad.flatten(1).abs().amax(1) == 0).sum())
    return 100 * zero / len(clean.images)


def _cache_path(clean: Clean, tag: str) -> Path | None:
    return None if clean.cache_dir is None else Path(clean.cache_dir) / f"{tag}.npy"


def _save_preds(clean: Clean, tag: str, preds: np.ndarray) -> None:
    """Store one attack's predictions in the run's suite cache (kept if the evaluation is killed)."""
    path = _cache_path(clean, tag)
    if path is None:
        return

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(preds, dtype=np.int64), allow_pickle=False)

    atomic_write(path, write)


def _load_preds(clean: Clean, tag: str, n: int) -> np.ndarray | None:
    """Cached predictions of ``n`` images, or None when absent or damaged (then recomputed)."""
    path = _cache_path(clean, tag)
    if path is None or not path.is_file():
        return None
    try:
        preds = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return preds if preds.shape == (n,) else None
