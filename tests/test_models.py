"""The paper's 14 models (SPEC sections 2-5): registry, structure, parameter counts, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minnets.errors import MinnetsError
from minnets.layers import MinBlock
from minnets.models import (
    PyramidBasicBlock, cifar_resnet, count_parameters, create_model, densenet_bc, list_models, model_info,
    replace_first_blocks,
)



pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster

# SPEC section 4, copied by hand: trainable parameters with 10 classes.
SPEC_PARAMS = {
    "resnet_n3": 270_298, "resnet_n5": 465_178, "resnet_n7": 660_058, "resnet_n9": 854_938,
    "min_resnet_n3": 217_082, "min_resnet_n5": 411_962, "min_resnet_n7": 606_842, "min_resnet_n9": 801_722,
    "densenet_l22": 71_686, "densenet_l58": 314_470, "densenet_l100": 769_162,
    "min_densenet_l22": 57_040, "min_densenet_l58": 298_564, "min_densenet_l100": 751_786,
}
NAMES = sorted(SPEC_PARAMS)
DENSE_INPUT_WIDTHS = {22: (24, 30, 33), 58: (24, 66, 87), 100: (24, 108, 150)}  # SPEC section 3
C_FINAL = {22: 69, 58: 195, 100: 342}


def min_block_parts(block: MinBlock) -> dict:
    """The one place that knows the Min-block's layout (adapt here if it changes)."""
    w_v, w_g = block.min_unit.filter_v.weight, block.min_unit.filter_g.weight
    return {"expand": block.expand[0], "v": w_v, "g": w_g, "reduce": block.reduce[0],
            "projection": block.shortcut.projection}


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def min_blocks(model: nn.Module) -> list[MinBlock]:
    return [m for m in model.modules() if isinstance(m, MinBlock)]


def fan_out_std(weight: torch.Tensor) -> float:
    k_h, k_w = weight.shape[2:]
    return math.sqrt(2.0 / (k_h * k_w * weight.shape[0]))


def default_std(weight: torch.Tensor) -> float:
    """PyTorch's default conv init: uniform(-b, b) with b = 1/sqrt(fan_in), std b/sqrt(3)."""
    return 1.0 / math.sqrt(3 * weight[0].numel())


def default_bound(weight: torch.Tensor) -> float:
    return 1.0 / math.sqrt(weight[0].numel())


