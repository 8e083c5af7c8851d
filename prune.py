"""Structured pruning of plain CNN chains with switches: place them, fold them, cut what they prune.

A chain is one flat nn.Sequential of Conv2d (optionally followed by BatchNorm2d), Linear (optionally
followed by BatchNorm1d), nn.ReLU modules, pooling, Dropout, Identity and nn.Flatten layers; chain()
turns a torchvision-style network (`features`, optional `avgpool`, `classifier`) into one. Every
prunable unit group - the output filters of a conv layer, the output neurons of a hidden linear
layer, and optionally the flattened inputs of the first fully connected layer - gets a hessian.Switch
(add_switches). Whatever decides which entries to prune (a prior, or weight norms: magnitude_prune)
prunes them through Switch.prune_. fold_switches then moves the switches' values into the weights, and
physical_prune exports a smaller chain without switches whose outputs equal the switched chain's: a
pruned filter takes its BatchNorm channel and the matching input channels of the next layer with it,
so the result is a physically smaller network, not a network full of zeros.

    seq = add_switches(plain, flat_switch=True)     # shares its layers with plain
    ...                                             # train; prune entries with sw.prune_(where)
    small = physical_prune(seq)                     # an ordinary nn.Sequential
    layer_units(seq)                                # [LayerUnits(label, total, live)] per switch

Needs torch and hessian.Switch only, so that it can be copied into another project with hessian.py.
"""
import copy
import math
from typing import NamedTuple

import torch
import torch.nn as nn

from hessian import Switch


# ----------------------------------------------------------------------------------------------------
# Switches on the unit groups of a chain
# ----------------------------------------------------------------------------------------------------

