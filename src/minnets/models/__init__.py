"""The paper's models by family, behind one registry (``create_model``, ``list_models``)."""

from minnets.models import resnet  # noqa: F401, I001  (registers the ResNets first)
from minnets.models import densenet  # noqa: F401  (then the DenseNets)
from minnets.models.densenet import DenseNetBC, densenet_bc
from minnets.models.design_rule import replace_first_blocks
from minnets.models.init import INIT_SCHEMES, initialize
from minnets.models.registry import (
    ModelInfo, count_parameters, create_model, list_models, model_info, register_model,
)
from minnets.models.resnet import CifarResNet, PyramidBasicBlock, cifar_resnet

__all__ = [
    "CifarResNet", "DenseNetBC", "INIT_SCHEMES", "ModelInfo", "PyramidBasicBlock", "cifar_resnet",
    "count_parameters", "create_model", "densenet_bc", "initialize", "list_models", "model_info",
    "register_model", "replace_first_blocks",
]
