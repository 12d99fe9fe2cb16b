"""The hyperselectivity instruments against closed forms and hand-built units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minnets.analysis.end_stopping import end_stopping, square_stimuli
from minnets.analysis.geometry import filter_angles, ideal_min_response
from minnets.analysis.iso_response import optimal_directions, orthogonalise, plane_fits, response_plane
from minnets.analysis.silent import TOL, unit_activity
from minnets.analysis.units import UnitProbe, analysed_blocks
from minnets.models import create_model


def test_filter_angles_of_hand_made_pairs() -> None:
    v = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    g = torch.tensor([[0.0, 5.0, 0.0], [2.0, 4.0, 6.0], [1.0, math.sqrt(3.0), 0.0], [-1.0, -1.0, 0.0],
                      [1.0, 0.0, 0.0]])
    angles = filter_angles(v, g)
    assert angles[:3] == pytest.approx([90.0, 0.0, 60.0], abs=1e-6)
    assert angles[3] == pytest.approx(180.0, abs=1e-5)  # arccos is ill-conditioned at -1: float rounding
    assert math.isnan(angles[4])  # an all-zero filter has no direction


def test_filter_angles_of_depthwise_kernels_ignore_scale() -> None:
    v = torch.randn(6, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = torch.randn(6, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert filter_angles(v, g) == pytest.approx(filter_angles(3.0 * v, 0.5 * g), abs=1e-9)


def _basis(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q.T  # rows: orthonormal vectors


@pytest.mark.parametrize("gamma", [40.0, 90.0, 120.0])
def test_iso_response_of_an_ideal_min_neuron_is_a_v_with_slope_tan_half_gamma(gamma: float) -> None:
    n, half = 25, math.radians(gamma) / 2
    a, b, c = _basis(n, 0)[:3]
    v = 1.7 * (math.cos(half) * a + math.sin(half) * b)
    g = 1.7 * (math.cos(half) * a - math.sin(half) * b)
    assert filter_angles(v[None], g[None])[0] == pytest.approx(gamma)

    def response(x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(F.relu(x @ v), F.relu(x @ g))[:, None]

    x0 = 0.1 * a + 0.5 * c  # weakly active; c is orthogonal to both filters
    (e1,) = optimal_directions(response, x0, [0], radius=1.0, generator=torch.Generator().manual_seed(0))
    assert float(e1 @ a) == pytest.approx(1.0, abs=1e-4)  # the bisector (paper Section 2.3)
    plane = response_plane(response, x0, 0, e1, orthogonalise(e1, b), radius=1.0)
    fits = [fit for fit in plane_fits(plane) if not math.isnan(fit.slope)]
    assert len(fits) >= 2
    for fit in fits:
        assert fit.slope == pytest.approx(math.tan(half), rel=0.02)
        assert fit.c2 > 0.1  # bends away from the origin: hyperselective
    # The grid itself is the closed form, shifted by x0's component 0.1 along the bisector.
    t, o = np.meshgrid(plane.t, plane.o, indexing="ij")
    assert plane.values == pytest.approx(ideal_min_response(t + 0.1, o, gamma, norm=1.7), abs=1e-3)


def test_iso_response_of_a_linear_relu_neuron_is_straight() -> None:
    n = 25
    w, other, x_dir = _basis(n, 3)[:3]

    def response(x: torch.Tensor) -> torch.Tensor:
        return F.relu(2.5 * x @ w)[:, None]

    x0 = 0.4 * x_dir  # a base stimulus orthogonal to w: response 0 there
    (e1,) = optimal_directions(response, x0, [0], radius=2.0, generator=torch.Generator().manual_seed(0))
    assert float(e1 @ w) == pytest.approx(1.0, abs=1e-9)
    plane = response_plane(response, x0, 0, e1, orthogonalise(e1, other + w), radius=2.0)
    fits = plane_fits(plane)
    assert all(not math.isnan(fit.c2) for fit in fits)
    for fit in fits:
        assert abs(fit.c2) < 1e-6 and abs(fit.slope) < 1e-6 and abs(fit.c1) < 1e-6
        assert fit.c0 == pytest.approx(fit.fraction, abs=1e-6)  # t = level / |w| in units of the radius


def test_iso_response_of_a_max_neuron_bends_towards_the_origin() -> None:
    n, half = 16, math.radians(80) / 2
    a, b = _basis(n, 5)[:2]
    v, g = math.cos(half) * a + math.sin(half) * b, math.cos(half) * a - math.sin(half) * b

    def response(x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(F.relu(x @ v), F.relu(x @ g))[:, None]

    x0 = torch.zeros(n, dtype=torch.float64)
    (e1,) = optimal_directions(response, x0, [0], radius=1.0, generator=torch.Generator().manual_seed(0))
    plane = response_plane(response, x0, 0, e1, orthogonalise(e1, b if float(e1 @ a) > 0.9 else a), radius=1.0)
    curvatures = [fit.c2 for fit in plane_fits(plane) if not math.isnan(fit.c2)]
    assert curvatures and all(c < -0.1 for c in curvatures)


def _edge_kernels() -> tuple[torch.Tensor, torch.Tensor]:
    vertical = torch.tensor([[-1.0, 0.0, 1.0]] * 3)  # responds to a left edge of a bright square
    return vertical, vertical.T.contiguous()  # and to its top edge


def _hand_built_units(x: torch.Tensor) -> torch.Tensor:
    """Channel 0: an edge detector ReLU(k_v * x); channel 1: a corner detector, the AND
    ``min(ReLU(k_v * x), ReLU(k_h * x))`` of a vertical and a horizontal edge detector."""
    grey = x.mean(dim=1, keepdim=True)
    vertical, horizontal = _edge_kernels()
    edge_v = F.relu(F.conv2d(grey, vertical[None, None], padding=1))
    edge_h = F.relu(F.conv2d(grey, horizontal[None, None], padding=1))
    return torch.cat([edge_v, torch.minimum(edge_v, edge_h)], dim=1)


def test_end_stopping_orders_a_corner_detector_above_an_edge_detector() -> None:
    result = end_stopping(_hand_built_units, square_stimuli(32, 16), side=16)
    edge, corner = result["es"]
    assert corner == pytest.approx(1.0)  # silent on straight edges
    assert edge <= 0.05  # straight edges drive it as much as corners
    assert result["r_uniform"] == pytest.approx([0.0, 0.0])


def test_end_stopping_scales_locations_to_a_strided_map() -> None:
    def strided(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(_hand_built_units(x), 2)

    edge, corner = end_stopping(strided, square_stimuli(32, 16), side=16)["es"]
    assert corner == pytest.approx(1.0) and edge <= 0.05


def test_silent_units_are_those_never_active() -> None:
    def maps(x: torch.Tensor) -> torch.Tensor:
        on = F.relu(x[:, :1])  # active where the input is positive
        return torch.cat([on, torch.zeros_like(on), 1e-9 * on], dim=1)

    batches = [torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    result = unit_activity(maps, batches)
    assert result["silent"].tolist() == [False, True, True]
    floor = TOL * max(float(b.max()) for b in batches)
    positives = sum(float((b > floor).sum()) for b in batches) / (12 * 25)
    assert result["activity"][0] == pytest.approx(positives)


def test_probe_reads_the_maps_the_network_computes() -> None:
    """The probe's Min-unit maps equal those the model's own forward pass produces (hooked)."""
    model = create_model("min_resnet_n3").eval()
    blocks = analysed_blocks(model)
    assert [(b.name, b.kind, b.channels) for b in blocks] == [("stack1", "min", 32), ("stack2", "min", 64),
                                                              ("stack3", "min", 128)]
    seen = {}
    block = blocks[1]
    handle = block.module.min_unit.register_forward_hook(lambda _m, _a, out: seen.setdefault("maps", out.detach()))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    model(x)  # with gradients enabled the Min-unit runs as its own module, so the hook fires
    handle.remove()
    assert UnitProbe(model)(x.detach(), block) == pytest.approx(seen["maps"], abs=1e-5)


def test_single_operator_and_baselines_have_no_filter_pairs() -> None:
    single = analysed_blocks(create_model("min_resnet_n3", unit="single"))
    assert all(b.kind == "min" and b.filter_pair() is None for b in single)
    densenet = create_model("densenet_l22")
    baseline = analysed_blocks(densenet)
    assert [(b.kind, b.channels, b.filter_pair()) for b in baseline] == [("baseline", 12, None)] * 3
    maps = UnitProbe(densenet)(torch.randn(2, 3, 32, 32), baseline[2])
    assert maps.shape == (2, 12, 8, 8) and float(maps.min()) >= 0