UNITS = (nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def chain(net):
    """A torchvision-style CNN (`features`, optional `avgpool`, `classifier`) as one flat chain."""
    parts = list(net.features) + ([net.avgpool] if hasattr(net, 'avgpool') else [])
    return nn.Sequential(*parts, nn.Flatten(), *net.classifier)


def add_switches(plain, flat_switch=False):
    """The chain with a Switch after every unit layer but the output layer (after its BatchNorm when
    it has one) and, with flat_switch, one after each Flatten. The layers are shared with `plain`."""
    layers = list(plain)
    output = [m for m in layers if isinstance(m, UNITS)][-1]
    out = []
    for i, m in enumerate(layers):
        out.append(m)
        if isinstance(m, nn.Flatten) and flat_switch:
            out.append(Switch((_next_unit(layers, i).in_features,)))
        unit = _unit_ending_at(layers, i)
        if unit is not None and unit is not output:
            out.append(Switch((unit.out_channels, 1, 1) if isinstance(unit, nn.Conv2d) else (unit.out_features,)))
    return nn.Sequential(*out)


def _unit_ending_at(layers, i):
    """The Conv2d/Linear whose output is complete after layer i: layer i itself, or the unit before it
    when layer i is that unit's BatchNorm."""
    m = layers[i]
    if isinstance(m, UNITS):
        followed_by_norm = i + 1 < len(layers) and isinstance(layers[i + 1], NORMS)
        return None if followed_by_norm else m
    if isinstance(m, NORMS) and i > 0 and isinstance(layers[i - 1], UNITS):
        return layers[i - 1]
    return None


def _next_unit(layers, i):
    """The first Conv2d/Linear after position i."""
    for m in layers[i + 1:]:
        if isinstance(m, UNITS):
            return m
    raise ValueError(f'no Conv2d or Linear after layer {i} ({type(layers[i]).__name__})')


def _owner(layers, i):
    """For the Switch at position i: the Conv2d/Linear whose output units it scales (directly or
    after that unit's BatchNorm), or None when it scales the inputs of the next unit layer."""
    j = i - 1
    if j >= 0 and isinstance(layers[j], NORMS):
        j -= 1
    return layers[j] if j >= 0 and isinstance(layers[j], UNITS) else None


def switch_layers(seq):
    """One row per Switch of a switched chain, in order: dict(label, index, switch, owner, consumer).

    owner is the unit layer whose outputs the switch scales (None for a switch on inputs); consumer is
    the next unit layer, which reads them. Labels: conv1, conv2, ... and fc1, fc2, ... after the owner;
    'in' for the network's input, 'flat' for flattened features."""
    layers = list(seq)
    rows, counts = [], {'conv': 0, 'fc': 0}
    for i, m in enumerate(layers):
        if isinstance(m, UNITS):
            counts[_kind(m)] += 1
        if not isinstance(m, Switch):
            continue
        owner = _owner(layers, i)
        if owner is None:
            label = 'flat' if any(counts.values()) else 'in'
        else:
            label = _kind(owner) + str(counts[_kind(owner)])
        rows.append(dict(label=label, index=i, switch=m, owner=owner, consumer=_next_unit(layers, i)))
    return rows


def _kind(unit):
    return 'conv' if isinstance(unit, nn.Conv2d) else 'fc'


def alive_units(seq):
    """{switch: bool per unit}: unpruned and, for a switch on flattened features, fed by a channel that
    is still alive. A pruned filter silences all H*W features it owns after a Flatten."""
    layers = list(seq)
    alive, keep = {}, None          # keep: bool per entry of the current tensor (None: all alive)
    for i, m in enumerate(layers):
        if isinstance(m, UNITS):
            keep = None
        elif isinstance(m, Switch):
            own = m.mask.flatten() != 0
            keep = own if keep is None else keep & own
            alive[m] = keep
        elif isinstance(m, nn.Flatten) and keep is not None:
            keep = keep.repeat_interleave(_next_unit(layers, i).in_features // len(keep))
    return alive


class LayerUnits(NamedTuple):
    label: str      # as switch_layers labels it
    total: int      # units of the dense layer
    live: int       # units alive_units counts alive


def layer_units(seq):
    """[LayerUnits] per switch layer, in order."""
    alive = alive_units(seq)
    return [LayerUnits(row['label'], row['switch'].s.numel(), int(alive[row['switch']].sum()))
            for row in switch_layers(seq)]


def units_string(units, which):
    """'784-300-100': one field of each LayerUnits, by name ('total', 'live') or by position."""
    index = LayerUnits._fields.index(which) if isinstance(which, str) else which
    return '-'.join(str(u[index]) for u in units)


# ----------------------------------------------------------------------------------------------------
# Physical pruning
# ----------------------------------------------------------------------------------------------------
# Walk the chain once, tracking which of the original entries of dim 1 the current tensor still holds.
# A unit layer keeps the rows of its unpruned units and the columns of the entries still present; its
# switch's values are folded into its weights (or into its BatchNorm's affine parameters, since a
# switch after BatchNorm scales the normalised output). A switch on inputs becomes a Select of the
# surviving entries, its values folded into the columns of the next unit layer.

PER_CHANNEL = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)


class Select(nn.Module):
    """Keeps the entries `index` of dim 1: the input pixels or flattened features that survive."""

    def __init__(self, index):
        super().__init__()
        self.register_buffer('index', index)

    def forward(self, x):
        return x.index_select(1, self.index)

    def extra_repr(self):
        return f'{len(self.index)} entries'


def physical_prune(seq):
    """A smaller chain without switches whose outputs equal those of the switched chain `seq`."""
    layers = list(seq)
    out = []
    keep = None     # original positions of the current tensor's entries along dim 1 (None: all)
    width = None    # original size of dim 1 of the current tensor
    scale = None    # per-entry factor of the current tensor still to fold into the next unit layer
    with torch.no_grad():
        for i, m in enumerate(layers):
            if isinstance(m, UNITS):
                sw, norm = _own_switch(layers, i)
                rows = sw.mask.flatten().nonzero().flatten() if sw is not None else None
                factor = sw.value().flatten()[rows] if sw is not None and norm is None else None
                out.append(_slice_unit(m, rows, keep, scale, factor))
                keep, scale = rows, None
                width = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            elif isinstance(m, NORMS):
                sw = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], Switch) else None
                owned = sw is not None and _owner(layers, i + 1) is not None
                factor = sw.value().flatten()[keep] if owned else None
                out.append(_slice_norm(m, keep, factor, scale))
            elif isinstance(m, Switch):
                if _owner(layers, i) is not None:
                    continue        # folded into its unit layer or BatchNorm
                present = keep if keep is not None else torch.arange(m.s.numel(), device=m.s.device)
                factor = m.value().flatten()[present]
                scale = factor if scale is None else scale * factor
                on = (m.mask.flatten()[present] != 0).nonzero().flatten()
                if len(on) < len(present):
                    out.append(Select(on))
                keep, scale = present[on], scale[on]
            elif isinstance(m, nn.Flatten):
                in_features = _next_unit(layers, i).in_features
                if keep is not None:
                    # Channel c owns the H*W consecutive features c*H*W .. (c+1)*H*W - 1.
                    hw = in_features // width
                    keep = (keep[:, None] * hw + torch.arange(hw, device=keep.device)).flatten()
                    scale = scale.repeat_interleave(hw) if scale is not None else None
                width = in_features
                out.append(copy.deepcopy(m))
            elif isinstance(m, PER_CHANNEL):
                if scale is not None and not isinstance(m, (nn.Dropout, nn.Identity)):
                    raise ValueError(f'a switch on inputs must feed a Conv2d or Linear directly, not '
                                     f'{type(m).__name__} (layer {i})')
                out.append(copy.deepcopy(m))
            else:
                raise ValueError(f'physical_prune: unsupported layer {type(m).__name__} (layer {i})')
    return nn.Sequential(*out).train(seq.training)


