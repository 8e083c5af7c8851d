"""Cells and networks: the BayesNAS supernet (every candidate op behind switches) and the networks
retrained from a genotype, built from one cell implementation.

A cell is a list of (op, from, to) edges. Nodes 0 and 1 are the preprocessed outputs of the two
previous cells, node j >= 2 is the sum of its incoming edges, and the cell's output is the
concatenation of its `concat` nodes.

    Supernet (switches=True): all 7 candidate ops on all edges. An edge i -> j contributes
        w0 * sum_k wk * o_k(x_i), with w0 the edge's (parent) switch and wk the op's (child) switch.
        Pruned switches take their ops out of the computation: a pruned op is not called, an edge whose
        parent or every op is pruned is not computed, nothing flows out of a node without live input,
        and a concatenated node without live input is zeros.
    Retrained network (switches=False): only the genotype's ops, summed per edge, no switches,
        DARTS's drop-path on every op that is not an identity.
    Either kind computes, per forward pass, the ops a search method's gate chooses (set_gate): ops
    dropped per training step, a sampled path, a candidate sub-network; the others are not called.

Network is the DARTS search macro-architecture with switches; NetworkCIFAR and NetworkImageNet are
DARTS's evaluation networks (same stems, reductions, auxiliary heads and parameter counts).
NB201Search and NB201Network are NAS-Bench-201's macro-architecture (one-input cells whose output is
their last node, three stages joined by residual blocks) with the supernet cell and with a cell from
an architecture string; NB201Network has the benchmark's parameter count for every cell.
ProxylessSearch and ProxylessNetwork are the proxyless space's PyramidNet of residual tree blocks
(proxyless.py), whose half trees are Cells with one input node and their leaves summed (merge='add'):
the supernet with every candidate on every tree edge, and the network of any PyramidTreeNet config.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import genotypes
import hessian
import proxyless
from operations import OPS, FactorizedReduce, ReLUConvBN, ResidualReduction, layer


# ----------------------------------------------------------------------------------------------------
# Edges and cells
# ----------------------------------------------------------------------------------------------------

def _sum(tensors):
    out = tensors[0]
    for t in tensors[1:]:
        out = out + t
    return out


def dropping(drop_prob):
    """Whether drop-path applies: a positive probability, or one held in a tensor. A compiled network
    reads its probability from a tensor, so that a new value each epoch is a new input, not a new
    graph; it always draws its masks (at probability 0 they keep everything)."""
    return isinstance(drop_prob, torch.Tensor) or drop_prob > 0


def drop_path(x, drop_prob):
    """Zero whole samples with probability drop_prob (a number or a 0-d tensor), scaling the kept
    ones by 1/(1 - drop_prob)."""
    keep = 1. - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class Edge(nn.Module):
    """The ops from node `src` to node `dst` of a cell (their outputs are summed)."""

    def __init__(self, names, src, dst, C, stride, switches):
        super().__init__()
        self.src, self.dst, self.names = src, dst, list(names)
        # Weight of the auxiliary identity (supernet, stride 1): set by SwitchNetwork.set_aux_skip.
        self.aux_skip, self.stride = 0.0, stride
        ops = []
        for name in self.names:
            # Search ops have no BN affine parameters (they would fight the switches over the scale).
            # Pooling and the identity get a BN so that every candidate's output is on the scale of
            # the convolutions': the switches alone then set the scale of what an edge adds. An
            # identity would otherwise pass on the sum of all the ops into its source node, its
            # curvature would grow with that sum, and skip connections between intermediate nodes
            # would survive for their position rather than their use.
            op = OPS[name](C, stride, not switches)
            if switches and ('pool' in name or (name == 'skip_connect' and stride == 1)):
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        if switches:
            self.switch = hessian.Switch()
            self.op_switches = nn.ModuleList(hessian.Switch() for _ in self.names)
        else:
            self.switch = self.op_switches = None

    def masks(self):
        """The masks of the edge switch and of each op switch, in that order (supernet only)."""
        return [self.switch.mask] + [sw.mask for sw in self.op_switches]

    def forward(self, x, live, drop_prob=0., scale=1.):
        """Sum of the ops with indices in `live` (a non-empty list) applied to x; the supernet's sum
        is multiplied by scale (op dropout's correction)."""
        if self.switch is not None:
            mixed = _sum([self.op_switches[k](self.ops[k](x)) for k in live])
            out = self.switch(mixed * scale if scale != 1 else mixed)
            if self.aux_skip and self.stride == 1:
                # Outside every switch and normalised like the candidates: the path the supernet
                # needs through its depth, so that no candidate is kept for providing it.
                out = out + self.aux_skip * F.batch_norm(x, None, None, training=True)
            return out
        outs = []
        for k in live:
            y = self.ops[k](x)
            if self.training and dropping(drop_prob) and not isinstance(self.ops[k], nn.Identity):
                y = drop_path(y, drop_prob)
            outs.append(y)
        return _sum(outs) * scale if scale != 1 else _sum(outs)


class Cell(nn.Module):
    """A cell built from (op, from, to) edges; see the module docstring for the two modes.

    preprocess holds one module per input node (None for an input that no edge reads); stride-2 cells
    (reduction) apply stride 2 to the edges out of the inputs. The output nodes (`concat`) are
    concatenated, or summed with merge='add' (the proxyless space's trees)."""

    def __init__(self, edges, concat, C, preprocess, reduction=False, switches=False, merge='concat'):
        super().__init__()
        self.reduction, self.switches, self.C, self.merge = reduction, switches, C, merge
        self.concat = list(concat)
        self.multiplier = len(self.concat)
        self.n_inputs = len(preprocess)
        for i, module in enumerate(preprocess):     # named preprocess0, preprocess1, as in DARTS
            setattr(self, f'preprocess{i}', module)
        ops_of = {}
        for op, src, dst in sorted(edges, key=lambda e: (e[2], e[1])):     # stable: keeps op order
            ops_of.setdefault((src, dst), []).append(op)
        # Edges in order of destination: a node is complete before any edge reads it.
        self.edges = nn.ModuleList(
            Edge(names, src, dst, C, 2 if reduction and src < self.n_inputs else 1, switches)
            for (src, dst), names in ops_of.items())
        self._live = None       # (Switch.mask_version, live ops per edge) of the supernet
        self.gate = None        # a search method's choice of ops per forward pass (set_gate)

    def _live_ops(self):
        """For each edge, the indices of the ops to compute (empty: skip the edge)."""
        if not self.switches:
            return [range(len(edge.ops)) for edge in self.edges]
        # Reading masks back from a GPU waits for all queued work: do it only after masks changed.
        if self._live is None or self._live[0] != hessian.Switch.mask_version:
            self._live = (hessian.Switch.mask_version, self._read_live_ops())
        return self._live[1]

    def _read_live_ops(self):
        # One device-to-host copy for the whole cell instead of one per switch.
        keep = (torch.stack([m.reshape(()) for edge in self.edges for m in edge.masks()]) != 0).tolist()
        live, i = [], 0
        for edge in self.edges:
            n = len(edge.ops)
            live.append([k for k in range(n) if keep[i + 1 + k]] if keep[i] else [])
            i += 1 + n
        return live

    def forward(self, *inputs, drop_prob=0.):
        states = {}
        live = self._live_ops()
        plan = [(ops, 1.) for ops in live] if self.gate is None else self.gate(self, live)
        for edge, (live, scale) in zip(self.edges, plan):
            if not live:
                continue
            if edge.src not in states:
                if edge.src < self.n_inputs:        # inputs are preprocessed only when read
                    states[edge.src] = getattr(self, f'preprocess{edge.src}')(inputs[edge.src])
                elif self.switches:                 # a node without live input: nothing flows out
                    continue
                else:                               # as the benchmark's cells do, ops read its zeros
                    states[edge.src] = self._zeros(inputs[-1])
            y = edge(states[edge.src], live, drop_prob, scale)
            states[edge.dst] = states[edge.dst] + y if edge.dst in states else y
        out = [states[j] if j in states else self._zeros(inputs[-1]) for j in self.concat]
        if len(out) == 1:
            return out[0]
        return _sum(out) if self.merge == 'add' else torch.cat(out, dim=1)

    def _zeros(self, x):
        """Zeros shaped like an intermediate node, from the last input x."""
        n, _, h, w = x.shape
        if self.reduction:      # stride-2 ops with 'same' padding give ceil(h / 2)
            h, w = (h + 1) // 2, (w + 1) // 2
        return x.new_zeros((n, self.C, h, w))


def set_gate(model, gate):
    """Give every cell of model a gate: gate(cell, live) -> one (ops, scale) per edge of the cell, where
    live lists each edge's computable ops (a supernet's unpruned ones; all ops otherwise). Only the ops
    a gate returns are computed, and an edge's sum is multiplied by its scale; an edge given no ops is
    skipped. How a search method trains or evaluates sub-networks of the one supernet: ops dropped per
    step (bayesnas.OpDropout), a sampled or fixed path, a sampled candidate. None: every live op."""
    for module in model.modules():
        if isinstance(module, Cell):
            module.gate = gate


def darts_cell(edges, concat, C_prev_prev, C_prev, C, *, reduction, reduction_prev, switches=False):
    """A DARTS cell: node 0 (the cell before the previous one, twice the size after a reduction) and
    node 1 (the previous cell) preprocessed to C channels."""
    affine = not switches
    # A retrained cell that reads only one of its inputs gets no preprocessing for the other: its
    # weights would never take part (counted as parameters, and DDP would wait for their gradients).
    # The supernet reads both until pruning, so it keeps both.
    read = {src for _, src, _ in edges}
    pre0 = pre1 = None
    if switches or 0 in read:
        pre0 = FactorizedReduce(C_prev_prev, C, affine) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine)
    if switches or 1 in read:
        pre1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine)
    return Cell(edges, concat, C, [pre0, pre1], reduction, switches)


