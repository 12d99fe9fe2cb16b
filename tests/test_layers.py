"""The Min-unit, the Min-block and the shortcut (SPEC section 1), checked against a reference
computed here from the modules' own weights with plain tensor operations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minnets.layers import MinBlock, MinUnit, Shortcut



pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster

EPS = 1e-5


# --- the one place that knows how the modules store their weights ----------------------------

def depthwise_weights(unit: MinUnit) -> tuple[torch.Tensor, torch.Tensor]:
    """The v and g depthwise kernels, each ``(channels, 1, k, k)``."""
    return unit.filter_v.weight, unit.filter_g.weight


def block_parts(block: MinBlock) -> dict:
    """The Min-block's weights: 1x1 convs, their BatchNorms, the Min-unit and the shortcut."""
    return {
        "expand": block.expand[0].weight,
        "bn1": block.expand[1],
        "unit": block.min_unit,
        "reduce": block.reduce[0].weight,
        "bn2": block.reduce[1],
        "projection": block.shortcut.projection,
    }


# --- reference computations --------------------------------------------------------------------

def instance_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel spatial mean and biased variance."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS)


def batch_norm_eval(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    scale = bn.weight.view(shape) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


def avg_pool_2x2_ceil(x: torch.Tensor) -> torch.Tensor:
    """Mean over each 2x2 window; windows cut by the border average what they cover."""
    n, c, h, w = x.shape
    out = torch.empty(n, c, math.ceil(h / 2), math.ceil(w / 2), dtype=x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(2, 3))
    return out


def reference_min_unit(unit: MinUnit, x: torch.Tensor, stride: int) -> torch.Tensor:
    w_v, w_g = depthwise_weights(unit)
    channels = x.shape[1]
    v = F.conv2d(x, w_v, stride=stride, padding=1, groups=channels)
    g = F.conv2d(x, w_g, stride=stride, padding=1, groups=channels)
    return torch.minimum(F.relu(instance_norm(v)), F.relu(instance_norm(g)))


def reference_shortcut(x: torch.Tensor, d_out: int, stride: int, projection: nn.Conv2d | None) -> torch.Tensor:
    if stride == 2:
        x = avg_pool_2x2_ceil(x)
    if projection is not None:
        w = projection.weight[:, :, 0, 0]
        return torch.einsum("oc,nchw->nohw", w, x) + projection.bias.view(1, -1, 1, 1)
    zeros = torch.zeros(x.shape[0], d_out - x.shape[1], *x.shape[2:], dtype=x.dtype)
    return torch.cat([x, zeros], 1)


def reference_min_block(block: MinBlock, x: torch.Tensor, d_out: int, stride: int) -> torch.Tensor:
    """SPEC section 1 in eval mode, from the block's own weights."""
    p = block_parts(block)
    t1 = F.relu(batch_norm_eval(torch.einsum("oc,nchw->nohw", p["expand"][:, :, 0, 0], x), p["bn1"]))
    t2 = reference_min_unit(p["unit"], t1, stride)
    t3 = F.relu(batch_norm_eval(torch.einsum("oc,nchw->nohw", p["reduce"][:, :, 0, 0], t2), p["bn2"]))
    return reference_shortcut(x, d_out, stride, p["projection"]) + t3


def randomize_batch_norms(module: nn.Module) -> None:
    """Non-trivial affine parameters and running statistics, so eval-mode BN is really tested."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


def min_block_params(d_in: int, d_out: int, projection: bool) -> int:
    """SPEC section 1, q = 2, k = 3."""
    return 2 * d_in * d_out + 2 * d_out**2 + 42 * d_out + (d_in * d_out + d_out if projection else 0)


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --- Min-unit ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
def test_min_unit_is_min_of_rectified_instance_normed_depthwise_filters(stride: int) -> None:
    torch.manual_seed(0)
    unit = MinUnit(6, stride=stride)
    x = torch.randn(3, 6, 9, 9)
    expected = reference_min_unit(unit, x, stride)
    for mode in (unit.train, unit.eval):  # instance norm: per-sample statistics in both modes
        mode()
        out = unit(x)
        assert out.shape == (3, 6, math.ceil(9 / stride), math.ceil(9 / stride))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_min_unit_has_only_two_depthwise_kernels_and_no_running_statistics() -> None:
    unit = MinUnit(8)
    w_v, w_g = depthwise_weights(unit)
    assert w_v.shape == w_g.shape == (8, 1, 3, 3)
    assert trainable(unit) == 2 * 8 * 9
    assert list(unit.buffers()) == []


def test_min_unit_is_an_and_responding_only_where_both_filters_respond() -> None:
    torch.manual_seed(1)
    unit = MinUnit(4)
    with torch.no_grad():
        w_v, w_g = depthwise_weights(unit)
        w_g.copy_(-w_v)  # opposite filters: their rectified responses never overlap
    assert unit(torch.randn(2, 4, 8, 8)).abs().max() == 0


# --- shortcut ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [8, 7])
def test_stride_two_shortcut_is_ceil_mode_2x2_average_with_zero_channels_appended(size: int) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, size, size)
    out = Shortcut(3, 5, stride=2)(x)
    assert out.shape == (2, 5, math.ceil(size / 2), math.ceil(size / 2))
    torch.testing.assert_close(out[:, :3], avg_pool_2x2_ceil(x))
    assert torch.equal(out[:, 3:], torch.zeros_like(out[:, 3:]))


def test_odd_input_border_window_averages_the_pixels_it_covers() -> None:
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = Shortcut(1, 1, stride=2)(x)
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 2, 2] == x[0, 0, 4, 4]
    assert out[0, 0, 0, 2] == x[0, 0, 0:2, 4].mean()
    assert out[0, 0, 0, 0] == x[0, 0, 0:2, 0:2].mean()


def test_stride_one_shortcut_is_identity_or_zero_padding() -> None:
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(Shortcut(4, 4)(x), x)
    out = Shortcut(4, 7)(x)
    assert torch.equal(out[:, :4], x)
    assert torch.equal(out[:, 4:], torch.zeros(2, 3, 5, 5))
    assert trainable(Shortcut(4, 7, stride=2)) == 0


@pytest.mark.parametrize("stride", [1, 2])
def test_projection_shortcut_is_1x1_conv_with_bias_after_pooling(stride: int) -> None:
    torch.manual_seed(3)
    shortcut = Shortcut(6, 4, stride=stride, projection=True)
    assert trainable(shortcut) == 6 * 4 + 4  # weight and bias, no BN
    with torch.no_grad():
        shortcut.projection.bias.uniform_(1.0, 2.0)
    x = torch.randn(2, 6, 7, 7)
    expected = reference_shortcut(x, 4, stride, shortcut.projection)
    torch.testing.assert_close(shortcut(x), expected, atol=1e-5, rtol=1e-5)


def test_narrowing_without_projection_is_refused() -> None:
    with pytest.raises(ValueError):
        Shortcut(8, 4)


# --- Min-block ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "d_in, d_out, stride, projection",
    [
        (4, 4, 1, False),   # identity shortcut
        (4, 6, 2, False),   # pooling and zero channels (ResNet stacks 2 and 3)
        (8, 3, 1, True),    # projection (DenseNet Min-Net)
        (8, 3, 2, True),    # pooling then projection
        (4, 6, 1, True),    # projection asked for although widening
    ],
)
def test_min_block_matches_reference_in_eval_mode(d_in: int, d_out: int, stride: int, projection: bool) -> None:
    torch.manual_seed(4)
    block = MinBlock(d_in, d_out, stride=stride, projection=projection)
    randomize_batch_norms(block)
    if projection:
        with torch.no_grad():
            block_parts(block)["projection"].bias.uniform_(-1, 1)
    block.eval()
    x = torch.randn(3, d_in, 9, 9)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (3, d_out, math.ceil(9 / stride), math.ceil(9 / stride))
    torch.testing.assert_close(out, reference_min_block(block, x, d_out, stride), atol=1e-5, rtol=1e-4)


def test_min_block_hidden_width_is_expansion_times_d_out() -> None:
    for d_in, d_out, q in [(16, 32, 2), (32, 16, 2), (8, 8, 4)]:
        p = block_parts(MinBlock(d_in, d_out, expansion=q))
        assert p["expand"].shape == (q * d_out, d_in, 1, 1)
        assert tuple(w.shape for w in depthwise_weights(p["unit"])) == ((q * d_out, 1, 3, 3),) * 2
        assert p["reduce"].shape == (d_out, q * d_out, 1, 1)


def test_min_block_has_no_relu_after_the_sum() -> None:
    torch.manual_seed(5)
    block = MinBlock(4, 4).eval()
    x = -torch.rand(2, 4, 6, 6) - 5.0  # identity shortcut carries strongly negative values
    with torch.no_grad():
        assert block(x).max() < 0


@pytest.mark.parametrize(
    "d_in, d_out, expected", [(16, 16, 1_696), (16, 32, 4_416), (32, 64, 14_976)]
)
def test_min_block_parameter_checks_of_spec(d_in: int, d_out: int, expected: int) -> None:
    assert trainable(MinBlock(d_in, d_out)) == expected == min_block_params(d_in, d_out, False)


@pytest.mark.parametrize("d_in, d_out", [(3, 5), (5, 3), (7, 7), (12, 12), (40, 12), (12, 40)])
def test_min_block_parameter_formula_and_projection_default(d_in: int, d_out: int) -> None:
    block = MinBlock(d_in, d_out)  # projection=None: decided by d_in > d_out
    assert (block_parts(block)["projection"] is not None) == (d_in > d_out)
    assert trainable(block) == min_block_params(d_in, d_out, d_in > d_out)
    assert trainable(MinBlock(d_in, d_out, projection=True)) == min_block_params(d_in, d_out, True)


@pytest.mark.parametrize("c", [24, 30, 33, 66, 87, 108, 150])
def test_densenet_replacement_block_has_36c_plus_804_parameters(c: int) -> None:
    assert trainable(MinBlock(c, 12, stride=1, projection=True)) == 36 * c + 804


@pytest.mark.parametrize("stride", [1, 2])
def test_min_block_in_eval_mode_does_not_depend_on_the_batch(stride: int) -> None:
    torch.manual_seed(6)
    block = MinBlock(5, 7, stride=stride)
    block.train()
    with torch.no_grad():
        for _ in range(3):  # give the BatchNorms non-trivial running statistics
            block(torch.randn(8, 5, 9, 9) * 2 + 1)
    block.eval()
    batch = torch.randn(6, 5, 9, 9)
    with torch.no_grad():
        together = block(batch)
        for i in range(len(batch)):
            torch.testing.assert_close(block(batch[i:i + 1]), together[i:i + 1], atol=1e-5, rtol=0)


def test_min_block_backward_reaches_every_parameter() -> None:
    torch.manual_seed(7)
    block = MinBlock(6, 4, stride=2)
    block(torch.randn(2, 6, 8, 8)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