def _own_switch(layers, i):
    """(switch, batchnorm) that follow the unit layer at i; either may be None."""
    j, norm = i + 1, None
    if j < len(layers) and isinstance(layers[j], NORMS):
        norm, j = layers[j], j + 1
    if j < len(layers) and isinstance(layers[j], Switch):
        return layers[j], norm
    return None, norm


def _slice_unit(m, rows, cols, col_scale, row_scale):
    """Copy of a Conv2d/Linear keeping output `rows` and input `cols` (None: all), with its input
    entries multiplied by col_scale and its outputs by row_scale (None: 1)."""
    if isinstance(m, nn.Conv2d) and m.groups != 1:
        raise ValueError('physical_prune: grouped convolutions are not supported')
    w, b = m.weight, m.bias
    if rows is not None:
        w, b = w[rows], (b[rows] if b is not None else None)
    if cols is not None:
        w = w[:, cols]
    expand = (1,) * (w.dim() - 2)
    if col_scale is not None:
        w = w * col_scale.view(1, -1, *expand)
    if row_scale is not None:
        w = w * row_scale.view(-1, 1, *expand)
        b = b * row_scale if b is not None else None
    new = copy.deepcopy(m)               # same configuration: stride, padding, dilation, ...
    new.weight = nn.Parameter(w.detach().clone(), requires_grad=m.weight.requires_grad)
    if b is not None:
        new.bias = nn.Parameter(b.detach().clone(), requires_grad=m.bias.requires_grad)
    if isinstance(m, nn.Conv2d):
        new.out_channels, new.in_channels = w.shape[0], w.shape[1]
    else:
        new.out_features, new.in_features = w.shape[0], w.shape[1]
    return new