# ----------------------------------------------------------------------------------------------------
# Supernet
# ----------------------------------------------------------------------------------------------------

def reduction_layers(layers):
    """The indices of DARTS's two reduction cells, at 1/3 and 2/3 of the depth."""
    return layers // 3, 2 * layers // 3


def stack_cells(layers, C, C_stem, make_cell, *, reduction_prev=False):
    """DARTS's stack of `layers` cells, with reductions (and doubled channels) at 1/3 and 2/3 of the
    depth. make_cell(reduction, C_prev_prev, C_prev, C_cell, reduction_prev) builds one cell;
    reduction_prev: the stem before the first cell reduces (ImageNet's). Returns the cells and the
    channels of each cell's output."""
    cells, channels = nn.ModuleList(), []
    C_prev_prev, C_prev, C_curr = C_stem, C_stem, C
    for i in range(layers):
        reduction = i in reduction_layers(layers)
        if reduction:
            C_curr *= 2
        cell = make_cell(reduction, C_prev_prev, C_prev, C_curr, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
        channels.append(C_prev)
    return cells, channels


class SwitchNetwork(nn.Module):
    """What every supernet shares: its switches, their groups and couplings, and the HARD prior over
    them. A subclass sets self.cells (the cells in order, each with .edges and .reduction) and self.tie
    (True: one switch group per position, shared by all cells of a type; False: one per cell)."""

    def switch_info(self):
        """One dict per Switch, in named_modules order: name, cell, cell_type, src, dst, op (None for an
        edge switch) and key, the group key shared by the tied positions."""
        where = {}
        for i, (cell, (cell_type, prefix)) in enumerate(zip(self.cells, self.cell_names())):
            for edge in cell.edges:
                edge_key = f'{prefix}/{edge.src}->{edge.dst}'
                base = dict(cell=i, cell_type=cell_type, src=edge.src, dst=edge.dst)
                where[edge.switch] = dict(base, op=None, key=edge_key)
                for name, sw in zip(edge.names, edge.op_switches):
                    where[sw] = dict(base, op=name, key=f'{edge_key}/{name}')
        return [dict(name=name, **where[m]) for name, m in self.named_modules() if isinstance(m, hessian.Switch)]

    def cell_names(self):
        """(cell_type, group key prefix) of each cell: a tied network's cells of one type share groups."""
        types = ['reduce' if cell.reduction else 'normal' for cell in self.cells]
        return [(t, t if self.tie else f'cell{i}') for i, t in enumerate(types)]

    def couplings(self):
        """(parent, inflow) between group keys: parent maps each op key to its edge key; inflow maps
        each edge key i -> j to the keys of the edges entering node i ([] for the input nodes)."""
        parent, into, source = {}, {}, {}
        for d in self.switch_info():
            if d['op'] is None:
                prefix = d['key'].split('/')[0]
                source[d['key']] = (prefix, d['src'])
                into.setdefault((prefix, d['dst']), {})[d['key']] = None      # an ordered set
            else:
                parent[d['key']] = d['key'].rsplit('/', 1)[0]
        inflow = {key: list(into.get(src, ())) for key, src in source.items()}
        return parent, inflow

    def build_prior(self, lam_origin, lam_child):
        """The HARD prior over this network's switches, lam_origin for edge switches and lam_child for
        op switches, coupled as couplings() says."""
        for label, lam in (('lam_origin', lam_origin), ('lam_child', lam_child)):
            if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
                raise ValueError(f'{label} must be a positive number, got {lam!r}')
        group_of = {d['name']: d['key'] for d in self.switch_info()}
        parent, inflow = self.couplings()
        lam = {key: lam_child if key in parent else lam_origin for key in group_of.values()}
        return hessian.HardPrior(self, lam=lam.__getitem__, group_of=group_of.get, parent=parent, inflow=inflow)

    def set_aux_skip(self, beta):
        """Weight every stride-1 edge's auxiliary identity by beta (0: none; search.py --aux_skip)."""
        for cell in self.cells:
            for edge in cell.edges:
                edge.aux_skip = beta

    def switch_parameters(self):
        return hessian.switch_parameters(self)

    def weight_parameters(self):
        return hessian.weight_parameters(self)


class Network(SwitchNetwork):
    """The DARTS search network with a switch on every edge and every op (returns logits)."""

    STEPS = 4           # intermediate nodes of a cell, all of them concatenated into its output

    def __init__(self, C=16, num_classes=10, layers=8, tie=True):
        super().__init__()
        self.tie = tie
        C_stem = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        nodes = range(2, self.STEPS + 2)
        edges = [(op, i, j) for j in nodes for i in range(j) for op in genotypes.CANDIDATES]
        concat = list(nodes)

        def make_cell(reduction, C_prev_prev, C_prev, C_cell, reduction_prev):
            return darts_cell(edges, concat, C_prev_prev, C_prev, C_cell, reduction=reduction,
                              reduction_prev=reduction_prev, switches=True)

        self.cells, channels = stack_cells(layers, C, C_stem, make_cell)
        C_prev = channels[-1]
        # Every op of every edge is summed with its switch at 1, so the last cell's output is many
        # times larger than one op's; without this BatchNorm the logits start in the tens and SGD at
        # the paper's learning rate diverges. (Each cell's inputs are normalised by its preprocessing.)
        self.head_bn = nn.BatchNorm2d(C_prev)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(self.head_bn(s1)).flatten(1))


