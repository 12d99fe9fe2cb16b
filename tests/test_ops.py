"""AND operators (their formulas, names, models) and the registered Min-unit operators.

Each operator is checked against its formula written out here (SPEC's operator table, from
the paper and FP-nets); each device path of ``minnets::min_unit`` and of the fused Min-block
against the composite reference (outputs, input and filter gradients, BatchNorm running
statistics; strides 1 and 2, odd widths, batch 1).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import minnets
from minnets import kernels, ops
from minnets.errors import MinnetsError
from minnets.layers import MinBlock, MinUnit
from minnets.models import count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

FORMULAS = {  # operator spec -> the formula on two rectified responses, element by element
    "min": lambda a, b: min(a, b),
    "product": lambda a, b: a * b,
    "max": lambda a, b: max(a, b),
    "sum": lambda a, b: a + b,
    "smoothmin": lambda a, b: -0.1 * math.log(math.exp(-a / 0.1) + math.exp(-b / 0.1)),
    "smoothmin:tau=0.5": lambda a, b: -0.5 * math.log(math.exp(-a / 0.5) + math.exp(-b / 0.5)),
    "powermean": lambda a, b: ((a ** -4 + b ** -4) / 2) ** (-1 / 4),
    "powermean:p=3": lambda a, b: ((a ** 3 + b ** 3) / 2) ** (1 / 3),
    "powermean:p=0": lambda a, b: math.sqrt(a * b),
    "geomean": lambda a, b: math.sqrt(a * b + 1e-6),
    "single": lambda a, b: a,
}


def responses(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.rand(40, dtype=torch.float64) * 3 + 0.01, torch.rand(40, dtype=torch.float64) * 3 + 0.01


@pytest.mark.parametrize("spec", FORMULAS)
def test_every_operator_is_its_formula(spec):
    a, b = responses()
    expected = torch.tensor([FORMULAS[spec](x, y) for x, y in zip(a.tolist(), b.tolist())], dtype=torch.float64)
    torch.testing.assert_close(ops.get_operator(spec)(a, b), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", FORMULAS)
def test_every_operator_has_finite_gradients_where_responses_are_zero(spec):
    """The ReLUs make zeros common; no operator may turn them into NaN or infinite gradients."""
    a = torch.tensor([0.0, 0.0, 1.0, 2.0], requires_grad=True)
    b = torch.tensor([0.0, 1.0, 0.0, 2.0], requires_grad=True)
    out = ops.get_operator(spec)(a, b)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(a.grad).all()
    assert b.grad is None if spec == "single" else torch.isfinite(b.grad).all()


def test_smoothmin_lies_below_min_and_tends_to_it():
    a, b = responses(1)
    assert (ops.get_operator("smoothmin")(a, b) <= torch.minimum(a, b)).all()
    gap = (ops.get_operator("smoothmin:tau=0.001")(a, b) - torch.minimum(a, b)).abs().max()
    assert gap <= 0.001 * math.log(2) + 1e-12


def test_names_parameters_and_their_canonical_spelling():
    assert ops.operator_names()[0] == "min" and set(FORMULAS) >= {*ops.operator_names()}
    operator = ops.get_operator("powermean: p = -2 ")
    assert dict(operator.params) == {"p": -2.0, "eps": 1e-6}
    assert operator.spec == "powermean:p=-2,eps=1e-06"
    assert ops.get_operator(operator.spec) == operator
    assert ops.get_operator("min").spec == "min"


@pytest.mark.parametrize("spec, message", [
    ("minn", r"unknown AND operator 'minn'; did you mean min"),
    ("produkt", r"did you mean product"),
    ("zzz", r"known: min, product, max, sum"),
    ("smoothmin:temperature=1", r"'temperature=1' is not KEY=VALUE with a known key \(parameters: tau\)"),
    ("smoothmin:tau=0", r"tau must be > 0"),
    ("powermean:p=x", r"p must be a number"),
    ("product:p=1", r"parameters: none"),
])
def test_bad_names_are_one_line_errors(spec, message):
    with pytest.raises(MinnetsError, match=message) as caught:
        ops.get_operator(spec)
    assert "\n" not in str(caught.value)


def plain_responses(unit: MinUnit, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``ReLU(IN(v * x))`` and ``ReLU(IN(g * x))`` with torch's own instance norm, in float64."""
    def response(conv):
        return F.relu(F.instance_norm(F.conv2d(x.double(), conv.weight.double(), stride=conv.stride,
                                               padding=conv.padding, groups=conv.groups), eps=unit.eps))
    return response(unit.filter_v), None if unit.filter_g is None else response(unit.filter_g)


