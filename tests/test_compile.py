"""The models compose with PyTorch's transforms: torch.compile, torch.func (vmap), autocast.

``fullgraph=True`` makes any graph break an error, so tracing a model proves that Dynamo sees
its whole forward pass, the registered Min-unit operators included. The vmap test stacks two
Min-Nets with ``torch.func.stack_module_state`` and compares with running them one by one.
Tiny batches keep this cheap; ``aot_eager`` traces what Inductor would get without compiling it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

import minnets
from minnets import kernels, ops
from minnets.layers import MinUnit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", minnets.list_models())
def test_every_model_traces_without_a_graph_break(name):
    torch.manual_seed(0)
    model = minnets.create_model(name)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        expected = copy.deepcopy(model)(x)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-4)


def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("name, backend, dtype", [
    ("min_resnet_n3", "aot_eager", torch.float32), ("min_densenet_l22", "aot_eager", torch.float32),
    ("min_resnet_n3", "aot_eager", torch.float64), ("min_resnet_n3", "inductor", torch.float64)])
def test_a_compiled_training_step_matches_eager(name, backend, dtype):
    """Forward and backward through the registered operators' fake and autograd rules; with
    Inductor the composite parts are generated code and the fused Min-blocks stay native.

    Float32 gradients are compared as one vector (relative distance): instance norm of nearly
    constant filter responses (a channel the expansion's ReLU mostly silences) multiplies
    rounding by up to ``1/sqrt(eps)``, so single elements differ by float32 rounding times
    that; float64 takes the composite path and must agree element by element.
    """
    torch.manual_seed(0)
    model = minnets.create_model(name).to(dtype)
    twin = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 32, 32, dtype=dtype), torch.tensor([0, 1, 2, 3])
    loss, grads = step(torch.compile(model, fullgraph=True, backend=backend), x, y)
    expected_loss, expected = step(twin, x, y)
    rel = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(loss, expected_loss, rtol=rel, atol=rel)
    for buffer, reference in zip(model.buffers(), twin.buffers()):
        torch.testing.assert_close(buffer, reference, rtol=rel, atol=rel)
    if dtype == torch.float64:
        for grad, reference in zip(grads, expected):
            torch.testing.assert_close(grad, reference, rtol=1e-8, atol=1e-10)
    else:
        distance = torch.cat([(g - r).flatten() for g, r in zip(grads, expected)]).norm()
        assert distance <= 1e-3 * torch.cat([r.flatten() for r in expected]).norm()


def test_vmap_over_stacked_min_nets_equals_separate_models():
    """Outputs, every gradient and the BatchNorm running statistics, in training mode. Float64,
    so that only a different function could differ (float32 rounding, amplified through the
    small batch, would blur the comparison)."""
    torch.manual_seed(0)
    models = [minnets.create_model("min_resnet_n3").double() for _ in range(2)]
    separate = copy.deepcopy(models)
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")
    xs = torch.randn(2, 3, 3, 32, 32, dtype=torch.float64)

    def run(p, b, x):
        return functional_call(skeleton, (p, b), (x,))

    out = vmap(run)(params, buffers, xs)
    out.square().sum().backward()
    expected = torch.stack([model(x) for model, x in zip(separate, xs)])
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for name, stacked in params.items():
        reference = torch.stack([dict(model.named_parameters())[name].grad for model in separate])
        torch.testing.assert_close(stacked.grad, reference, rtol=1e-9, atol=1e-9, msg=name)
    for name, stacked in buffers.items():
        reference = torch.stack([dict(model.named_buffers())[name] for model in separate])
        torch.testing.assert_close(stacked, reference, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("native", [True, False], ids=["native", "composite"])
@pytest.mark.parametrize("batched", ["models", "inputs"])
def test_vmap_rule_of_the_min_unit_operator(native, batched):
    """The operator's own vmap rule (models stacked as channels, or inputs as a bigger batch)."""
    if native and not kernels.available():
        pytest.skip("no C compiler: the native Min-unit kernel is not built")
    torch.manual_seed(1)
    units = [MinUnit(5, stride=2) for _ in range(2)]
    if batched == "inputs":
        units[1].load_state_dict(units[0].state_dict())
    xs = torch.relu(torch.randn(2, 3, 5, 7, 7))
    with kernels.use_native(native):
        expected = torch.stack([unit(x) for unit, x in zip(units, xs)])
        if batched == "models":
            weights = [torch.stack([u.filter_v.weight for u in units]), torch.stack([u.filter_g.weight for u in units])]
            out = vmap(lambda x, v, g: ops.min_unit(x, v, g, 2, 1, 1e-5)[0])(xs, *weights)
        else:
            unit = units[0]
            out = vmap(lambda x: ops.min_unit(x, unit.filter_v.weight, unit.filter_g.weight, 2, 1, 1e-5)[0])(xs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["min_resnet_n3", "min_densenet_l22"])
def test_bf16_autocast_trains_and_stays_near_float32(name):
    torch.manual_seed(0)
    model = minnets.create_model(name)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        reference = copy.deepcopy(model)(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = F.cross_entropy(out.float(), y)
    loss.backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(out.float(), reference, rtol=0.1, atol=0.1 * float(reference.abs().max()))
