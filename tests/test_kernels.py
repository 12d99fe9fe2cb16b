"""The native Min-unit kernel: its build and cache, its fallback, and its mathematics.

The mathematics is checked against a float64 evaluation of the plain composition (two
depthwise convs, ``F.instance_norm``, ReLU, ``torch.minimum``) over the geometries the kernel
handles in its own code paths: filter sizes 1 to 7, strides 1 to 3, channel counts that do and
do not fill its vector chunks (16 floats with AVX-512, else 8: both builds are tested), maps
down to one pixel, a single sample.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from minnets import kernels
from minnets.layers import MinUnit

needs_compiler = pytest.mark.skipif(not kernels.available(), reason="no C compiler: native kernel not built")


def plain_min_unit(x: torch.Tensor, unit: MinUnit) -> torch.Tensor:
    """Written out, as ``F.instance_norm`` refuses the 1x1 maps the kernel must also handle."""
    def branch(conv: torch.nn.Conv2d) -> torch.Tensor:
        out = F.conv2d(x, conv.weight.double(), stride=conv.stride, padding=conv.padding, groups=conv.groups)
        var, mean = torch.var_mean(out, dim=(2, 3), correction=0, keepdim=True)
        return F.relu((out - mean) / torch.sqrt(var + unit.eps))
    return torch.minimum(branch(unit.filter_v), branch(unit.filter_g))


def gradients(unit: MinUnit, x: torch.Tensor, upstream: torch.Tensor, plain: bool = False, **kwargs
              ) -> list[torch.Tensor]:
    unit.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = plain_min_unit(x.double(), unit) if plain else unit(x, **kwargs)
    out.backward(upstream.to(out.dtype))
    return [out.detach(), x.grad, unit.filter_v.weight.grad, unit.filter_g.weight.grad]


def assert_matches_float64(actual: list[torch.Tensor], expected: list[torch.Tensor], rel: float = 1e-5) -> None:
    for name, a, e in zip(["output", "input.grad", "filter_v.grad", "filter_g.grad"], actual, expected):
        scale = float(e.abs().max())
        torch.testing.assert_close(a.double(), e.double(), rtol=rel, atol=rel * scale, msg=lambda m: f"{name}: {m}")


@needs_compiler
@pytest.mark.parametrize("kernel_size", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("channels, size, batch", [(3, 7, 2), (8, 6, 3), (13, 5, 1), (16, 3, 2), (16, 1, 2)])
def test_native_min_unit_matches_the_plain_composition(kernel_size, stride, channels, size, batch):
    torch.manual_seed(kernel_size * 100 + stride * 10 + channels)
    unit = MinUnit(channels, stride=stride, kernel_size=kernel_size)
    x = torch.relu(torch.randn(batch, channels, size, size))
    upstream = torch.randn_like(plain_min_unit(x.double(), unit))
    assert_matches_float64(gradients(unit, x, upstream), gradients(unit, x, upstream, plain=True))


@needs_compiler
def test_native_one_by_one_filters():
    """With 1x1 filters, instance norm cancels the filter's scale, so the filter gradients are
    exactly 0 and only rounding noise is left to compare; outputs and input gradients match."""
    torch.manual_seed(0)
    unit = MinUnit(13, stride=2, kernel_size=1)
    x = torch.relu(torch.randn(3, 13, 7, 7))
    upstream = torch.randn(3, 13, 4, 4)
    native, plain = gradients(unit, x, upstream), gradients(unit, x, upstream, plain=True)
    assert_matches_float64(native[:2], plain[:2])


@needs_compiler
def test_input_is_relu_zeroes_the_input_gradient_where_the_input_is_zero():
    """The promise the fused Min-block relies on to skip its expansion ReLU's backward pass."""
    torch.manual_seed(0)
    unit = MinUnit(12, stride=2)
    x = torch.relu(torch.randn(3, 12, 9, 9)).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(3, 12, 5, 5)
    plain = gradients(unit, x, upstream, plain=True)
    weights = unit.filter_v.weight.detach(), unit.filter_g.weight.detach()
    out, stats = kernels.min_unit_forward(x, *weights, 2, unit.eps)
    grad_x, grad_v, grad_g, _ = kernels.min_unit_backward(upstream, x, *weights, stats, 2, True)
    assert_matches_float64([out, grad_x, grad_v, grad_g], [plain[0], plain[1] * (x > 0), *plain[2:]])


@needs_compiler
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("channels, size", [(12, 7), (16, 4), (33, 5)])
def test_reduction_norm_passes_match_their_formulas(channels_last, channels, size):
    """The passes of the reduction's BatchNorm: ``shortcut + ReLU(gain * r + shift)`` and the
    sums of ``d`` and ``d * (r - mean) / sigma`` (``d``: the gradient where the ReLU is on),
    against the formulas in float64, for whole and partial vectors of channels and pixels."""
    torch.manual_seed(0)
    r, grad, shortcut = (torch.randn(3, channels, size, size) for _ in range(3))
    norm = torch.cat([torch.rand(1, channels) + 0.5, torch.randn(3, channels), torch.zeros(2, channels)])
    norm[3].abs_()
    if channels_last:
        r, grad, shortcut = (t.contiguous(memory_format=torch.channels_last) for t in (r, grad, shortcut))
    gain, shift, mean, inv_sigma = (row.double().view(1, -1, 1, 1) for row in norm[:4])
    y = gain * r.double() + shift
    d = grad.double() * (y > 0)
    expected_sums = torch.stack([d.sum(dim=(0, 2, 3)), (d * (r.double() - mean) * inv_sigma).sum(dim=(0, 2, 3))])
    out = kernels.reduce_norm_forward(r, norm, shortcut)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out.double(), shortcut.double() + y.clamp(min=0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kernels.reduce_norm_forward(r, norm, None).double(), y.clamp(min=0),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kernels.reduce_norm_sums(grad, r, norm), expected_sums, rtol=1e-6, atol=1e-5)


