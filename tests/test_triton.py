"""The Triton Min-unit kernels (``minnets.ops.triton_kernels``), without a GPU.

1. Numerics under Triton's interpreter (``TRITON_INTERPRET=1``: the kernels run with NumPy on
   CPU tensors), on tiny shapes, against a reference written here from the paper's Eq. 2:
   ``F.conv2d`` with ``groups=C``, instance norm by hand (biased variance, ``eps`` inside the
   square root), ReLU and ``torch.minimum``, differentiated by autograd in float64. float32
   storage to 1e-5; bfloat16 storage too (the interpreter keeps bf16 tensors as 16-bit words
   and computes in float32, as the GPU does). The interpreter converts float32 to bf16 by
   truncation, where the GPU rounds to nearest even, so bf16 outputs are checked to the
   truncation bound (2^-7 relative).
2. Ahead-of-time compilation of every kernel for sm_80 (A100) and sm_90 (H100, H200) with the
   ``ptxas`` that Triton's wheel brings, failing on any register spill.

The interpreter must be switched on before Triton is first imported (Triton's own library
functions, ``tl.sum`` among them, are defined as interpreted or compiled at that moment), and
in a test session something else may import it first (Inductor does). So the interpreted
kernels run in one subprocess, this file run as a script: the test writes the inputs, the
script the kernels' outputs, and the test compares them with the reference.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[gpu]')")

EPS = 1e-5

# name: (n, c, h, w, k, stride, block_pixels, dtype, tied). Odd widths, both strides, batch 1;
# several pixel tiles with a partial last one (block_pixels below h_out * w_out); two channel
# blocks (c = 37 > 32); a 5x5 filter; identical filters (a tie at every pixel); bf16 maps.
CASES = {
    "n2-c5-7x7-s1-tiles": (2, 5, 7, 7, 3, 1, 16, "float32", False),
    "n2-c3-6x7-s2-tiles": (2, 3, 6, 7, 3, 2, 4, "float32", False),
    "n1-c5-7x6-s2": (1, 5, 7, 6, 3, 2, None, "float32", False),
    "n1-c3-6x6-s1": (1, 3, 6, 6, 3, 1, None, "float32", False),
    "n1-c37-5x5-s2-channel-blocks": (1, 37, 5, 5, 3, 2, 4, "float32", False),
    "n1-c3-5x5-k5": (1, 3, 5, 5, 5, 1, None, "float32", False),
    "n2-c3-6x6-s1-ties": (2, 3, 6, 6, 3, 1, None, "float32", True),
    "n2-c5-7x7-s1-bf16": (2, 5, 7, 7, 3, 1, 16, "bfloat16", False),
    "n2-c5-7x7-s2-bf16": (2, 5, 7, 7, 3, 2, 16, "bfloat16", False),
}
OUTPUTS = ("out", "stats", "grad_x", "grad_v", "grad_g")


def reference(x: torch.Tensor, weight_v: torch.Tensor, weight_g: torch.Tensor, stride: int, padding: int
              ) -> torch.Tensor:
    """Eq. 2 composed from plain PyTorch operations."""
    def branch(weight: torch.Tensor) -> torch.Tensor:
        response = F.conv2d(x, weight, stride=stride, padding=padding, groups=x.shape[1])
        mean = response.mean(dim=(2, 3), keepdim=True)
        var = ((response - mean) ** 2).mean(dim=(2, 3), keepdim=True)
        return torch.relu((response - mean) / torch.sqrt(var + EPS))

    return torch.minimum(branch(weight_v), branch(weight_g))


def _inputs(name: str) -> dict[str, torch.Tensor]:
    """x (of the case's dtype), float32 filters and an output gradient (x's dtype), seeded by name."""
    n, c, h, w, k, stride, _, dtype, tied = CASES[name]
    generator = torch.Generator().manual_seed(sum(name.encode()))
    x = torch.randn(n, c, h, w, generator=generator) + 0.5  # a mean to remove, as after a ReLU
    weight_v = torch.randn(c, 1, k, k, generator=generator)
    weight_g = weight_v.clone() if tied else torch.randn(c, 1, k, k, generator=generator)
    size = ((h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1)
    grad_out = torch.randn(n, c, *size, generator=generator)
    dtype = getattr(torch, dtype)
    return {"x": x.to(dtype), "weight_v": weight_v, "weight_g": weight_g, "grad_out": grad_out.to(dtype)}


def _run_cases(inputs_path: Path, outputs_path: Path) -> None:
    """The script's side: every case through the interpreted kernels, outputs saved."""
    from minnets.ops import triton_kernels

    inputs = torch.load(inputs_path, weights_only=True)
    results = {}
    for name, (_, _, _, _, k, stride, block_pixels, _, _) in CASES.items():
        x, weight_v, weight_g, grad_out = (inputs[f"{name}/{key}"] for key in ("x", "weight_v", "weight_g", "grad_out"))
        out, stats = triton_kernels.min_unit_forward(x, weight_v, weight_g, stride, k // 2, EPS,
                                                     block_pixels=block_pixels)
        grads = triton_kernels.min_unit_backward(grad_out, x, weight_v, weight_g, stats, stride, k // 2, EPS,
                                                 block_pixels=block_pixels)
        results.update({f"{name}/{key}": value for key, value in zip(OUTPUTS, (out, stats, *grads))})
    torch.save(results, outputs_path)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Outputs of every case from the kernels run by Triton's interpreter (one subprocess)."""
    folder = tmp_path_factory.mktemp("triton")
    inputs_path, outputs_path = folder / "inputs.pt", folder / "outputs.pt"
    torch.save({f"{name}/{key}": value for name in CASES for key, value in _inputs(name).items()}, inputs_path)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, __file__, str(inputs_path), str(outputs_path)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(outputs_path, weights_only=True)