def record_inputs(modules: list[nn.Module]) -> tuple[list[torch.Tensor], list]:
    """Forward pre-hooks that keep each module's first input (call ``remove`` on the handles)."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for m in modules]
    return seen, handles


# --- registry ----------------------------------------------------------------------------------

def test_registry_names_are_exactly_the_papers_14_models() -> None:
    assert sorted(list_models()) == NAMES
    assert len(list_models()) == 14


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("min_*", [n for n in NAMES if n.startswith("min_")]),
        ("resnet_*", ["resnet_n3", "resnet_n5", "resnet_n7", "resnet_n9"]),
        ("*densenet_l100", ["densenet_l100", "min_densenet_l100"]),
        ("nothing*", []),
    ],
)
def test_list_models_filters_with_a_shell_pattern(pattern: str, expected: list[str]) -> None:
    assert sorted(list_models(pattern)) == sorted(expected)


@pytest.mark.parametrize("name", NAMES)
def test_model_info_fields(name: str) -> None:
    info = model_info(name)
    assert info["name"] == name
    assert info["family"] == ("resnet" if "resnet" in name else "densenet")
    assert info["min_net"] == name.startswith("min_")
    assert info["depth"] == int(name.rsplit("_", 1)[1][1:])
    assert info["paper_params"] == SPEC_PARAMS[name]


@pytest.mark.parametrize("lookup", [create_model, model_info])
def test_unknown_name_raises_minnets_error_with_close_matches(lookup) -> None:
    with pytest.raises(MinnetsError) as error:
        lookup("min_resnet_n4")
    assert "min_resnet_n4" in str(error.value)
    assert "min_resnet_n3" in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_name_without_close_matches_still_names_the_fix() -> None:
    with pytest.raises(MinnetsError) as error:
        create_model("vgg16")
    assert "vgg16" in str(error.value) and "models" in str(error.value)


# --- parameter counts and shapes ---------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_trainable_parameters_equal_spec_table(name: str) -> None:
    model = create_model(name)
    assert count_parameters(model) == SPEC_PARAMS[name]
    assert sum(p.numel() for p in model.parameters()) == SPEC_PARAMS[name]  # all trainable


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_for_10_and_100_classes(name: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for classes in (10, 100):
        model = create_model(name, num_classes=classes)
        with torch.no_grad():
            out = model(x)
        assert out.shape == (2, classes)
        assert torch.isfinite(out).all()
        # the head is Linear(C_final -> classes) with bias; only it depends on the class count
        if classes == 100:
            c_final = 64 if "resnet" in name else C_FINAL[model_info(name)["depth"]]
            assert count_parameters(model) - SPEC_PARAMS[name] == 90 * (c_final + 1)


def test_resnet_baseline_parameter_formula() -> None:
    for n in (1, 2, 3, 4):
        assert count_parameters(cifar_resnet(n)) == 97_440 * n - 22_022
        assert count_parameters(cifar_resnet(n)) - count_parameters(cifar_resnet(n, min_net=True)) == 53_216


@pytest.mark.parametrize("depth", [22, 58, 100])
def test_densenet_min_net_saves_the_difference_of_its_three_replaced_layers(depth: int) -> None:
    saved = sum((50 * c + 5280) - (36 * c + 804) for c in DENSE_INPUT_WIDTHS[depth])
    assert SPEC_PARAMS[f"densenet_l{depth}"] - SPEC_PARAMS[f"min_densenet_l{depth}"] == saved
    assert count_parameters(densenet_bc(depth)) - count_parameters(densenet_bc(depth, min_net=True)) == saved


@pytest.mark.parametrize("name", ["min_resnet_n3", "min_densenet_l22"])
def test_min_net_in_eval_mode_does_not_depend_on_the_batch(name: str) -> None:
    torch.manual_seed(1)
    model = create_model(name)
    model.train()
    with torch.no_grad():
        for _ in range(2):  # non-trivial BN running statistics
            model(torch.randn(4, 3, 32, 32))
    model.eval()
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        together = model(batch)
        for i in (0, 3):
            torch.testing.assert_close(model(batch[i:i + 1]), together[i:i + 1], atol=1e-5, rtol=0)


# --- ResNet structure (SPEC section 2) ---------------------------------------------------------

@pytest.mark.parametrize("min_net", [False, True])
def test_resnet_stacks_have_widths_16_32_64_and_stride_two_at_block_0_of_stacks_2_and_3(min_net: bool) -> None:
    model = cifar_resnet(3, min_net=min_net)
    assert len(model.stacks) == 3 and all(len(stack) == 3 for stack in model.stacks)
    blocks = [block for stack in model.stacks for block in stack]
    seen, handles = record_inputs(blocks)
    outputs: list[torch.Tensor] = []
    handles += [b.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for b in blocks]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    shapes = [(tuple(i.shape[1:]), tuple(o.shape[1:])) for i, o in zip(seen, outputs)]
    assert shapes == [
        ((16, 32, 32), (16, 32, 32)), ((16, 32, 32), (16, 32, 32)), ((16, 32, 32), (16, 32, 32)),
        ((16, 32, 32), (32, 16, 16)), ((32, 16, 16), (32, 16, 16)), ((32, 16, 16), (32, 16, 16)),
        ((32, 16, 16), (64, 8, 8)), ((64, 8, 8), (64, 8, 8)), ((64, 8, 8), (64, 8, 8)),
    ]


def test_resnet_min_net_has_a_min_block_exactly_at_block_0_of_each_stack() -> None:
    model = cifar_resnet(5, min_net=True)
    baseline = cifar_resnet(5)
    for stack, base_stack in zip(model.stacks, baseline.stacks):
        assert isinstance(stack[0], MinBlock)
        assert not any(isinstance(block, MinBlock) for block in stack[1:])
        # the other blocks are the baseline's pyramid blocks
        assert [type(b) for b in stack[1:]] == [type(b) for b in base_stack[1:]]
    # (16,16,1), (16,32,2), (32,64,2) without projection, q = 2
    expected = [(16, 16, False), (16, 32, False), (32, 64, False)]
    for block, (d_in, d_out, _) in zip(min_blocks(model), expected):
        parts = min_block_parts(block)
        assert parts["projection"] is None
        assert parts["expand"].in_channels == d_in and parts["reduce"].out_channels == d_out
        assert parts["v"].shape[0] == 2 * d_out
    assert len(min_blocks(model)) == 3


def test_resnet_baseline_layers() -> None:
    n = 3
    model = cifar_resnet(n)
    all_convs = convs(model)
    assert len(all_convs) == 1 + 2 * 3 * n  # stem + two 3x3 convs per block, no 1x1 projection
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in all_convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1 + 3 * 3 * n
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 64 and linears[0].bias is not None


def test_resnet_head_pools_the_last_stack_without_bn_or_relu() -> None:
    torch.manual_seed(2)
    model = cifar_resnet(3).eval()
    x = torch.randn(2, 3, 32, 32)
    last, handles = record_inputs([model.classifier])
    stack_out: list[torch.Tensor] = []
    handles.append(model.stacks[2].register_forward_hook(lambda _m, _a, out: stack_out.append(out)))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(last[0].flatten(1), stack_out[0].mean(dim=(2, 3)))


@pytest.mark.parametrize("d_in, d_out, stride", [(16, 16, 1), (16, 32, 2), (5, 7, 2)])
def test_pyramid_block_matches_reference_in_eval_mode(d_in: int, d_out: int, stride: int) -> None:
    """BN -> 3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN, plus pooled, zero-padded input."""
    torch.manual_seed(17)
    block = PyramidBasicBlock(d_in, d_out, stride)
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    conv_a, conv_b = convs(block)
    assert [bn.num_features for bn in bns] == [d_in, d_out, d_out] and conv_a.stride == (stride, stride)
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    block.eval()

    def bn_eval(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        return (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps) \
            * bn.weight[:, None, None] + bn.bias[:, None, None]

    x = torch.randn(2, d_in, 9, 9)
    with torch.no_grad():
        t = F.conv2d(bn_eval(x, bns[0]), conv_a.weight, stride=stride, padding=1)
        t = bn_eval(F.conv2d(F.relu(bn_eval(t, bns[1])), conv_b.weight, padding=1), bns[2])
        shortcut = F.avg_pool2d(x, 2, ceil_mode=True) if stride == 2 else x
        shortcut = torch.cat([shortcut, torch.zeros(2, d_out - d_in, *shortcut.shape[2:])], 1)
        out = block(x)
    torch.testing.assert_close(out, shortcut + t, atol=1e-5, rtol=1e-4)
    assert out.min() < 0  # no ReLU after the sum


# --- DenseNet structure (SPEC section 3) -------------------------------------------------------

@pytest.mark.parametrize("depth", [22, 58, 100])
@pytest.mark.parametrize("min_net", [False, True])
def test_densenet_widths_and_final_width(depth: int, min_net: bool) -> None:
    model = densenet_bc(depth, min_net=min_net)
    n = (depth - 4) // 6
    assert [len(block.layers) for block in model.stacks] == [n, n, n]
    seen, handles = record_inputs(list(model.stacks))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in handles:
        h.remove()
    assert [t.shape[1] for t in seen] == list(DENSE_INPUT_WIDTHS[depth])
    assert [t.shape[2] for t in seen] == [32, 16, 8]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == C_FINAL[depth]


@pytest.mark.parametrize("depth", [22, 58, 100])
def test_densenet_min_net_replaces_the_first_layer_of_each_dense_block(depth: int) -> None:
    model = densenet_bc(depth, min_net=True)
    blocks = min_blocks(model)
    assert len(blocks) == 3
    for dense_block, block, c in zip(model.stacks, blocks, DENSE_INPUT_WIDTHS[depth]):
        first = dense_block.layers[0]
        assert block in list(first.modules())
        assert not any(isinstance(m, MinBlock) for layer in dense_block.layers[1:] for m in layer.modules())
        parts = min_block_parts(block)
        assert parts["expand"].in_channels == c
        assert parts["expand"].out_channels == 24 and parts["v"].shape[0] == 24  # hidden 2k
        assert parts["reduce"].out_channels == 12
        assert parts["projection"] is not None and parts["projection"].bias is not None
        assert sum(p.numel() for p in first.parameters()) == 36 * c + 804


def test_densenet_min_block_maps_are_concatenated_onto_the_dense_block_input() -> None:
    torch.manual_seed(18)
    model = densenet_bc(22, min_net=True).eval()
    dense_block = model.stacks[1]
    seen, handles = record_inputs([dense_block])
    outputs: list[torch.Tensor] = []
    handles.append(dense_block.register_forward_hook(lambda _m, _a, out: outputs.append(out)))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        for h in handles:
            h.remove()
        x, y = seen[0], outputs[0]
        assert x.shape[1] == 30 and y.shape[1] == 30 + 3 * 12
        torch.testing.assert_close(y[:, :30], x)
        torch.testing.assert_close(y[:, 30:42], min_blocks(model)[1](x))


@pytest.mark.parametrize("min_net", [False, True])
def test_densenet_convs_have_no_bias_except_min_block_projections(min_net: bool) -> None:
    model = densenet_bc(22, min_net=min_net)
    projections = {id(min_block_parts(b)["projection"]) for b in min_blocks(model)}
    for conv in convs(model):
        assert (conv.bias is not None) == (id(conv) in projections)
    assert len(projections) == (3 if min_net else 0)


def test_densenet_stem_is_a_bare_conv_feeding_the_first_dense_block() -> None:
    torch.manual_seed(3)
    model = densenet_bc(22).eval()
    stem = convs(model)[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size) == (3, 24, (3, 3))
    x = torch.randn(2, 3, 32, 32)
    seen, handles = record_inputs([model.stacks[0]])
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(seen[0], F.conv2d(x, stem.weight, padding=1))  # no BN, ReLU, pool


def test_densenet_head_applies_relu_before_pooling() -> None:
    torch.manual_seed(4)
    model = densenet_bc(22).eval()
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)][0]
    seen, handles = record_inputs([linear])
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert seen[0].shape == (2, 69) and seen[0].min() >= 0 and seen[0].max() > 0


def test_builders_take_depth_growth_rate_expansion_and_classes() -> None:
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32)
    wide = densenet_bc(40, num_classes=7, growth_rate=24)  # n = 6: 48 -> 192 -> 96 -> 240 -> 120 -> 264
    assert wide(x).shape == (2, 7)
    assert [m for m in wide.modules() if isinstance(m, nn.Linear)][0].in_features == 264
    wide_min = densenet_bc(40, growth_rate=24, min_net=True, expansion=3)
    assert wide_min(x).shape == (2, 10)
    for block, c in zip(min_blocks(wide_min), (48, 96, 120)):
        assert min_block_parts(block)["expand"].in_channels == c
        assert min_block_parts(block)["v"].shape[0] == 3 * 24
    resnet = cifar_resnet(2, num_classes=5, min_net=True, expansion=4)
    assert resnet(x).shape == (2, 5)
    assert [min_block_parts(b)["v"].shape[0] for b in min_blocks(resnet)] == [64, 128, 256]
    assert cifar_resnet(2, expansion=4)(x).shape == (2, 10)
    # registry keyword arguments reach the builder
    assert [min_block_parts(b)["v"].shape[0] for b in min_blocks(create_model("min_resnet_n3", expansion=4))] \
        == [64, 128, 256]


# --- design rule on a user's network -----------------------------------------------------------

class ToyBlock(nn.Module):
    def __init__(self, d_in: int, d_out: int, stride: int = 1) -> None:
        super().__init__()
        self.d_in, self.d_out, self.stride = d_in, d_out, stride
        self.conv = nn.Conv2d(d_in, d_out, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class ToyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(ToyBlock(3, 8), ToyBlock(8, 8)),
            nn.Sequential(ToyBlock(8, 16, 2), ToyBlock(16, 16), ToyBlock(16, 16)),
            nn.Sequential(ToyBlock(16, 4, 2)),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def test_design_rule_replaces_exactly_each_stacks_first_block_of_a_toy_network() -> None:
    torch.manual_seed(6)
    net = ToyNet()
    before = [list(stage) for stage in net.stages]
    received: list[nn.Module] = []

    def make(block: ToyBlock) -> MinBlock:
        received.append(block)
        return MinBlock(block.d_in, block.d_out, block.stride)

    replace_first_blocks(net.stages, make)
    assert received == [stage[0] for stage in before]
    for stage, old in zip(net.stages, before):
        assert isinstance(stage[0], MinBlock)
        assert len(stage) == len(old)
        assert all(new is kept for new, kept in zip(list(stage)[1:], old[1:]))
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 4, 4, 4)
    # the new blocks are registered: their parameters are the model's
    assert {id(p) for b in min_blocks(net) for p in b.parameters()} <= {id(p) for p in net.parameters()}
    assert min_block_parts(net.stages[2][0])["projection"] is not None  # 16 -> 4 narrows


# --- initialisation (SPEC section 5) -----------------------------------------------------------

def assert_fan_out_normal(weight: torch.Tensor, rel: float = 0.1) -> None:
    assert weight.std().item() == pytest.approx(fan_out_std(weight), rel=rel)
    assert abs(weight.mean().item()) < 3 * fan_out_std(weight) / math.sqrt(weight.numel()) + 1e-3


def assert_pytorch_default(weight: torch.Tensor, rel: float = 0.1) -> None:
    assert weight.abs().max().item() <= default_bound(weight)
    assert weight.std().item() == pytest.approx(default_std(weight), rel=rel)


def big(weights: list[torch.Tensor], numel: int = 1000) -> list[torch.Tensor]:
    return [w for w in weights if w.numel() >= numel]


def test_resnet_baseline_convs_are_fan_out_normal() -> None:
    torch.manual_seed(7)
    model = create_model("resnet_n3")
    weights = big([c.weight.detach() for c in convs(model)], 2000)
    assert len(weights) >= 10
    for w in weights:
        assert_fan_out_normal(w)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()


def test_resnet_min_net_keeps_pytorch_defaults_everywhere() -> None:
    torch.manual_seed(8)
    model = create_model("min_resnet_n3")
    stem = convs(model)[0].weight.detach()
    assert stem.shape == (16, 3, 3, 3)
    assert stem.abs().max().item() <= 1 / math.sqrt(27)
    assert stem.std().item() == pytest.approx(1 / math.sqrt(3 * 27), rel=0.1)
    for w in big([c.weight.detach() for c in convs(model)]):  # pyramid blocks and Min-blocks alike
        assert_pytorch_default(w)
    for block in min_blocks(model):
        for w in (min_block_parts(block)["v"], min_block_parts(block)["g"]):
            assert w.abs().max().item() <= 1 / 3  # depthwise: fan_in 9


def test_densenet_baseline_is_fan_out_normal_with_zero_classifier_bias() -> None:
    torch.manual_seed(9)
    model = create_model("densenet_l58")
    weights = big([c.weight.detach() for c in convs(model)], 2000)
    assert len(weights) >= 20
    for w in weights:
        assert_fan_out_normal(w)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][0]
    assert not classifier.bias.any()
    bound = 1 / math.sqrt(classifier.in_features)  # weight keeps the default
    assert classifier.weight.abs().max().item() <= bound
    assert classifier.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_densenet_min_net_min_blocks_keep_defaults_except_projection_weight() -> None:
    torch.manual_seed(10)
    model = create_model("min_densenet_l100")
    block_params = {id(p) for b in min_blocks(model) for p in b.parameters()}
    for block in min_blocks(model):
        parts = min_block_parts(block)
        for w in (parts["expand"].weight, parts["reduce"].weight):
            assert_pytorch_default(w.detach(), rel=0.2)
        for w in (parts["v"], parts["g"]):
            assert w.abs().max().item() <= 1 / 3
        projection = parts["projection"]
        assert_fan_out_normal(projection.weight.detach(), rel=0.15)  # sqrt(2/12): far above default
        bias_bound = 1 / math.sqrt(projection.in_channels)  # the bias keeps its default
        assert projection.bias.abs().max().item() <= bias_bound and projection.bias.any()
    # everything else as the baseline
    for conv in convs(model):
        if id(conv.weight) not in block_params and conv.weight.numel() >= 2000:
            assert_fan_out_normal(conv.weight.detach())
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][0]
    assert not classifier.bias.any()


def test_init_same_gives_min_nets_their_familys_baseline_scheme() -> None:
    torch.manual_seed(11)
    resnet = create_model("min_resnet_n3", init="same")
    weights = [c.weight.detach() for c in convs(resnet)]
    stem = weights[0]
    assert stem.abs().max().item() > 1 / math.sqrt(27)  # normal, not bounded like the default
    assert stem.std().item() == pytest.approx(fan_out_std(stem), rel=0.1)
    for w in big(weights):
        assert_fan_out_normal(w)
    for block in min_blocks(resnet):  # the Min-blocks too: depthwise std sqrt(2/(9 f))
        parts = min_block_parts(block)
        for w in (parts["v"], parts["g"]):
            assert w.std().item() == pytest.approx(fan_out_std(w), rel=0.15)
    torch.manual_seed(12)
    densenet = create_model("min_densenet_l58", init="same")
    for block in min_blocks(densenet):
        parts = min_block_parts(block)
        for w in (parts["expand"].weight, parts["projection"].weight):
            assert_fan_out_normal(w.detach(), rel=0.15)
    assert not [m for m in densenet.modules() if isinstance(m, nn.Linear)][0].bias.any()


@pytest.mark.parametrize("name", ["resnet_n3", "densenet_l22"])
def test_init_same_leaves_baselines_unchanged(name: str) -> None:
    torch.manual_seed(13)
    published = create_model(name).state_dict()
    torch.manual_seed(13)
    same = create_model(name, init="same").state_dict()
    assert all(torch.equal(published[k], same[k]) for k in published)


def test_seeded_builds_are_deterministic() -> None:
    torch.manual_seed(14)
    a = create_model("min_densenet_l22").state_dict()
    torch.manual_seed(14)
    b = create_model("min_densenet_l22").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- memory-efficient DenseNet (SPEC section 3) ------------------------------------------------

@pytest.mark.parametrize("min_net", [False, True])
def test_checkpointed_densenet_matches_plain_gradients_and_running_statistics(min_net: bool) -> None:
    torch.manual_seed(15)
    plain = densenet_bc(22, min_net=min_net)
    efficient = densenet_bc(22, min_net=min_net, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 3, 5, 9])
    for model in (plain, efficient):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):  # two steps: the second also sees the first step's statistics
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    grads = {name: p.grad for name, p in plain.named_parameters()}
    for name, p in efficient.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5, msg=name)
    plain_state = plain.state_dict()
    for name, value in efficient.state_dict().items():  # running stats: first BN updated once per step
        torch.testing.assert_close(value, plain_state[name], atol=1e-6, rtol=1e-5, msg=name)


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total


def test_memory_efficient_is_off_by_default_and_reachable_through_the_registry() -> None:
    torch.manual_seed(16)
    default = create_model("densenet_l22")
    efficient = create_model("densenet_l22", memory_efficient=True)
    efficient.load_state_dict(default.state_dict())
    plain = create_model("densenet_l22", memory_efficient=False)
    x = torch.randn(2, 3, 8, 8)
    default.train(), efficient.train(), plain.train()
    torch.testing.assert_close(efficient(x), default(x), atol=1e-6, rtol=1e-5)
    assert saved_bytes(default, x) == saved_bytes(plain, x)
    assert saved_bytes(efficient, x) < 0.8 * saved_bytes(default, x)