@needs_compiler
def test_results_do_not_depend_on_the_thread_count():
    """Samples are independent and filter gradients are summed in a fixed order: maps are
    bit-identical for any thread count, filter gradients equal to float rounding, and a repeat
    with the same threads is bit-identical."""
    torch.manual_seed(0)
    unit = MinUnit(16, stride=2)
    x, upstream = torch.relu(torch.randn(5, 16, 10, 10)), torch.randn(5, 16, 5, 5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gradients(unit, x, upstream)
        torch.set_num_threads(2)
        two, again = gradients(unit, x, upstream), gradients(unit, x, upstream)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    torch.testing.assert_close(one[2], two[2], rtol=1e-6, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(two, again))


def test_filters_wider_than_the_kernel_takes_use_the_pytorch_path():
    torch.manual_seed(0)
    unit = MinUnit(4, kernel_size=9)
    x = torch.relu(torch.randn(2, 4, 10, 10))
    assert not kernels.usable(x.contiguous(memory_format=torch.channels_last), unit.filter_v.weight)
    upstream = torch.randn(2, 4, 10, 10)
    assert_matches_float64(gradients(unit, x, upstream), gradients(unit, x, upstream, plain=True))


@needs_compiler
def test_build_is_cached_per_source_flags_and_cpu(tmp_path):
    first = kernels.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert first.parent == tmp_path and first.name.startswith("min_unit-") and first.suffix == ".so"
    assert kernels.build(tmp_path) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [path.name for path in tmp_path.iterdir()] == [first.name]  # no partial files left


def test_a_missing_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match=r"cannot compile min_unit\.c with .*no-such-cc"):
        kernels.build(tmp_path / "cache")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


USE_A_MIN_UNIT = """
    import torch
    from minnets import kernels
    from minnets.layers import MinUnit
    unit = MinUnit(4)
    unit(torch.randn(2, 4, 5, 5)).sum().backward()
    print(kernels.available(), unit.filter_v.weight.grad.abs().sum() > 0)
"""


def test_without_a_compiler_one_warning_and_the_pytorch_path(tmp_path):
    result = run_python(USE_A_MIN_UNIT, CC=str(tmp_path / "no-such-cc"), MINNETS_CACHE=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "tensor(True)"]
    assert result.stderr.count("native Min-unit kernel unavailable") == 1
    assert "no-such-cc" in result.stderr and "C compiler" in result.stderr


def test_minnets_native_0_turns_the_kernel_off_quietly(tmp_path):
    result = run_python(USE_A_MIN_UNIT, MINNETS_NATIVE="0", MINNETS_CACHE=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "tensor(True)"]
    assert "unavailable" not in result.stderr and not any(tmp_path.iterdir())


FUSED_AGAINST_FLOAT64 = """
    import copy
    import torch
    from minnets import MinBlock, kernels
    assert kernels.available()
    for d_in, d_out, stride, size in ((5, 12, 1, 7), (16, 32, 2, 8), (30, 12, 1, 6)):
        torch.manual_seed(0)
        block = MinBlock(d_in, d_out, stride).train()
        reference = copy.deepcopy(block).double()  # float64 runs the modules
        x = torch.randn(3, d_in, size, size)
        results = []
        for module, dtype, native in ((block, torch.float32, True), (block, torch.float32, False),
                                      (reference, torch.float64, False)):
            with kernels.use_native(native):
                module.zero_grad()
                xg = x.to(dtype).detach().requires_grad_(True)
                out = module(xg)
                out.backward(torch.cos(torch.arange(out.numel(), dtype=dtype)).view_as(out))
                results.append([out.detach(), xg.grad, *(p.grad for p in module.parameters())])
        for fused, modules, exact in zip(*results):
            scale = float(exact.abs().max())
            print(float((fused.double() - exact).abs().max()) / scale, float((modules.double() - exact).abs().max()) / scale)
"""


@needs_compiler
@pytest.mark.skipif(sys.platform != "linux" or "avx512f" not in open("/proc/cpuinfo").read(),
                    reason="the default build here is the 8-wide one, tested above")
def test_the_8_wide_build_matches_float64(tmp_path):
    """CPUs without AVX-512 get the 8-float build: built here with -mno-avx512f, a fused block's
    output and gradients are compared with the modules' in float64."""
    result = run_python(FUSED_AGAINST_FLOAT64, CC=f"{os.environ.get('CC', 'cc')} -mno-avx512f",
                        MINNETS_CACHE=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "-mno-avx512f" not in result.stderr  # built, not fallen back to the PyTorch path
    errors = [tuple(map(float, line.split())) for line in result.stdout.splitlines()]
    assert len(errors) >= 30
    # As close to float64 as float32 modules get (BatchNorm's gamma before an instance norm has
    # a gradient near zero, known to a few digits only, by either path).
    assert all(fused <= max(1e-5, 3 * modules) for fused, modules in errors), errors
