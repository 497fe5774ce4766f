"""SGD and the multi-step learning-rate schedule of the CIFAR/ImageNet recipes (METHODS.md §3.2)."""

from __future__ import annotations

import argparse

import torch
from torch import nn


def make_sgd(parameters: list[nn.Parameter], opt: argparse.Namespace, lr: float | None = None) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every parameter, fused or foreach when available."""
    lr = opt.learning_rate if lr is None else lr
    on_cuda = any(p.is_cuda for p in parameters)
    kwargs = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.SGD(parameters, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, opt: argparse.Namespace) -> torch.optim.lr_scheduler.MultiStepLR:
    """lr · rate^#{m : epoch > m}: stepped once per epoch, after the epoch (epochs are 1-indexed)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=opt.lr_decay_epochs, gamma=opt.lr_decay_rate)