@pytest.mark.parametrize("spec", FORMULAS)
def test_min_unit_combines_its_responses_with_the_operator(spec):
    torch.manual_seed(3)
    unit = MinUnit(5, stride=2, unit=spec)
    x = torch.randn(2, 5, 7, 7)
    a, b = plain_responses(unit, x)
    b = a if b is None else b
    if spec.startswith("powermean"):  # documented: responses clamped at eps before the power
        a, b = a.clamp_min(1e-6), b.clamp_min(1e-6)
    expected = torch.tensor([FORMULAS[spec](p, q) for p, q in zip(a.flatten().tolist(), b.flatten().tolist())],
                            dtype=torch.float64).view_as(a)
    torch.testing.assert_close(unit(x).double(), expected, rtol=2e-5, atol=2e-5)


def test_single_drops_filter_g_and_its_parameters():
    """``single``: one filter per channel, 9 weights fewer per hidden map (f = 2 d_out)."""
    hidden = 2 * (16 + 32 + 64)  # min_resnet_n3's Min-blocks: d_out 16, 32, 64
    assert count_parameters(minnets.create_model("min_resnet_n3", unit="single")) == 217_082 - 9 * hidden == 215_066
    block = MinBlock(8, 16, unit="single")
    assert block.min_unit.filter_g is None and "min_unit.filter_g.weight" not in block.state_dict()


@pytest.mark.parametrize("spec", ["product", "smoothmin:tau=0.2", "geomean", "max"])
def test_other_operators_keep_the_published_layout_and_counts(spec):
    plain, other = minnets.create_model("min_densenet_l22"), minnets.create_model("min_densenet_l22", unit=spec)
    assert count_parameters(other) == count_parameters(plain) == 57_040
    assert {k: v.shape for k, v in other.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    other.load_state_dict(plain.state_dict())


def test_create_model_refuses_an_operator_for_a_baseline_and_unknown_names():
    with pytest.raises(MinnetsError, match="resnet_n3 has no Min-units"):
        minnets.create_model("resnet_n3", unit="product")
    with pytest.raises(MinnetsError, match="unknown AND operator"):
        minnets.create_model("min_resnet_n3", unit="mni")
    assert minnets.create_model("min_resnet_n3", unit="smoothmin:tau=0.3").stacks[0][0].min_unit.operator.spec == \
        "smoothmin:tau=0.3"


def unit_inputs(dtype: torch.dtype, stride: int = 2) -> tuple:
    torch.manual_seed(5)
    x = torch.relu(torch.randn(2, 5, 7, 7, dtype=dtype)).requires_grad_(True)
    v, g = (torch.randn(5, 1, 3, 3, dtype=dtype, requires_grad=True) for _ in range(2))
    return x, v, g, stride, 1, 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["native", "composite"])
