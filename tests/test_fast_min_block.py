"""The fast Min-unit and Min-block against a plain reference of the same mathematics.

Every test runs twice: with the native Min-unit kernel (:mod:`minnets.kernels`) and with
the PyTorch fallback. The reference below is the straightforward composition of PyTorch
modules the project started from (two depthwise convs, ``F.instance_norm``, ``F.relu``, ``torch.minimum``, a zero-padded
shortcut). It has the same parameters under the same state_dict keys, so the fast modules
load its weights and must give the same outputs, input gradients, parameter gradients and
BatchNorm running statistics, in every configuration the models use and a few more.

"The same" means: to 1e-5 relative to each tensor's scale in float32 (``|a - b| <= 1e-5 *
(max|b| + |b|)``; the fast path sums in another order, so elements that nearly cancel differ
by float32 rounding of the big terms), and to 1e-12 in float64, where rounding is out of the
way and only a different function could fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minnets import kernels, ops
from minnets.layers import MinBlock, MinUnit

REL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster


@pytest.fixture(autouse=True, params=["native", "pytorch"])
def min_unit_path(request):
    """Every test runs on both CPU paths of the Min-unit: the native kernel and the PyTorch ops."""
    if request.param == "native" and not kernels.available():
        pytest.skip("no C compiler: the native Min-unit kernel is not built")
    with kernels.use_native(request.param == "native"):
        yield request.param


class PlainMinUnit(nn.Module):
    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        conv = dict(kernel_size=3, stride=stride, padding=1, groups=channels, bias=False)
        self.filter_v = nn.Conv2d(channels, channels, **conv)
        self.filter_g = nn.Conv2d(channels, channels, **conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = F.relu(F.instance_norm(self.filter_v(x), eps=1e-5))
        g = F.relu(F.instance_norm(self.filter_g(x), eps=1e-5))
        return torch.minimum(v, g)


class PlainShortcut(nn.Module):
    def __init__(self, d_in: int, d_out: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.d_in, self.d_out, self.stride = d_in, d_out, stride
        self.projection = nn.Conv2d(d_in, d_out, 1, bias=True) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.avg_pool2d(x, 2, stride=2, ceil_mode=True)
        if self.projection is not None:
            return self.projection(x)
        return F.pad(x, (0, 0, 0, 0, 0, self.d_out - self.d_in))


class PlainMinBlock(nn.Module):
    def __init__(self, d_in: int, d_out: int, stride: int = 1, projection: bool | None = None) -> None:
        super().__init__()
        projection = d_in > d_out if projection is None else projection
        hidden = 2 * d_out
        self.expand = nn.Sequential(nn.Conv2d(d_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        self.min_unit = PlainMinUnit(hidden, stride)
        self.reduce = nn.Sequential(nn.Conv2d(hidden, d_out, 1, bias=False), nn.BatchNorm2d(d_out), nn.ReLU())
        self.shortcut = PlainShortcut(d_in, d_out, stride, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.reduce(self.min_unit(self.expand(x)))


def twins(plain: nn.Module, fast: nn.Module, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The fast module with the plain one's weights; BN affine parameters made non-trivial."""
    torch.manual_seed(seed)
    for module in plain.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def run(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output, input gradient, every parameter's gradient and every buffer after one pass."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    out.backward(upstream)
    results = {"output": out.detach(), "input.grad": x.grad}
    results |= {f"{name}.grad": p.grad for name, p in module.named_parameters()}
    results |= {name: b.detach().clone() for name, b in module.named_buffers()}
    return results


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL, name: str = "") -> None:
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max()) if expected.is_floating_point() and expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale, msg=lambda m: f"{name}: {m}")


def assert_same(plain: nn.Module, fast: nn.Module, x: torch.Tensor, seed: int = 1, rel: float = REL) -> None:
    torch.manual_seed(seed)
    upstream = torch.randn_like(plain(x.detach()))
    plain.load_state_dict(fast.state_dict())  # undo the running-statistics update of that call
    expected, actual = run(plain, x, upstream), run(fast, x, upstream)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert_close(actual[key], expected[key], rel, key)


BLOCKS = [  # d_in, d_out, stride, projection, size: the paper's blocks, scaled down, and odd cases
    (8, 8, 1, None, 8),  # ResNet stack 1: identity shortcut
    (8, 16, 2, None, 8),  # ResNet stacks 2 and 3: pooled, zero channels appended
    (30, 12, 1, True, 8),  # DenseNet: projection
    (6, 4, 2, True, 7),  # projection after pooling an odd size (ceil mode)
    (16, 8, 1, None, 5),  # narrower output: projection chosen automatically
    (5, 5, 2, False, 9),  # odd size, identity after pooling
]


