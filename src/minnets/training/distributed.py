"""Several processes (``torchrun``): one process per device, one global batch.

Each rank takes its share of every global batch (see :class:`minnets.data.BatchLoader`) and
scales its summed loss so that DDP's gradient average equals the one-process gradient of the
mean loss. BatchNorm statistics are shared across ranks: torch's SyncBatchNorm on GPUs, and
on CPU (where torch's SyncBatchNorm refuses to run) :class:`CrossProcessBatchNorm2d`, which
all-reduces the batch moments with a differentiable all-reduce.

How closely ``--float64`` runs reproduce one process (measured on CPU: min_resnet_n3, 1,024
CIFAR images, batch 128, seed 16). torch's own CPU BatchNorm in training mode is the less
accurate side: its float64 outputs and weight gradients are 3e-14 to 4e-13 (relative) from a
long-double reference, the two-pass moments of :class:`CrossProcessBatchNorm2d` 2e-16 to 9e-15.
One process on torch's BatchNorm and two on this one therefore differed by 8e-13 in the first
step's gradient. A float64 CPU run now trains with the two-pass BatchNorm in one process too
(:func:`two_pass_batchnorm`, from the trainer), and the first gradients differ by 7e-14, what
remains being summation order over the split batch, mostly in the convs' weight gradients
(torch's own float64 weight gradient is 1e-14 from exact whichever way the batch is summed).

What training makes of that depends on the network. A ResNet keeps it: resnet_n3's weights
stay within 1e-14 over the first four steps (a perturbation of 1e-12 stays 1e-12). A Min-Net's
training amplifies any perturbation 5 to 13 times per SGD step at lr 0.1, smoothly (a
perturbation 100 times larger gives differences 100 times larger), until one ReLU's input
changes sign at one pixel: two processes' weights were 1e-10 apart after 12 steps when one
pixel of the ReLU before the last stack's Min-unit flipped, and the 13th gradient jumped by
9e-4 (it is constant between such flips). From then on the runs are two nearby trainings:
after 2 epochs the train losses differ by 1e-5 and the test losses by 4e-5 (with torch's
BatchNorm in the one process 3e-4 and 1e-4; epoch 1's train loss 2e-11 apart, was 4e-10).
The minimum's ties play no part: the first step's closest two live responses of a Min-unit are
1.4e-8 apart, and no minimum changed its winner at the flips measured. One process with 1
thread and with 2 starts 3e-16 apart and stays below the first flip (3e-12 after 2 epochs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from minnets.errors import MinnetsError

__all__ = ["Context", "setup", "teardown", "sync_batchnorm", "two_pass_batchnorm", "all_reduce_sum"]


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
    """BatchNorm with two-pass batch moments, over the union of all ranks' batches (gloo).

    Two-pass moments (global mean first, then the global mean squared deviation), each a
    pairwise sum: float64 outputs and gradients 2e-16 to 9e-15 (relative) from a long-double
    reference, where torch's own CPU BatchNorm is 3e-14 to 4e-13 off.
    In a process group the sums are all-reduced, and gradients flow across ranks through the
    collective; in one process (:func:`two_pass_batchnorm`) it is the same computation on the
    local batch. Evaluation mode is plain ``nn.BatchNorm2d`` (the running statistics).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        shared = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        reduce = _AllReduceSum.apply if shared else (lambda tensor: tensor)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        total = reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean[None, :, None, None]
        var = reduce(centred.pow(2).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            return centred * (self.weight * scale)[None, :, None, None] + self.bias[None, :, None, None]
        return centred * scale[None, :, None, None]


def two_pass_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by :class:`CrossProcessBatchNorm2d` (in place; same parameters,
    buffers and state-dict keys): in one process, BatchNorm with two-pass moments, the one a
    float64 CPU run trains with in any number of processes (see the module docstring). It
    leaves Min-blocks on their module path, which float64 takes anyway."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            shared = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                             child.track_running_stats)
            # Keep the very same parameters and buffers, so optimisers and state dicts still see them.
            for key, tensor in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(shared, key, tensor)
            shared.train(child.training)
            setattr(model, name, shared)
        else:
            two_pass_batchnorm(child)
    return model


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by one that shares statistics across ranks."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return two_pass_batchnorm(model)


def all_reduce_sum(values: torch.Tensor, context: Context) -> torch.Tensor:
    if context.distributed:
        dist.all_reduce(values)
    return values