@pytest.mark.parametrize("name", list(CASES))
def test_interpreted_kernels_match_the_reference(interpreted, name):
    n, c, h, w, k, stride, _, dtype, tied = CASES[name]
    inputs = _inputs(name)
    got = {key: interpreted[f"{name}/{key}"] for key in OUTPUTS}
    leaves = [inputs[key].double().requires_grad_() for key in ("x", "weight_v", "weight_g")]
    out = reference(*leaves, stride, k // 2)
    grads = torch.autograd.grad(out, leaves, inputs["grad_out"].double())
    # bf16 maps: the bf16 outputs (out, grad_x) keep 8 significant bits, truncated (see the
    # module docstring); the float32 ones (stats, the filter gradients) are computed from the
    # same bf16 values as the reference.
    rounded = 2.0**-7 if dtype == "bfloat16" else 0.0

    assert got["out"].dtype == got["grad_x"].dtype == getattr(torch, dtype)
    assert got["grad_v"].dtype == got["grad_g"].dtype == got["stats"].dtype == torch.float32
    assert got["out"].is_contiguous(memory_format=torch.channels_last)
    assert got["grad_x"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got["out"].double(), out.detach(), rtol=rounded, atol=1e-5)
    for index, weight in enumerate(leaves[1:]):  # stats: mean and 1/sqrt(var + eps) of each response
        response = F.conv2d(leaves[0].detach(), weight.detach(), stride=stride, padding=k // 2, groups=c)
        var, mean = torch.var_mean(response, dim=(2, 3), correction=0)
        torch.testing.assert_close(got["stats"][:, 2 * index].double(), mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(got["stats"][:, 2 * index + 1].double(), (var + EPS).rsqrt(), rtol=1e-5, atol=0)
    for key, want in zip(("grad_x", "grad_v", "grad_g"), grads):
        assert got[key].shape == want.shape, key
        torch.testing.assert_close(got[key].double(), want, rtol=rounded if key == "grad_x" else 0.0, atol=1e-5,
                                   msg=lambda message, key=key: f"{key}: {message}")
    if tied:  # a tie at every pixel: each filter gets half of the gradient, as torch.minimum gives
        torch.testing.assert_close(got["grad_v"], got["grad_g"], rtol=0, atol=0)


# --- ahead-of-time compilation -------------------------------------------------------------

STORAGE_POINTERS = {"x_ptr", "out_ptr", "grad_ptr", "grad_x_ptr"}  # the maps: x's dtype; the rest float32
TARGETS = {"sm_80": 80, "sm_90": 90}
# (storage dtype, stride): each kernel's index arithmetic is widest at stride 2, its loads
# differ with the dtype; 64 channels (two blocks of 32) as in the ResNets' middle stage.
VARIANTS = [("fp32", 2), ("bf16", 1)]
KERNELS = ("_forward_kernel", "_backward_norm_kernel", "_weight_grad_kernel", "_input_grad_kernel")


@pytest.fixture(scope="module")
def compiled_module():
    from minnets.ops import triton_kernels

    if not isinstance(triton_kernels._forward_kernel, triton.runtime.JITFunction):
        pytest.skip("TRITON_INTERPRET is set in this process: the kernels are interpreted, not compilable")
    return triton_kernels


def _resource_usage(cubin: bytes, tmp_path: Path) -> dict[str, int]:
    """REG, STACK and LOCAL of the kernel in ``cubin``, from ``cuobjdump -res-usage``."""
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    report = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-res-usage", str(path)], capture_output=True,
                            text=True, check=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", report)
    assert match, report
    return dict(zip(("registers", "stack", "local"), map(int, match.groups())))


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("kernel_name", KERNELS)
def test_kernels_compile_for_ampere_and_hopper_without_spills(compiled_module, kernel_name, target, tmp_path):
    """Spilled registers live in local memory, on the stack frame: both must be 0 bytes."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(compiled_module, kernel_name)
    for dtype, stride in VARIANTS:
        constexprs = compiled_module.launch_config(64, 3, stride, 1)
        signature = {}
        for name in kernel.arg_names:
            if name in constexprs:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = f"*{dtype}" if name in STORAGE_POINTERS else "*fp32"
            else:
                signature[name] = "fp32" if name == "eps" else "i32"
        binary = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                target=GPUTarget("cuda", TARGETS[target], 32),
                                options=dict(compiled_module.COMPILE_OPTIONS))
        usage = _resource_usage(binary.asm["cubin"], tmp_path)
        print(f"{kernel_name} {target} {dtype} stride {stride}: {json.dumps(usage)}")
        assert usage["stack"] == 0 and usage["local"] == 0, f"{kernel_name} spills on {target} ({dtype}): {usage}"


if __name__ == "__main__":  # the interpreter's subprocess: python tests/test_triton.py INPUTS OUTPUTS
    _run_cases(Path(sys.argv[1]), Path(sys.argv[2]))
