"""The paper's numbers shipped with minnets.reports: checked against values read from the paper."""

from __future__ import annotations

import pytest

from minnets.reports import load_published
from minnets.reports.published import paper_grid, paper_models, published_model, qualities

# The published models' trainable parameters with 10 classes, (baseline, Min-Net).
PAPER_PARAMETERS = {
    "resnet_n3": 270_298, "min_resnet_n3": 217_082,
    "resnet_n5": 465_178, "min_resnet_n5": 411_962,
    "resnet_n7": 660_058, "min_resnet_n7": 606_842,
    "resnet_n9": 854_938, "min_resnet_n9": 801_722,
    "densenet_l22": 71_686, "min_densenet_l22": 57_040,
    "densenet_l58": 314_470, "min_densenet_l58": 298_564,
    "densenet_l100": 769_162, "min_densenet_l100": 751_786,
}


def test_parameters_match_the_published_models_for_all_14() -> None:
    assert {name: published_model(name)["parameters"] for name in paper_models()} == PAPER_PARAMETERS


def test_parameters_match_the_model_registry() -> None:
    from minnets.models import model_info

    for name in paper_models():
        info = model_info(name)
        entry = published_model(name)
        assert (entry["family"], entry["depth"], entry["min_net"]) == (
            info["family"], info["depth"], info["min_net"])
        assert entry["parameters"] == info["paper_params"]


@pytest.mark.parametrize(
    ("model", "path", "expected"),
    [
        # paper Figure 2 and Table 1
        ("min_densenet_l100", ("final_test_err", "mean"), 4.55),
        ("min_densenet_l100", ("final_test_err", "std"), 0.14),
        ("densenet_l58", ("final_test_err", "max"), 6.25),
        ("densenet_l100", ("min_test_err", "min"), 4.56),
        ("min_densenet_l100", ("min_test_err", "min"), 4.36),
        ("min_densenet_l22", ("min_test_err", "mean"), 8.78),
        ("resnet_n3", ("final_test_err", "mean"), 8.32),
        ("resnet_n3", ("final_test_err", "std"), 0.38),
        ("min_resnet_n9", ("final_test_err", "mean"), 5.99),
        ("min_resnet_n5", ("final_test_err", "std"), 0.23),
        # paper Table 2 (DenseNet error) and Table 3 (DenseNet POCP, rows "Min-DenseNet")
        ("densenet_l22", ("jpeg_test_err", 10), 64.6),
        ("min_densenet_l100", ("jpeg_test_err", 90), 8.8),
        ("min_densenet_l58", ("pocp", 90), 8.3),
        ("densenet_l100", ("pocp", 50), 25.1),
        # paper Table 4 (ResNet error) and Table 5 (ResNet POCP)
        ("resnet_n9", ("jpeg_test_err", 100), 6.3),
        ("min_resnet_n3", ("jpeg_test_err", 20), 42.5),
        ("resnet_n9", ("pocp", 90), 8.5),
        ("min_resnet_n9", ("pocp", 90), 7.8),
        ("resnet_n7", ("pocp", 10), 59.8),
    ],
)
def test_published_numbers_match_the_paper(model: str, path: tuple, expected: float) -> None:
    value = published_model(model)
    for key in path:
        value = value[key]
    assert value == expected


def test_resnet_extremes_and_min_over_epochs_are_not_published() -> None:
    entry = published_model("resnet_n9")
    assert entry["final_test_err"]["min"] is None and entry["final_test_err"]["max"] is None
    assert all(value is None for value in entry["min_test_err"].values())


def test_every_model_has_all_qualities_and_the_grids_match_spec() -> None:
    assert qualities() == [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    for name in paper_models():
        entry = published_model(name)
        assert sorted(entry["jpeg_test_err"], reverse=True) == qualities()
        assert sorted(entry["pocp"], reverse=True) == qualities()[1:]
    assert paper_grid("resnet")["seeds"] == [9, 16, 507, 723, 744]
    assert paper_grid("densenet")["seeds"] == [9, 507, 723]
    assert (paper_grid("resnet")["epochs"], paper_grid("densenet")["epochs"]) == (200, 300)
    assert published_model("vgg16") is None


def test_load_published_names_its_sources_and_returns_a_private_copy() -> None:
    data = load_published()
    assert "Table 3" in data["source"]["pocp"] and "Min-DenseNet" in data["source"]["pocp"]
    data["models"]["resnet_n3"]["parameters"] = 0
    assert load_published()["models"]["resnet_n3"]["parameters"] == 270_298
