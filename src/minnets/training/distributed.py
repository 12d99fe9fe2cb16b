"""Several processes (``torchrun``): one process per device, one global batch.

Each rank takes its share of every global batch (see :class:`minnets.data.BatchLoader`) and
scales its summed loss so that DDP's gradient average equals the one-process gradient of the
mean loss. BatchNorm statistics are shared across ranks: torch's SyncBatchNorm on GPUs, and
on CPU (where torch's SyncBatchNorm refuses to run) :class:`CrossProcessBatchNorm2d`, which
all-reduces the batch moments with a differentiable all-reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from minnets.errors import MinnetsError

__all__ = ["Context", "setup", "teardown", "sync_batchnorm", "all_reduce_sum"]


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise MinnetsError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MinnetsError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return device


def setup(requested_device: str = "auto") -> Context:
    """Join the process group ``torchrun`` describes in the environment, if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(requested_device)
    if world_size == 1:
        return Context(0, 1, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), device)


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of every rank's gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the union of all ranks' batches, for CPU process groups (gloo).

    Two-pass moments (global mean first, then the global mean squared deviation) keep it as
    accurate as one-process BatchNorm; gradients flow across ranks through the collective.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        total = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return centred * scale[None, :, None, None] + self.bias[None, :, None, None]


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by one that shares statistics across ranks."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            shared = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            # Keep the very same parameters and buffers, so optimisers and state dicts still see them.
            for key, tensor in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(shared, key, tensor)
            setattr(model, name, shared)
        else:
            sync_batchnorm(child, device)
    return model


def all_reduce_sum(values: torch.Tensor, context: Context) -> torch.Tensor:
    if context.distributed:
        dist.all_reduce(values)
    return values