# ----------------------------------------------------------------------------------------------------
# Networks retrained from a genotype (DARTS's evaluation networks)
# ----------------------------------------------------------------------------------------------------

class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the 8x8 feature map after the second reduction."""

    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),     # its input is also the next cells' input: do not overwrite it
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),     # 8x8 -> 2x2
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """Auxiliary classifier on the 7x7 feature map after the second reduction (as in DARTS, without a
    BatchNorm after its last convolution)."""

    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),     # 7x7 -> 2x2
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class _EvalNetwork(nn.Module):
    """The cell stack shared by NetworkCIFAR and NetworkImageNet; subclasses provide the stem."""

    def _build_cells(self, C, C_stem, num_classes, layers, auxiliary, genotype, *, reduction_prev, aux_head):
        genotypes.validate(genotype)
        normal = genotypes.cell_edges(genotype.normal), list(genotype.normal_concat)
        reduce = genotypes.cell_edges(genotype.reduce), list(genotype.reduce_concat)
        self._layers, self._auxiliary = layers, auxiliary

        def make_cell(reduction, C_prev_prev, C_prev, C_cell, reduction_prev):
            edges, concat = reduce if reduction else normal
            return darts_cell(edges, concat, C_prev_prev, C_prev, C_cell, reduction=reduction,
                              reduction_prev=reduction_prev)

        self.cells, channels = stack_cells(layers, C, C_stem, make_cell, reduction_prev=reduction_prev)
        C_prev = channels[-1]
        if auxiliary:       # after the second reduction cell, as DARTS
            self.auxiliary_head = aux_head(channels[reduction_layers(layers)[1]], num_classes)
        # DARTS pools ImageNet's 7x7 map with AvgPool2d(7): the same thing there, and any size works.
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def _forward_cells(self, s0, s1):
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob=self.drop_path_prob)
            if i == reduction_layers(self._layers)[1] and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux


class NetworkCIFAR(_EvalNetwork):
    """DARTS's CIFAR network: 3x3 conv stem to 3C channels, `layers` cells, reductions at 1/3 and 2/3
    of the depth; forward returns (logits, auxiliary logits or None)."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype, drop_path_prob=0.0):
        super().__init__()
        C_stem = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        self._build_cells(C, C_stem, num_classes, layers, auxiliary, genotype, reduction_prev=False,
                          aux_head=AuxiliaryHeadCIFAR)
        self.drop_path_prob = drop_path_prob

    def forward(self, x):
        s = self.stem(x)
        return self._forward_cells(s, s)


