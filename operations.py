"""Candidate operations of the cells, with the module structure and parameter counts of DARTS and
NAS-Bench-201 (whose 'nor_conv' ops and residual reduction block are here too).

    OPS[name](C, stride, affine) -> nn.Module mapping C channels to C channels (spatial size halved when
    stride is 2).

Every nonlinearity is an nn.ReLU module and every op is built only from Conv2d, BatchNorm2d, ReLU,
MaxPool2d, AvgPool2d, nn.Identity and Zero, so that a layer-wise curvature recursion that walks leaf
modules sees every step of the computation (functional calls such as F.relu would be invisible to it).
Self-contained: copy it into any project.
"""
import torch
import torch.nn as nn


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------

class ReLUConvBN(nn.Module):
    """ReLU -> conv -> BN: the 1x1 preprocessing of DARTS cell inputs, NAS-Bench-201's convolutions."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> dilated depthwise conv -> pointwise conv -> BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked (ReLU -> depthwise conv -> pointwise conv -> BN) blocks; only the first strides."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halve the spatial size without losing every other pixel: two stride-2 1x1 convs, the second
    shifted by one pixel, each producing half of the output channels."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f'FactorizedReduce needs an even number of output channels, got {C_out}')
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class ResidualReduction(nn.Module):
    """NAS-Bench-201's block between stages: ReLU-conv3x3(stride 2)-BN, ReLU-conv3x3-BN, added to a
    shortcut that average-pools 2x2 and projects with a 1x1 conv (no BN)."""

    def __init__(self, C_in, C_out):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, stride=2, padding=0),
                                      nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x):
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class Zero(nn.Module):
    """The 'none' operation: zeros shaped like the op's output."""

    # Its forward is linear with all coefficients 0, so the squared twin of the network used by the
    # curvature recursion may simply call it.
    twin_is_self = True

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.)
        return x[:, :, ::self.stride, ::self.stride].mul(0.)


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------

OPS = {
    'none': lambda C, stride, affine: Zero(stride),
    'avg_pool_3x3': lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    'max_pool_3x3': lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    'skip_connect': lambda C, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    'sep_conv_3x3': lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    'sep_conv_5x5': lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    'sep_conv_7x7': lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    'dil_conv_3x3': lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    'dil_conv_5x5': lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    # NAS-Bench-201's convolutions: ReLU -> k x k conv -> BN.
    'nor_conv_1x1': lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine),
    'nor_conv_3x3': lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine),
    'conv_7x1_1x7': lambda C, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    ),
}