def _slice_norm(m, keep, factor, scale):
    """Copy of a BatchNorm keeping channels `keep` (None: all), its output multiplied by `factor`."""
    if scale is not None:
        raise ValueError('physical_prune: a switch on inputs must feed a Conv2d or Linear, not BatchNorm')
    new = copy.deepcopy(m)
    if keep is not None:
        for name in ('weight', 'bias'):
            if getattr(m, name) is not None:
                setattr(new, name, nn.Parameter(getattr(m, name)[keep].detach().clone()))
        for name in ('running_mean', 'running_var'):
            if getattr(m, name) is not None:
                setattr(new, name, getattr(m, name)[keep].clone())
        new.num_features = len(keep)
    if factor is not None:
        if not m.affine:
            raise ValueError('physical_prune: a switch after a BatchNorm without affine parameters')
        # s * (x_hat * weight + bias) = x_hat * (s * weight) + s * bias, in train and eval mode alike.
        new.weight.mul_(factor)
        new.bias.mul_(factor)
    return new


@torch.no_grad()
def fold_switches(seq):
    """Fold every switch's values into the layer it scales and set the switch to its mask (1 for a
    live unit, 0 for a pruned one); the chain computes the same function. Fine-tuning then trains the
    network that physical_prune exports: a switch s scales its unit's learning rate by s^2 in function
    space, so a unit whose switch had shrunk to 0.05 would otherwise learn 400 times slower than its
    neighbours. A switch on a unit's outputs folds into the unit's rows (or into its BatchNorm's affine
    parameters), a switch on inputs into the columns of the layer that reads them."""
    layers = list(seq)
    for row in switch_layers(seq):
        sw = row['switch']
        value = sw.value().flatten()
        if row['owner'] is None:
            consumer = row['consumer']
            consumer.weight.mul_(value.view(1, -1, *(1,) * (consumer.weight.dim() - 2)))
        else:
            before = layers[row['index'] - 1]
            target = before if isinstance(before, NORMS) else row['owner']
            if isinstance(target, NORMS) and not target.affine:
                raise ValueError('fold_switches: a switch after a BatchNorm without affine parameters')
            target.weight.mul_(value.view(-1, *(1,) * (target.weight.dim() - 1)))
            if target.bias is not None:
                target.bias.mul_(value)
        sw.s.copy_(sw.mask)


def pruned_masks(seq):
    """The switch masks of a chain (bool per entry, one tensor per switch): with the chain's
    definition, all that apply_masks needs to rebuild the pruned architecture."""
    return [row['switch'].mask.flatten().bool().cpu() for row in switch_layers(seq)]


def apply_masks(seq, masks):
    """Prune the switches of a fresh switched chain as pruned_masks(seq) recorded them; physical_prune
    then gives the architecture of the saved network."""
    rows = switch_layers(seq)
    if len(rows) != len(masks):
        raise ValueError(f'{len(masks)} masks for {len(rows)} switch layers')
    for row, mask in zip(rows, masks):
        row['switch'].prune_(~mask.bool().reshape(row['switch'].s.shape))


# ----------------------------------------------------------------------------------------------------
# Magnitude pruning: the baseline that prunes by weight norm
# ----------------------------------------------------------------------------------------------------

def unit_norms(row):
    """L2 norm of each unit's weights: the incoming weights of a filter or neuron (its slice of the
    owner), or for a switch on inputs the weights that read the input (its column of the consumer)."""
    if row['owner'] is not None:
        return row['owner'].weight.detach().flatten(1).norm(dim=1)
    return row['consumer'].weight.detach().transpose(0, 1).flatten(1).norm(dim=1)


def magnitude_prune(seq, targets):
    """Prune every switch layer of `seq` down to targets[k] live units, dropping the units of smallest
    weight norm. Layers are taken in order, because pruned filters also silence flattened features."""
    for row, target in zip(switch_layers(seq), targets):
        sw = row['switch']
        alive = alive_units(seq)[sw]
        excess = int(alive.sum()) - int(target)
        if excess <= 0:
            continue
        norms = unit_norms(row).masked_fill(~alive.to(sw.s.device), math.inf)
        drop = torch.zeros(sw.s.numel(), dtype=torch.bool, device=sw.s.device)
        drop[norms.argsort(stable=True)[:excess]] = True
        sw.prune_(drop.reshape(sw.s.shape))