class NetworkImageNet(_EvalNetwork):
    """DARTS's ImageNet network: two stride-2 stems (224 -> 56 -> 28), then cells as NetworkCIFAR."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype, drop_path_prob=0.0):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),     # stem0's output is also the first cell's node 0
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # The first cell's node 0 (stem0) is twice the size of its node 1 (stem1).
        self._build_cells(C, C, num_classes, layers, auxiliary, genotype, reduction_prev=True,
                          aux_head=AuxiliaryHeadImageNet)
        self.drop_path_prob = drop_path_prob

    def forward(self, x):
        s0 = self.stem0(x)
        return self._forward_cells(s0, self.stem1(s0))


# ----------------------------------------------------------------------------------------------------
# NAS-Bench-201's network, as supernet and as the network of one architecture string
# ----------------------------------------------------------------------------------------------------

NB201_OUTPUT = [genotypes.NB201_NODES - 1]     # a cell's output is its last node


def nb201_layers(C, N, make_cell):
    """Three stages of N cells at C, 2C, 4C channels, a residual reduction block before the second
    and third; make_cell(C) builds one cell. Returns the layers and the last stage's channels."""
    layers = nn.ModuleList()
    for stage in range(3):
        if stage:
            layers.append(ResidualReduction(C, 2 * C))
            C *= 2
        layers.extend(make_cell(C) for _ in range(N))
    return layers, C


