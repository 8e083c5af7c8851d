"""Candidate operations of the cells, with the module structure and parameter counts of DARTS,
NAS-Bench-201 (its 'nor_conv' ops and residual reduction block) and the proxyless space (its
depthwise-separable convs, and `layer`, the module of any layer of a PyramidTreeNet config).

    OPS[name](C, stride, affine) -> nn.Module mapping C channels to C channels (spatial size halved when
    stride is 2).

Every nonlinearity is an nn.ReLU module and every candidate op is built only from Conv2d, BatchNorm2d, ReLU,
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
# The layers of PyramidTreeNet configs (the proxyless space; proxyless.py reads and checks the format)
# ----------------------------------------------------------------------------------------------------

class ChannelShuffle(nn.Module):
    """Interleave the channels of `groups` groups, so that the next group conv mixes them."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def depth_conv(C_in, C_out, kernel_size, stride=1, dilation=1, groups=1, bias=False):
    """A depthwise k x k conv ('same' padding) followed by a pointwise conv."""
    return [nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=dilation * (kernel_size // 2),
                      dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, groups=groups, bias=bias)]


def layer(cfg, affine=True):
    """The module of a layer config: its weight (conv, depthwise-separable conv, pooling, identity,
    linear), BatchNorm and ReLU in the config's ops_order; BatchNorm normalises the weight's input
    when it comes first ('bn_act_weight', pre-activation) and its output otherwise."""
    name = cfg['name']
    if name == 'ZeroLayer':
        return Zero(cfg['stride'])
    if name == 'LinearLayer':
        C_in, C_out = cfg['in_features'], cfg['out_features']
        weight = [nn.Linear(C_in, C_out, bias=cfg['bias'])]
        norm = nn.BatchNorm1d
    else:
        C_in, C_out = cfg['in_channels'], cfg['out_channels']
        norm = nn.BatchNorm2d
        k, stride = cfg.get('kernel_size'), cfg.get('stride')
        if name == 'ConvLayer':
            weight = [nn.Conv2d(C_in, C_out, k, stride=stride, padding=cfg['dilation'] * (k // 2),
                                dilation=cfg['dilation'], groups=cfg['groups'], bias=cfg['bias'])]
        elif name == 'DepthConvLayer':
            weight = depth_conv(C_in, C_out, k, stride, cfg['dilation'], cfg['groups'], cfg['bias'])
        elif name == 'PoolingLayer':
            padding = k // 2 if stride == 1 else 0
            weight = [nn.AvgPool2d(k, stride, padding, count_include_pad=False) if cfg['pool_type'] == 'avg'
                      else nn.MaxPool2d(k, stride, padding)]
        else:
            weight = []
        if cfg.get('has_shuffle') and cfg['groups'] > 1:
            weight.append(ChannelShuffle(cfg['groups']))
    if cfg['dropout_rate'] > 0:
        weight.insert(0, nn.Dropout(cfg['dropout_rate']))
    order = cfg['ops_order'].split('_')
    parts = []
    for part in order:
        if part == 'bn' and cfg['use_bn']:
            parts.append(norm(C_in if order.index('bn') < order.index('weight') else C_out, affine=affine))
        elif part == 'act' and cfg['act_func'] == 'relu':
            parts.append(nn.ReLU(inplace=False))       # its input may be read by another branch
        elif part == 'weight':
            parts += weight
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts) if parts else nn.Identity()


class PreDepthConv(nn.Sequential):
    """BN -> ReLU -> depthwise-separable conv: the proxyless space's convolutions (DepthConvLayer
    with ops_order bn_act_weight)."""

    def __init__(self, C, kernel_size, dilation, affine=True):
        super().__init__(nn.BatchNorm2d(C, affine=affine), nn.ReLU(inplace=False),
                         *depth_conv(C, C, kernel_size, dilation=dilation))


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
    # The proxyless space's depthwise-separable convolutions (stride 1 only: its cells do not reduce).
    'dw_conv_3x3': lambda C, stride, affine: PreDepthConv(C, 3, 1, affine),
    'dw_conv_5x5': lambda C, stride, affine: PreDepthConv(C, 5, 1, affine),
    'dw_conv_7x7': lambda C, stride, affine: PreDepthConv(C, 7, 1, affine),
    'dil_dw_conv_3x3': lambda C, stride, affine: PreDepthConv(C, 3, 2, affine),
}
