"""Small pieces the CIFAR networks are built from: convolutions, channel shuffle, stages, init.

Every family file composes these, so a convolution, a shortcut or an initialisation scheme is
written once. Nothing here holds parameters of its own beyond standard ``nn`` layers, so the
state-dict names stay those of the upstream checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> nn.Conv2d:
    """A 'same'-padded square convolution (padding ``kernel_size // 2``), bias-free by default."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2, groups=groups, bias=bias)


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    relu: bool = False,
) -> list[nn.Module]:
    """The layers ``[Conv, BN]`` or ``[Conv, BN, ReLU]``, to be unpacked into an ``nn.Sequential``.

    Returning a list rather than a ``Sequential`` lets callers chain several of them into one
    flat ``Sequential``, which is how the upstream state dicts number their layers
    (e.g. MobileNetV2's ``conv.0 … conv.7``).
    """
    layers: list[nn.Module] = [conv(in_channels, out_channels, kernel_size, stride, groups, bias),
                               nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The residual shortcut ``Sequential(Conv1×1(stride), BN)`` when the block changes the shape
    of its input, else ``None`` (identity).
    """
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups (ShuffleNet, Zhang et al., CVPR 2018).

    Channel ``g * (C / groups) + i`` moves to position ``i * groups + g``, so that the next
    grouped convolution sees channels from every group. ``reshape`` (not ``view``) keeps it
    valid for channels-last tensors.
    """
    batch, channels, height, width = x.shape
    x = x.reshape(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


class PreactBlock(nn.Module):
    """A block whose output is an activation of a value that feature distillation may tap.

    Subclasses implement :meth:`forward_with_preact`, returning ``(output, preact)``; ``preact``
    is what RepDistiller returns for ``preact=True`` when the block ends its stage (for most
    blocks, the residual sum before the final ReLU).
    """

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the block's output and its pre-activation value."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


def run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a stage whose last block is a :class:`PreactBlock`; return ``(output, preact)``."""
    *body, last = stage
    for block in body:
        x = block(x)
    return last.forward_with_preact(x)


def staged_features(stem: Tensor, stages: Sequence[nn.Sequential], preact: bool,
                    head: Callable[[Tensor], Tensor] | None = None) -> list[Tensor]:
    """``[stem, each stage's output, pooled embedding]`` of a network whose stages end in PreactBlocks.

    With ``preact`` the stage outputs are replaced by their last block's value before the final
    activation. ``head`` maps the last stage output to the map that is pooled (e.g. ShuffleNetV2's
    1×1 conv head); by default the last stage output itself is pooled.
    """
    outputs, preacts, x = [], [], stem
    for stage in stages:
        x, x_pre = run_stage(stage, x)
        outputs.append(x)
        preacts.append(x_pre)
    embedding = F.adaptive_avg_pool2d(x if head is None else head(x), 1).flatten(1)
    return [stem, *(preacts if preact else outputs), embedding]


@torch.no_grad()
def init_conv_bn_(model: nn.Module) -> None:
    """Kaiming-normal convolutions (fan_out, ReLU gain), zero conv biases, BN weight 1 / bias 0.

    He et al., "Delving Deep into Rectifiers" (ICCV 2015). This is also the
    ``N(0, sqrt(2 / (k·k·C_out)))`` scheme that the upstream WRN, VGG and MobileNetV2 write out
    by hand: PyTorch's fan_out of a (grouped) convolution is ``C_out·k·k``. Linear layers are
    left alone; each family initialises its classifier as upstream did.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