class _NB201(nn.Module):
    """The benchmark's macro-architecture around cells of the given edges: stem conv3x3 to C and BN,
    nb201_layers, then BN, ReLU, global average pool and a linear classifier."""

    def __init__(self, C, N, num_classes, edges, switches):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.layers, C_last = nb201_layers(
            C, N, lambda C_cell: Cell(edges, NB201_OUTPUT, C_cell, [nn.Identity()], switches=switches))
        self.cells = [m for m in self.layers if isinstance(m, Cell)]      # a view, not a submodule
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_last), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_last, num_classes)

    def logits(self, x, drop_prob=0.):
        x = self.stem(x)
        for module in self.layers:
            x = module(x, drop_prob=drop_prob) if isinstance(module, Cell) else module(x)
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))


class NB201Search(SwitchNetwork, _NB201):
    """The NAS-Bench-201 supernet: every candidate op on all six edges of every cell, behind switches
    (returns logits). The 15 cells are tied by default, as they are one cell in the benchmark."""

    def __init__(self, C=16, N=5, num_classes=10, tie=True):
        edges = [(op, i, j) for j in range(1, genotypes.NB201_NODES) for i in range(j)
                 for op in genotypes.NB201_CANDIDATES]
        super().__init__(C, N, num_classes, edges, switches=True)
        self.tie = tie

    def forward(self, x):
        return self.logits(x)


class NB201Network(_NB201):
    """The network of a NAS-Bench-201 architecture string (C = 16, N = 5 in the benchmark); forward
    returns (logits, None) as the DARTS networks do (there is no auxiliary head)."""

    def __init__(self, C, N, num_classes, arch, drop_path_prob=0.0):
        super().__init__(C, N, num_classes, genotypes.nb201_cell(arch), switches=False)
        self.drop_path_prob = drop_path_prob

    def forward(self, x):
        return self.logits(x, self.drop_path_prob), None


# ----------------------------------------------------------------------------------------------------
# The proxyless space: a PyramidNet of residual tree blocks, as supernet and from a network config
# ----------------------------------------------------------------------------------------------------