def test_min_unit_operator_registration_passes_opcheck(dtype):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch agree."""
    torch.library.opcheck(torch.ops.minnets.min_unit.default, unit_inputs(dtype))


def test_fused_min_block_operator_registration_passes_opcheck():
    if not kernels.available():
        pytest.skip("no C compiler: the native kernel is not built")
    torch.manual_seed(6)
    block = MinBlock(6, 8, stride=2)
    x = torch.randn(2, 6, 7, 7, requires_grad=True)
    args = (x, block.expand[0].weight, block.expand[1].weight, block.expand[1].bias, 1e-5,
            block.min_unit.filter_v.weight, block.min_unit.filter_g.weight, 2, 1e-5, block.reduce[0].weight)
    torch.library.opcheck(torch.ops.minnets.min_block_branch.default, args)


@pytest.mark.parametrize("residual, stride", [("input", 1), ("pooled", 2), ("given", 2)])
def test_whole_min_block_operator_registration_passes_opcheck(residual, stride):
    """``minnets::min_block``: the block with its reduction's BatchNorm, ReLU and shortcut sum;
    the shortcut is x itself, the pooled x (odd size: cut windows), or a given tensor, which
    gets the output's gradient."""
    if not kernels.available():
        pytest.skip("no C compiler: the native kernel is not built")
    torch.manual_seed(7)
    block = MinBlock(6, 6 if residual == "input" else 8, stride=stride)
    x = torch.randn(2, 6, 7, 7, requires_grad=True)
    shortcut = block.shortcut(x).detach().requires_grad_(True) if residual == "given" else None
    norm = block.reduce[1]
    args = (x, shortcut, residual, block.expand[0].weight, block.expand[1].weight, block.expand[1].bias, 1e-5,
            block.min_unit.filter_v.weight, block.min_unit.filter_g.weight, stride, 1e-5, block.reduce[0].weight,
            norm.weight, norm.bias, 1e-5)
    torch.library.opcheck(torch.ops.minnets.min_block.default, args)


def reference_gradients(x, v, g, stride, upstream):
    """The composite unit through autograd, in float64: the tests' reference."""
    inputs = [t.detach().double().requires_grad_(True) for t in (x, v, g)]
    out = ops.composite_unit(*inputs, stride, 1, 1e-5)
    return [out.detach(), *torch.autograd.grad(out, inputs, upstream.double())]


@pytest.mark.parametrize("path", ["native", "composite"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batch, channels, size", [(1, 5, 7), (3, 9, 6), (2, 16, 5)])
def test_every_cpu_path_of_the_operator_matches_the_composite_reference(path, stride, batch, channels, size):
    """The operator's CPU implementations (native kernel; its composite fallback) with its
    registered backward, against plain PyTorch autograd: output, input and filter gradients."""
    if path == "native" and not kernels.available():
        pytest.skip("no C compiler: the native kernel is not built")
    torch.manual_seed(batch * 100 + channels + stride)
    x = torch.relu(torch.randn(batch, channels, size, size)).requires_grad_(True)
    v, g = (torch.randn(channels, 1, 3, 3, requires_grad=True) for _ in range(2))
    with kernels.use_native(path == "native"):
        out, _ = ops.min_unit(x, v, g, stride, 1, 1e-5)
        upstream = torch.randn_like(out)
        actual = [out.detach(), *torch.autograd.grad(out, (x, v, g), upstream)]
    for name, a, e in zip(["output", "x.grad", "v.grad", "g.grad"], actual, reference_gradients(x, v, g, stride,
                                                                                                 upstream)):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-5 * float(e.abs().max()), msg=name)


def test_use_triton_turns_the_cuda_kernels_off_inside_its_block_only():
    """The switch gpu_check.py uses to time the composite path against the Triton kernels."""
    unit_ops = importlib.import_module("minnets.ops.min_unit")  # the module (ops.min_unit is the operator)

    installed = unit_ops._HAS_TRITON
    assert unit_ops._triton_usable() == installed
    with ops.use_triton(False):
        assert not unit_ops._triton_usable()
        with ops.use_triton(True):
            assert unit_ops._triton_usable() == installed
        assert not unit_ops._triton_usable()
    assert unit_ops._triton_usable() == installed