@pytest.mark.parametrize("d_in, d_out, stride, projection, size", BLOCKS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_min_block_matches_plain(d_in, d_out, stride, projection, size, channels_last, train):
    torch.manual_seed(0)
    plain = PlainMinBlock(d_in, d_out, stride, projection)
    plain, fast = twins(plain, MinBlock(d_in, d_out, stride, projection=projection))
    plain.train(train), fast.train(train)
    x = torch.randn(3, d_in, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert_same(plain, fast, x)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_min_unit_matches_plain(stride, channels_last):
    torch.manual_seed(0)
    plain, fast = twins(PlainMinUnit(6, stride), MinUnit(6, stride))
    x = torch.relu(torch.randn(4, 6, 9, 9))  # Min-units see rectified maps, zeros included
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert_same(plain, fast, x)


def test_min_unit_matches_plain_in_float64():
    """In double precision the two agree to rounding: the same function, not an approximation."""
    torch.manual_seed(0)
    plain, fast = twins(PlainMinUnit(5, 2).double(), MinUnit(5, 2).double())
    assert_same(plain, fast, torch.randn(2, 5, 11, 11, dtype=torch.float64), rel=1e-12)


@pytest.mark.parametrize("d_in, d_out, stride, projection, size", [BLOCKS[1], BLOCKS[2]])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_min_block_matches_plain_in_float64(d_in, d_out, stride, projection, size, train):
    """The BatchNorm folded into the expanding conv (statistics from the input's covariance) and
    the fused Min-unit are the plain block's function, not an approximation of it."""
    torch.manual_seed(0)
    plain = PlainMinBlock(d_in, d_out, stride, projection).double()
    plain, fast = twins(plain, MinBlock(d_in, d_out, stride, projection=projection).double())
    plain.train(train), fast.train(train)
    assert_same(plain, fast, torch.randn(3, d_in, size, size, dtype=torch.float64), rel=1e-12)


@pytest.mark.parametrize("momentum", [0.3, None])
def test_running_statistics_follow_batchnorm_over_steps(momentum):
    """Three training steps, then evaluation: running averages and counters as BatchNorm2d keeps them."""
    torch.manual_seed(0)
    plain, fast = twins(PlainMinBlock(6, 8, 2), MinBlock(6, 8, 2))
    for module in (*plain.modules(), *fast.modules()):
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = momentum
    for step in range(3):
        x = torch.randn(4, 6, 6, 6) * (step + 1) + step
        plain(x), fast(x)
    for (key, expected), actual in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert_close(actual, expected, name=key)
    plain.eval(), fast.eval()
    x = torch.randn(2, 6, 6, 6)
    assert_close(fast(x), plain(x))


def test_batchnorm_without_tracking_keeps_its_buffers():
    """``track_running_stats = False`` on existing buffers: batch statistics, buffers untouched."""
    torch.manual_seed(0)
    plain, fast = twins(PlainMinBlock(6, 8, 2), MinBlock(6, 8, 2))
    for module in (*plain.modules(), *fast.modules()):
        if isinstance(module, nn.BatchNorm2d):
            module.track_running_stats = False
    before = {key: value.clone() for key, value in fast.state_dict().items()}
    assert_same(plain, fast, torch.randn(3, 6, 6, 6))
    for key, value in fast.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_replaced_expansion_still_runs_as_written():
    """Only the exact (1x1 conv, BatchNorm2d, ReLU) triple is folded; anything else runs as is."""
    torch.manual_seed(0)
    block = MinBlock(4, 4)
    block.expand[1] = nn.GroupNorm(2, 8)
    x = torch.randn(2, 4, 5, 5)
    expected = block.shortcut(x) + block.reduce(block.min_unit(block.expand(x)))
    assert_close(block(x), expected)


@pytest.mark.parametrize("frozen", ["expand", "reduce"])
def test_a_frozen_batchnorm_in_a_training_block_matches_plain(frozen):
    """One BatchNorm in evaluation (running statistics) while the block trains: with the
    reduction's frozen, the fused operator stops before it (``min_block_branch``); with the
    expansion's, the modules run."""
    torch.manual_seed(0)
    plain, fast = twins(PlainMinBlock(8, 8, 1), MinBlock(8, 8, 1))
    for block in (plain, fast):
        getattr(block, frozen)[1].eval()
    assert_same(plain, fast, torch.randn(3, 8, 6, 6))


def test_reduction_outputs_far_from_zero_mean_keep_their_precision():
    """The reduction's BatchNorm takes its statistics from per-sample shifted sums: an output
    whose mean is several standard deviations from 0 (all-positive weights on non-negative unit
    outputs) must still give BatchNorm's variance and gradients."""
    torch.manual_seed(0)
    plain, fast = twins(PlainMinBlock(8, 32, 1), MinBlock(8, 32, 1))
    with torch.no_grad():
        plain.reduce[0].weight.uniform_(1.0, 1.1)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(4, 8, 8, 8)
    with torch.no_grad():
        reduced = fast.reduce[0](fast.min_unit(fast.expand(x)))
    assert float(reduced.mean()) > 3 * float(reduced.std())
    assert_same(plain, fast, x)


def test_ties_split_the_gradient_like_torch_minimum():
    """Equal filters give equal branches everywhere: each filter must get half the gradient."""
    torch.manual_seed(0)
    plain, fast = twins(PlainMinUnit(4), MinUnit(4))
    with torch.no_grad():
        plain.filter_g.weight.copy_(plain.filter_v.weight)
    fast.load_state_dict(plain.state_dict())
    assert_same(plain, fast, torch.randn(2, 4, 6, 6))
    fast.zero_grad()
    fast(torch.randn(2, 4, 6, 6)).sum().backward()
    assert_close(fast.filter_v.weight.grad, fast.filter_g.weight.grad)


def test_constant_maps_give_zero_output_and_finite_gradients():
    """A zero input makes both branches constant (variance 0): output 0, no NaN anywhere."""
    unit = MinUnit(3)
    x = torch.zeros(2, 3, 5, 5, requires_grad=True)
    out = unit(x)
    out.sum().backward()
    assert torch.count_nonzero(out) == 0
    assert torch.isfinite(x.grad).all() and torch.isfinite(unit.filter_v.weight.grad).all()


def test_state_dict_layout_is_the_published_one():
    """Checkpoints of the plain block load into the fast one and back (documented keys, shapes)."""
    plain, fast = PlainMinBlock(30, 12, 1, True), MinBlock(30, 12, 1, projection=True)
    expected = {key: tuple(value.shape) for key, value in plain.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in fast.state_dict().items()} == expected
    assert tuple(fast.min_unit.filter_v.weight.shape) == (24, 1, 3, 3)
    assert tuple(fast.min_unit.filter_g.weight.shape) == (24, 1, 3, 3)
    for key in expected:  # every module path is documented
        assert key.rsplit(".", 1)[0] in MinBlock.__doc__, key


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_block_keeps_the_input_memory_format(channels_last):
    block = MinBlock(4, 8, 2)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=memory_format)
    assert block(x).is_contiguous(memory_format=memory_format)


def test_inference_mode_gives_the_eval_output():
    torch.manual_seed(0)
    plain, fast = twins(PlainMinBlock(8, 16, 2), MinBlock(8, 16, 2))
    plain.eval(), fast.eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.inference_mode():
        assert_close(fast(x), plain(x))


@pytest.mark.parametrize("d_in, d_out, stride, projection, size", BLOCKS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_inference_with_trained_statistics_matches_plain(d_in, d_out, stride, projection, size, channels_last):
    """Without gradients both BatchNorms fold into the fused operator: after a few training
    steps (running statistics away from 0 and 1) it must give the modules' evaluation output."""
    torch.manual_seed(0)
    plain, fast = twins(PlainMinBlock(d_in, d_out, stride, projection), MinBlock(d_in, d_out, stride, projection=projection))
    for _ in range(3):
        fast(torch.randn(4, d_in, size, size) * 2 + 1)
    plain.load_state_dict(fast.state_dict())
    assert float(fast.reduce[1].running_var.sub(1).abs().max()) > 0.01  # the statistics moved
    plain.eval(), fast.eval()
    x = torch.randn(3, d_in, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close(fast(x), plain(x), name="output")


def test_inputs_far_from_zero_mean_keep_their_precision():
    """The fused operator takes the input's moments uncentred (no centred copy of x): a mean
    several standard deviations away from 0 must not cost the BatchNorm its precision."""
    torch.manual_seed(0)
    plain, fast = twins(PlainMinBlock(8, 16, 2), MinBlock(8, 16, 2))
    assert_same(plain, fast, torch.randn(4, 8, 8, 8) + 10.0)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_batch_of_one_matches_plain(stride):
    torch.manual_seed(0)
    plain, fast = twins(PlainMinBlock(5, 6, stride), MinBlock(5, 6, stride))
    assert_same(plain, fast, torch.randn(1, 5, 7, 7))


def test_the_native_path_is_the_fused_operator(min_unit_path):
    """Guards the comparisons above: with the kernel on, a float32 training block runs fused."""
    block, x = MinBlock(4, 8, 2), torch.randn(2, 4, 6, 6)
    assert (ops.fused_min_block(block, x) is not None) == (min_unit_path == "native")
    block.eval()
    with torch.no_grad():
        assert (ops.fused_min_block(block, x) is not None) == (min_unit_path == "native")
    assert ops.fused_min_block(block, x) is None  # evaluation with gradients runs the modules


@pytest.mark.parametrize("unit", ["product", "smoothmin:tau=0.3"])
def test_other_operators_run_the_modules_and_match_their_composition(unit):
    torch.manual_seed(0)
    block = MinBlock(4, 8, 2, unit=unit)
    x = torch.randn(2, 4, 6, 6)
    assert ops.fused_min_block(block, x) is None
    v = F.conv2d(block.expand(x), block.min_unit.filter_v.weight, stride=2, padding=1, groups=16)
    g = F.conv2d(block.expand(x), block.min_unit.filter_g.weight, stride=2, padding=1, groups=16)
    expected = block.shortcut(x) + block.reduce(
        ops.get_operator(unit)(F.relu(F.instance_norm(v)), F.relu(F.instance_norm(g))))
    assert_close(block(x), expected)