class TreeBlock(nn.Module):
    """A ResidualTreeBlock (proxyless.py): shortcut(x) zero-padded in channels + final_bn(out_bottle(
    cell(in_bottle(x)))). The cell is the root edge, a split of its channels into two halves, and a
    tree Cell per half whose output is added to the half through a BatchNorm (branch BN)."""

    def __init__(self, parts, halves):
        super().__init__()
        self.shortcut, self.in_bottle = layer(parts['shortcut']), layer(parts['in_bottle'])
        self.root = layer(parts['root'])
        self.halves = nn.ModuleList(halves)
        C = parts['width']
        self.branch_bns = nn.ModuleList(nn.BatchNorm2d(C) for _ in halves) if parts['branch_bn'] else None
        self.out_bottle = layer(parts['out_bottle'])
        self.final_bn = nn.BatchNorm2d(parts['channels']) if parts['final_bn'] else nn.Identity()
        self.C = C

    def forward(self, x, drop_prob=0.):
        shortcut = self.shortcut(x)
        parts = torch.split(self.root(self.in_bottle(x)), self.C, dim=1)
        outs = []
        for k, (half, h) in enumerate(zip(self.halves, parts)):
            y = half(h)
            outs.append(h + self.branch_bns[k](y) if self.branch_bns is not None else y)
        y = self.final_bn(self.out_bottle(_sum(outs)))
        if self.training and dropping(drop_prob):
            y = drop_path(y, drop_prob)
        n, c, hgt, wid = y.shape
        if shortcut.shape[1] < c:
            shortcut = torch.cat([shortcut, shortcut.new_zeros(n, c - shortcut.shape[1], hgt, wid)], dim=1)
        return shortcut + y


class _PyramidTreeNet(nn.Module):
    """The network of parsed config units (proxyless.parse); make_half(edges, leaves, C) builds the
    Cell of one half. Drop-path, when asked for, drops whole residual branches of blocks, with a
    probability that grows linearly with depth up to drop_prob."""

    def __init__(self, units, make_half):
        super().__init__()
        blocks = []
        for kind, unit in units[:-1]:
            if kind == 'layers':
                blocks.append(nn.Sequential(*(layer(cfg) for cfg in unit)))
            else:
                halves = [make_half(edges, leaves, unit['width']) for edges, leaves in unit['halves']]
                blocks.append(TreeBlock(unit, halves))
        self.blocks = nn.ModuleList(blocks)
        self.classifier = layer(units[-1][1])
        self.trees = [b for b in self.blocks if isinstance(b, TreeBlock)]     # views, not submodules
        self.cells = [half for b in self.trees for half in b.halves]

    def logits(self, x, drop_prob=0.):
        depth = 0
        for block in self.blocks:
            if isinstance(block, TreeBlock):
                depth += 1
                x = block(x, drop_prob * depth / len(self.trees))
            else:
                x = block(x)
        return self.classifier(x.flatten(1))


def _tree_cell(edges, leaves, C, switches):
    # The trees' ZeroLayer edges compute nothing: the ops after them read zeros (Cell's rule for a
    # node without input).
    return Cell([e for e in edges if e[0] != 'none'], leaves, C, [nn.Identity()], switches=switches, merge='add')


class ProxylessSearch(SwitchNetwork, _PyramidTreeNet):
    """The proxyless supernet: the PyramidNet of tree blocks (N per stage, widths from C by alpha) with
    every candidate op on every edge of every half tree, behind switches (returns logits). Untied
    (default, as in the published network) every block has its own cells; tied, the blocks of a stage
    share the switch groups of each half."""

    def __init__(self, C=16, N=18, num_classes=10, tie=False, alpha=84):
        config = proxyless.network_config(C, alpha, N, [[proxyless.template()] * 2] * (3 * N), num_classes)
        edges = [(op, s, d) for s, d in proxyless.TEMPLATE for op in proxyless.CANDIDATES]
        super().__init__(proxyless.parse(config), lambda _, leaves, C_half: _tree_cell(edges, leaves, C_half, True))
        self.tie, self.N = tie, N

    def cell_names(self):
        names = [proxyless.cell_name(*divmod(i, 2), self.N, self.tie) for i in range(len(self.cells))]
        return [(name, name) for name in names]

    def forward(self, x):
        return self.logits(x)


class ProxylessNetwork(_PyramidTreeNet):
    """The network of a PyramidTreeNet config (a dict in the format proxyless.py reads); forward
    returns (logits, None) as the other retrained networks do."""

    def __init__(self, config, drop_path_prob=0.0):
        super().__init__(proxyless.parse(config), lambda edges, leaves, C: _tree_cell(edges, leaves, C, False))
        self.drop_path_prob = drop_path_prob

    def forward(self, x):
        return self.logits(x, self.drop_path_prob), None
