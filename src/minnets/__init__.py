"""minnets: Min-Nets (min of two learned filters, an AND of filters) for PyTorch.

Drop a :class:`MinBlock` into any network, build the paper's models by name with
:func:`create_model`, or turn a network of stacks into a Min-Net with
:func:`replace_first_blocks`.
"""

from minnets.errors import MinnetsError
from minnets.layers import MinBlock, MinUnit, Shortcut
from minnets.models import create_model, list_models, model_info, replace_first_blocks

__version__ = "0.1.0"

__all__ = [
    "MinBlock", "MinUnit", "MinnetsError", "Shortcut", "create_model", "list_models", "model_info",
    "replace_first_blocks", "__version__",
]
