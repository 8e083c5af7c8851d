"""PGNAS (Zhou, Sun, Luo, Zha, Zeng, AAAI 2020): posterior-guided architecture sampling.

The architecture and the weights are one random variable: every kernel slice W[:, k] of a gated
convolution is multiplied by a binary variable that keeps or drops input channel k, and the posterior
over this hybrid representation is approximated by concrete (variational) dropout on the supernet:
  1. a supernet with every candidate op on every edge, all summed (no architecture logits), each
     gated op with its own drop probability p, stored as a logit;
  2. single-level SGD on the training split of cross-entropy plus the regulariser (the KL term)
        sum over gated convs of (l^2 / N) (1 - p) ||W||^2 + (K / N) (p log p + (1 - p) log(1 - p)),
     K the gate's Bernoulli variables (input channels), N the training-set size times a factor for
     augmentation (the paper: 10); the L2 part is coupled to p (a constant L2 loses ~3 points in the
     paper) and replaces weight decay on those convs. In training the mask is relaxed (Gumbel-sigmoid,
     temperature 0.2, one draw per sample and channel) and the input is NOT rescaled by 1 / (1 - p);
  3. C hard candidates, each channel dropped with its p (one draw per candidate, shared by the whole
     batch), scored with the shared weights, without fine-tuning, on validation batches; the best one
     defines the architecture.
The paper's control (Bender et al.): the same supernet with every gate at a fixed rate, not learned,
sampled the same way (PGNAS(args with pgnas_fixed_rate=p)).

Where this departs from the paper, and why:
  * parameter-free ops (pools, the stride-1 identity) have no kernel to gate, and the paper cannot
    select them; NAS-Bench-201 and DARTS cells need them. By default (free_ops='carrier') each gets the
    carrier its authors suggest: a 1x1 conv after the op, initialised to the identity, whose input
    channels are gated and whose weights take the coupled L2 term like any gated conv, so that keeping
    a parameter-free op's gate meets the pressure a conv's does. free_ops='gate' instead gives it one op-level
    concrete gate (the whole op kept or dropped, the entropy of that one variable, no L2 term): with
    nothing pulling its p up, such an op is kept where convs are dropped. 'none' is not in the
    supernet: it adds zeros and has nothing to gate;
  * a conv op is gated on its input channels, i.e. on the input channels of its first convolution(s)
    (the depthwise conv of SepConv / DilConv, both convs of FactorizedReduce); the convs inside an op
    are not gated and, with the rest of the network (stem, preprocessing, BN, classifier), take the
    harness's plain weight decay. The paper gates every convolution of its ResNet supernets;
  * one gate per (cell, edge, op): the paper's one p per (layer, kernel-size branch), a cell's edge
    being the layer; nothing is tied across cells;
  * a candidate's network keeps or drops channels, but a NAS-Bench-201 or DARTS genotype needs one op
    per edge (or two inputs per node); the rule (`genotype`): over all cells of a type, an op is present
    in the candidate when at least half of its units (channels, or the op itself per cell) are kept;
    on an edge the present op with the largest mean keep probability 1 - p wins, and an edge without a
    present op is 'none' (NAS-Bench-201). DARTS: each node takes the two incoming edges whose winning
    present op has the largest keep probability (edges without a present op fill up, by their best op's
    keep probability, if fewer than two have one);
  * not stated in the paper: the full model in eval mode uses the expected mask 1 - p (training does not
    rescale, so this is the mean it trained with; the authors' code keeps every channel), and a
    candidate is scored with BatchNorm on batch statistics (Bender et al.'s practice; the running
    averages are left untouched); bn='running' uses the running averages instead;
  * l^2 by default makes the coupled term's gradient at p_init equal the harness's weight decay (the
    paper grid-searches l and says a good one lands in the usual weight-decay range).

    python search.py --method pgnas --space nb201 --benchmark TABLE.csv   # a NAS-Bench-201 cell
    python search.py --method pgnas --space nb201 --fixed_rate 0.1       # the fixed-rate control

The core (the PGNAS class: gates, regulariser, candidates) is independent of search.py; Method, at the
end of the file, is what the harness builds. The supernets reuse model_search's cells built without
BayesNAS switches, and a hard candidate is a cell gate (model_search.set_gate): the ops it drops are
not computed.
"""
import itertools
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import genotypes
import model_search
import utils
from operations import FactorizedReduce

# Defaults of the paper (supplement): initial drop probability, temperature, N as a multiple of the
# training-set size (augmentation); PRESENT: the kept fraction at which an op counts as in a candidate.
P_INIT, TEMPERATURE, DATA_FACTOR = 0.1, 0.2, 10
PRESENT = 0.5
# How a parameter-free op is gated (GatedOp): through a 1x1 carrier conv, or as a whole.
FREE_OPS_CHOICES = ('carrier', 'gate')
FREE_OPS = 'carrier'
_EPS = 1e-6


# ----------------------------------------------------------------------------------------------------
# The concrete gate
# ----------------------------------------------------------------------------------------------------

def logit(p):
    return math.log(p) - math.log1p(-p)


class ConcreteGate(nn.Module):
    """Concrete dropout over `units` Bernoulli variables (channels of the input, or 1 for the whole op)
    sharing one drop probability p = sigmoid(logit).

    Training: a relaxed keep-mask per sample and unit, 1 - sigmoid((logit + logistic noise) / T), no
    1 / (1 - p) rescaling. Hard (`hard` set, a {0, 1} tensor of `units`): that fixed mask for the
    whole batch. Eval without a hard mask: the expected mask 1 - p. learn=False: p stays fixed (the
    fixed-rate control)."""

    def __init__(self, units, p=P_INIT, temperature=TEMPERATURE, learn=True):
        super().__init__()
        if not 0 < p < 1:
            raise ValueError(f'a drop probability must be in (0, 1), got {p}')
        self.units, self.temperature = units, temperature
        self.logit = nn.Parameter(torch.tensor(logit(p)), requires_grad=learn)
        self.hard = None        # a candidate's mask: not state, a candidate is redrawn from its seed

    def p(self):
        return torch.sigmoid(self.logit)

    def relaxed_keep(self, n):
        """[n, units] relaxed keep-masks; as the temperature goes to 0 each entry is 0 with probability p."""
        u = torch.rand(n, self.units, device=self.logit.device).clamp(_EPS, 1 - _EPS)
        noise = torch.log(u) - torch.log1p(-u)          # logistic: the difference of two Gumbels
        return 1 - torch.sigmoid((self.logit + noise) / self.temperature)

    def draw_hard(self, generator):
        """A hard keep-mask (float {0, 1}, `units`): each unit dropped with probability p. Drawn on the
        CPU from `generator`, so that a candidate is the same on every device."""
        u = torch.rand(self.units, generator=generator)
        return (u >= float(self.p().detach())).float()

    def mask(self, x):
        if self.hard is not None:
            return self.hard.to(x.device).view(1, -1)
        if self.training:
            return self.relaxed_keep(x.shape[0])
        return (1 - self.p()).expand(1, self.units)

    def forward(self, x):
        m = self.mask(x)
        return x * m.view(m.shape[0], m.shape[1], *([1] * (x.dim() - 2)))


# ----------------------------------------------------------------------------------------------------
# Gating a supernet
# ----------------------------------------------------------------------------------------------------

def input_convs(op):
    """The convolutions that read an op's input directly (their input channels are the gated ones);
    [] for a parameter-free op."""
    if isinstance(op, FactorizedReduce):
        return [op.conv_1, op.conv_2]
    first = next((m for m in op.modules() if isinstance(m, nn.Conv2d)), None)
    return [] if first is None else [first]


class GatedOp(nn.Module):
    """A candidate op behind a concrete gate on its input: per channel for an op with convolutions.
    A parameter-free op (pool, identity) gets, by free_ops, either a carrier (a 1x1 convolution after
    it, initialised to the identity, whose input channels the gate drops and whose weights take the
    coupled L2 term, as the paper's authors suggest) or one op-level gate ('gate': the whole op kept
    or dropped, no L2 term)."""

    def __init__(self, op, C, p=P_INIT, temperature=TEMPERATURE, learn=True, free_ops=FREE_OPS):
        super().__init__()
        self.op = op
        convs = input_convs(op)
        self.carrier = None
        if not convs and free_ops == 'carrier':
            self.carrier = nn.Conv2d(C, C, 1, bias=False)
            with torch.no_grad():
                self.carrier.weight.copy_(torch.eye(C).view(C, C, 1, 1))
            convs = [self.carrier]
        # A plain list: the convs are already submodules, and the regulariser reads their weights.
        self.convs = convs
        self.gate = ConcreteGate(C if convs else 1, p, temperature, learn)

    def forward(self, x):
        # A pool or the identity acts on each channel alone, so gating its input is gating the
        # carrier's input channels.
        out = self.op(self.gate(x))
        return out if self.carrier is None else self.carrier(out)


class Gated:
    """Where a gate sits: cell index, cell type, edge (src, dst), op name, its index on the edge, and
    the GatedOp."""

    def __init__(self, cell, cell_type, src, dst, name, k, module):
        self.cell, self.cell_type, self.src, self.dst = cell, cell_type, src, dst
        self.name, self.k, self.module = name, k, module

    @property
    def gate(self):
        return self.module.gate


def gate_cells(cells, p=P_INIT, temperature=TEMPERATURE, learn=True, free_ops=FREE_OPS):
    """Wrap every op of every edge of the cells (model_search.Cell, built without switches) in a GatedOp,
    in place; returns the Gated list in cell, edge, op order. 'none' ops stay ungated."""
    gated = []
    for i, cell in enumerate(cells):
        cell_type = 'reduce' if cell.reduction else 'normal'
        for edge in cell.edges:
            for k, name in enumerate(edge.names):
                if name == 'none':
                    continue
                edge.ops[k] = GatedOp(edge.ops[k], cell.C, p, temperature, learn, free_ops)
                gated.append(Gated(i, cell_type, edge.src, edge.dst, name, k, edge.ops[k]))
    return gated


# ----------------------------------------------------------------------------------------------------
# Supernets without switches
# ----------------------------------------------------------------------------------------------------

class NB201Supernet(model_search._NB201):
    """NAS-Bench-201's macro-architecture with every candidate op but 'none' on all six edges of every
    cell, summed, without switches (returns logits)."""

    def __init__(self, C, N, num_classes):
        edges = [(op, i, j) for j in range(1, genotypes.NB201_NODES) for i in range(j)
                 for op in genotypes.NB201_CANDIDATES]
        super().__init__(C, N, num_classes, edges, switches=False)

    def forward(self, x):
        return self.logits(x)


class DartsSupernet(nn.Module):
    """DARTS's search network (model_search.Network's stem, cell stack and head BatchNorm) with every
    candidate op but 'none' on every edge, summed, without switches (returns logits)."""

    STEPS = 4

    def __init__(self, C, num_classes, layers):
        super().__init__()
        C_stem = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        nodes = range(2, self.STEPS + 2)
        edges = [(op, i, j) for j in nodes for i in range(j) for op in genotypes.CANDIDATES]

        def make_cell(reduction, C_prev_prev, C_prev, C_cell, reduction_prev):
            return model_search.darts_cell(edges, list(nodes), C_prev_prev, C_prev, C_cell,
                                           reduction=reduction, reduction_prev=reduction_prev)

        self.cells, channels = model_search.stack_cells(layers, C, C_stem, make_cell)
        # The sum of every op of every edge is many times one op's output (see model_search.Network).
        self.head_bn = nn.BatchNorm2d(channels[-1])
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(self.head_bn(s1)).flatten(1))


SUPERNETS = {
    'nb201': lambda C, layers, classes: NB201Supernet(C, layers, classes),
    'darts': lambda C, layers, classes: DartsSupernet(C, classes, layers),
}


# ----------------------------------------------------------------------------------------------------
# The regulariser (the KL term)
# ----------------------------------------------------------------------------------------------------

def l2_term(gated, l2, n):
    """sum over gates of (l2 / n) (1 - p) ||W||^2 over the gate's input convs (the sum over input
    channels k of (1 - p) ||W[:, k]||^2, p being shared by the channels); 0 for op-level gates."""
    total = 0.
    for g in gated:
        if g.module.convs:
            sq = sum(conv.weight.pow(2).sum() for conv in g.module.convs)
            total = total + (l2 / n) * (1 - g.gate.p()) * sq
    return total


def entropy_term(gated, n):
    """sum over gates of (units / n) (p log p + (1 - p) log(1 - p)): the negative entropy of the gate's
    Bernoulli variables, which pulls p towards 1/2."""
    total = 0.
    for g in gated:
        logit_ = g.gate.logit
        p = torch.sigmoid(logit_)
        # Through log-sigmoids of the logit: finite for any logit.
        total = total + (g.gate.units / n) * (p * F.logsigmoid(logit_) + (1 - p) * F.logsigmoid(-logit_))
    return total


def regulariser(gated, l2, n):
    """The KL term of the paper: l2_term + entropy_term."""
    return l2_term(gated, l2, n) + entropy_term(gated, n)


# ----------------------------------------------------------------------------------------------------
# Candidates and their genotypes
# ----------------------------------------------------------------------------------------------------

def candidate_generator(seed, index):
    """The generator of candidate `index` of a sampling with `seed`: each candidate can be redrawn alone."""
    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + index) % 2 ** 63)


def draw_candidate(gated, seed, index):
    """The hard keep-masks of candidate `index`, one per gate, in gate order."""
    g = candidate_generator(seed, index)
    return [x.gate.draw_hard(g) for x in gated]


def op_summary(gated, masks):
    """{(cell_type, src, dst, op): (kept fraction of its units over the type's cells, mean keep
    probability 1 - p)}."""
    acc = {}
    for x, m in zip(gated, masks):
        kept, units, keep, n = acc.get((x.cell_type, x.src, x.dst, x.name), (0., 0, 0., 0))
        acc[(x.cell_type, x.src, x.dst, x.name)] = (
            kept + float(m.sum()), units + m.numel(), keep + 1 - float(x.gate.p().detach()), n + 1)
    return {key: (kept / units, keep / n) for key, (kept, units, keep, n) in acc.items()}


def _edge_winners(summary, cell_type):
    """{(src, dst): (present op with the largest keep probability or None, its keep probability,
    best op by keep probability alone, its keep probability)}; ties go to the earlier op."""
    out = {}
    for (t, src, dst, op), (kept, keep) in summary.items():
        if t != cell_type:
            continue
        present, p_keep, best, b_keep = out.get((src, dst), (None, -1., None, -1.))
        if kept >= PRESENT and keep > p_keep:
            present, p_keep = op, keep
        if keep > b_keep:
            best, b_keep = op, keep
        out[(src, dst)] = (present, p_keep, best, b_keep)
    return out


def nb201_genotype(summary):
    """The NAS-Bench-201 string of a candidate (see the module docstring for the rule)."""
    winners = _edge_winners(summary, 'normal')
    return genotypes.nb201_string([(op, src, dst) for (src, dst), (op, _, _, _) in winners.items()
                                   if op is not None])


def _darts_cell(summary, cell_type, steps):
    winners = _edge_winners(summary, cell_type)
    pairs = []
    for j in range(2, steps + 2):
        incoming = [(src, *winners[(src, j)]) for src in range(j)]
        # Edges with a present op first, by its keep probability; then the others by their best op's.
        ranked = sorted(incoming, key=lambda e: (e[1] is not None, e[2] if e[1] is not None else e[4]),
                        reverse=True)
        chosen = sorted(ranked[:2], key=lambda e: e[0])
        pairs += [(present if present is not None else best, src) for src, present, _, best, _ in chosen]
    return pairs


def darts_genotype(summary, steps=DartsSupernet.STEPS):
    """The DARTS genotype of a candidate (see the module docstring for the rule)."""
    concat = list(range(2, steps + 2))
    return genotypes.Genotype(normal=_darts_cell(summary, 'normal', steps), normal_concat=concat,
                              reduce=_darts_cell(summary, 'reduce', steps), reduce_concat=concat)


GENOTYPES = {'nb201': nb201_genotype, 'darts': darts_genotype}


# ----------------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------------

def _arg(args, name, default):
    value = getattr(args, name, None)
    return default if value is None else value


class PGNAS:
    """The method for the search harness. Reads from args: learning_rate, momentum, weight_decay,
    grad_clip, train_size (the training split's images), and, all optional: pgnas_p_init (0.1),
    pgnas_temperature (0.2), pgnas_n (N; default 10 x train_size), pgnas_l2 (l^2; default: the coupled
    term's gradient at p_init equals weight_decay), pgnas_fixed_rate (a drop probability: the control,
    every gate at it and not learned), pgnas_bn ('batch' or 'running': BatchNorm when scoring
    candidates)."""

    def __init__(self, args, space_name, device):
        if space_name not in SUPERNETS:
            raise ValueError(f'PGNAS searches the {" and ".join(SUPERNETS)} spaces, not {space_name!r}')
        self.args, self.space, self.device = args, space_name, device
        self.fixed_rate = _arg(args, 'pgnas_fixed_rate', None)
        self.p_init = self.fixed_rate if self.fixed_rate is not None else _arg(args, 'pgnas_p_init', P_INIT)
        self.temperature = _arg(args, 'pgnas_temperature', TEMPERATURE)
        self.n = _arg(args, 'pgnas_n', DATA_FACTOR * _arg(args, 'train_size', 0))
        self.l2 = _arg(args, 'pgnas_l2', args.weight_decay * self.n / (2 * (1 - self.p_init)))
        self.bn = _arg(args, 'pgnas_bn', 'batch')
        self.free_ops = _arg(args, 'pgnas_free_ops', FREE_OPS)
        for ok, message in (
                (0 < self.p_init < 1, f'the drop probability must be in (0, 1), got {self.p_init}'),
                (self.temperature > 0, f'the temperature must be positive, got {self.temperature}'),
                (self.n > 0, f'N (pgnas_n, or train_size) must be positive, got {self.n}'),
                (self.l2 >= 0, f'l^2 (pgnas_l2) must be at least 0, got {self.l2}'),
                (self.bn in ('batch', 'running'), f"pgnas_bn must be 'batch' or 'running', got {self.bn!r}"),
                (self.free_ops in FREE_OPS_CHOICES,
                 f'pgnas_free_ops must be one of {", ".join(FREE_OPS_CHOICES)}, got {self.free_ops!r}')):
            if not ok:
                raise ValueError(message)
        self.model = self.optimizer = None
        self.gated = []

    # --- the supernet and its training ---------------------------------------------------------------

    def build_model(self, C, layers, classes):
        model = SUPERNETS[self.space](C, layers, classes)
        self.gated = gate_cells(model.cells, self.p_init, self.temperature, self.fixed_rate is None, self.free_ops)
        self.model = model.to(self.device)
        # The gated convs' L2 is the regulariser's (coupled to p): no weight decay on them; the gates'
        # logits none either (their prior is the entropy term).
        coupled = {id(conv.weight) for x in self.gated for conv in x.module.convs}
        logits = [x.gate.logit for x in self.gated]
        logit_ids = {id(t) for t in logits}
        rest = [t for t in model.parameters() if id(t) not in coupled | logit_ids]
        groups = [dict(params=[t for t in model.parameters() if id(t) in coupled], weight_decay=0.),
                  dict(params=rest, weight_decay=self.args.weight_decay)]
        if self.fixed_rate is None:
            groups.append(dict(params=logits, weight_decay=0.))
        self.optimizer = torch.optim.SGD(groups, lr=self.args.learning_rate, momentum=self.args.momentum)
        return self.model

    def regulariser(self):
        return regulariser(self.gated, self.l2, self.n)

    def train_step(self, x, y):
        """One SGD step on cross-entropy + the regulariser; returns (that loss, logits), detached."""
        self.set_candidate(None)
        self.model.train()
        logits = self.model(x)
        loss = F.cross_entropy(logits, y) + self.regulariser()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = _arg(self.args, 'grad_clip', 0)
        if clip > 0:
            nn.utils.clip_grad_norm_([t for t in self.model.parameters() if t.requires_grad], clip)
        self.optimizer.step()
        return loss.detach(), logits.detach()

    # --- candidates ----------------------------------------------------------------------------------

    def set_candidate(self, masks):
        """Fix every gate to its hard mask (masks in gate order), or back to relaxed / expected masks
        (None). A hard candidate computes only the ops it keeps a unit of (a cell gate, set_gate)."""
        for i, x in enumerate(self.gated):
            x.gate.hard = None if masks is None else masks[i]
        model_search.set_gate(self.model, None if masks is None else self._kept_ops(masks))

    def _kept_ops(self, masks):
        """The cell gate of a candidate: on each edge the ops of which it keeps at least one unit."""
        kept = {(x.cell, x.src, x.dst, x.k) for x, m in zip(self.gated, masks) if m.any()}
        index = {id(cell): i for i, cell in enumerate(self.model.cells)}

        def gate(cell, live):
            i = index[id(cell)]
            return [([k for k in ops if (i, edge.src, edge.dst, k) in kept], 1.)
                    for edge, ops in zip(cell.edges, live)]
        return gate

    @torch.no_grad()
    def evaluate(self, masks, val_batches):
        """Top-1 accuracy (%) of the candidate with these hard masks on the validation batches."""
        self.set_candidate(masks)
        self.model.eval()
        saved = []
        if self.bn == 'batch':
            # Batch statistics without moving the running averages: momentum 0 keeps them as they are.
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    saved.append((m, m.momentum, m.num_batches_tracked.clone()))
                    m.train()
                    m.momentum = 0.
        correct = total = 0
        try:
            for x, y in val_batches:
                logits = self.model(x.to(self.device))
                correct += int((logits.argmax(1) == y.to(self.device)).sum())
                total += len(y)
        finally:
            for m, momentum, tracked in saved:
                m.momentum = momentum
                m.num_batches_tracked.copy_(tracked)
            self.set_candidate(None)
        return 100. * correct / max(total, 1)

    def genotype(self, masks):
        """The genotype of a candidate: an NAS-Bench-201 string or a DARTS Genotype."""
        return GENOTYPES[self.space](op_summary(self.gated, masks))

    def sample(self, val_batches, candidates, seed):
        """Draw `candidates` hard candidates from `seed` and score each on the validation batches;
        returns [dict(candidate, accuracy, genotype, kept)] in candidate order (kept: the fraction of
        gated units the candidate keeps). best(results) picks the winner."""
        results = []
        for i in range(candidates):
            masks = draw_candidate(self.gated, seed, i)
            kept = sum(float(m.sum()) for m in masks) / max(sum(m.numel() for m in masks), 1)
            results.append(dict(candidate=i, accuracy=self.evaluate(masks, val_batches),
                                genotype=self.genotype(masks), kept=kept))
        return results

    # --- state and outputs ---------------------------------------------------------------------------

    def gate_table(self):
        """One row per gate: cell, cell_type, edge 'src->dst', op, p, units (channels, or 1 for an
        op-level gate)."""
        return [dict(cell=x.cell, cell_type=x.cell_type, edge=f'{x.src}->{x.dst}', op=x.name,
                     p=float(x.gate.p().detach()), units=x.gate.units) for x in self.gated]

    def state_dict(self):
        return {'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])


def best(results):
    """The result with the highest validation accuracy (the earliest candidate on a tie)."""
    return max(results, key=lambda r: (r['accuracy'], -r['candidate']))


# ----------------------------------------------------------------------------------------------------
# As a method of search.py (--method pgnas)
# ----------------------------------------------------------------------------------------------------

def add_flags(p):
    g = p.add_argument_group('PGNAS (--method pgnas)')
    g.add_argument('--epochs', type=int, default=1, help='epochs of single-level training of the gated '
                   'supernet on the training part (1)')
    g.add_argument('--valid_portion', type=float, default=0.1, help='share of the training set held out '
                   'to score the candidates (0.1)')
    g.add_argument('--candidates', type=int, default=500, help='hard candidates drawn from the learnt '
                   'drop probabilities and scored (500; the paper: 500 as good as 1,500)')
    g.add_argument('--valid_batches', type=int, default=8, help='validation batches each candidate is '
                   'scored on (8)')
    g.add_argument('--p_init', dest='pgnas_p_init', type=float, default=P_INIT,
                   help=f'initial drop probability of every gate ({P_INIT})')
    g.add_argument('--temperature', dest='pgnas_temperature', type=float, default=TEMPERATURE,
                   help=f'temperature of the relaxed masks ({TEMPERATURE})')
    g.add_argument('--l2', dest='pgnas_l2', type=float, default=None, help='l^2 of the coupled L2 term '
                   "(default: its gradient at --p_init equals --weight_decay)")
    g.add_argument('--data_factor', type=float, default=DATA_FACTOR, help='N, the data size of the '
                   f'regulariser, in training images ({DATA_FACTOR}: the paper counts augmentation)')
    g.add_argument('--fixed_rate', dest='pgnas_fixed_rate', type=float, default=None, help="the paper's "
                   'control: every gate at this drop probability, not learnt, sampled the same way')
    g.add_argument('--free_ops', dest='pgnas_free_ops', choices=FREE_OPS_CHOICES, default=FREE_OPS,
                   help="how a parameter-free op (pool, identity) is gated: 'carrier', a 1x1 conv after it "
                   "whose input channels are gated, as the paper's authors suggest, or 'gate', one gate for "
                   f"the whole op without an L2 term ({FREE_OPS})")
    g.add_argument('--bn', dest='pgnas_bn', choices=('batch', 'running'), default='batch',
                   help="BatchNorm statistics when a candidate is scored ('batch', as Bender et al.)")


def defaults(args, space):
    args.tie = False            # one gate per cell, edge and op: nothing tied


def rules(a):
    return [
        (a.space in SUPERNETS, f'--method pgnas searches the {" and ".join(SUPERNETS)} spaces, not {a.space}'),
        (a.epochs >= 1, f'--epochs must be at least 1, got {a.epochs}'),
        (0 < a.valid_portion < 1, f'--valid_portion must be in (0, 1), got {a.valid_portion}'),
        (a.candidates >= 1, f'--candidates must be at least 1, got {a.candidates}'),
        (a.valid_batches >= 1, f'--valid_batches must be at least 1, got {a.valid_batches}'),
        (0 < a.pgnas_p_init < 1, f'--p_init must be in (0, 1), got {a.pgnas_p_init}'),
        (a.pgnas_temperature > 0, f'--temperature must be positive, got {a.pgnas_temperature}'),
        (a.pgnas_l2 is None or a.pgnas_l2 >= 0, f'--l2 must be >= 0, got {a.pgnas_l2}'),
        (a.data_factor > 0, f'--data_factor must be positive, got {a.data_factor}'),
        (a.pgnas_fixed_rate is None or 0 < a.pgnas_fixed_rate < 1,
         f'--fixed_rate must be in (0, 1), got {a.pgnas_fixed_rate}'),
    ]


def parts(args):
    """Candidates are scored on the first part, held out; the supernet trains on the rest."""
    return args.valid_portion, '--valid_portion', {
        'train': ('rest', dict(crop_pad=4, flip=True), True, 0, True, 'training'),
        'valid': ('first', None, False, 1, True, 'validation'),
    }


def phases(args):
    return [('train', e) for e in range(args.epochs)]


def steps(args, data):
    return dict(train=len(data['train']))


def phase_name(kind, epoch):
    return f'epoch {epoch + 1}'


def describe_data(args, data, steps):
    return (f'{len(data["train"].x)} training / {len(data["valid"].x)} validation images, batch '
            f'{args.batch_size}, {steps["train"]} steps per epoch')


class Method:
    """PGNAS for search.py's harness: the gated supernet trains on the training part with the
    regulariser beside the data's loss; after the last epoch the candidates are drawn and scored
    (candidates.json, gates.json) and the best one is the cell."""

    name = 'PGNAS'

    def __init__(self, args, space, device, run, data=None):
        self.args, self.run = args, run
        if data is not None:
            args.train_size = len(data['train'].x)
            args.pgnas_n = args.data_factor * args.train_size
        self.core = PGNAS(args, space.name, device)
        self.model = self.core.build_model(args.init_channels, args.layers, 10)
        self.best = None

    def describe(self):
        rate = (f'fixed drop rate {self.core.fixed_rate:g}' if self.core.fixed_rate is not None
                else f'p_init {self.core.p_init:g}, temperature {self.core.temperature:g}')
        return f'{len(self.core.gated)} gates; {rate}, N {self.core.n:g}, l^2 {self.core.l2:.4g}'

    def weight_parameters(self):
        # The gated convs and the gates' logits take no weight decay: the regulariser is their prior.
        return [dict(params=g['params'], weight_decay=g['weight_decay'])
                for g in self.core.optimizer.param_groups]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def start_phase(self, kind):
        self.core.set_candidate(None)

    def before_step(self, kind, i, n):
        pass

    def regulariser(self, kind):
        return self.core.regulariser()

    def optimizers(self, kind):
        return []

    def status(self, kind):
        ps = [float(x.gate.p().detach()) for x in self.core.gated]
        return f'  mean p {sum(ps) / max(len(ps), 1):.3f}'

    def end_phase(self, kind, epoch, data, step):
        """After the last epoch: draw and score the candidates; the gate table beside them."""
        args = self.args
        utils.write_text_atomic(self.run.file('gates.json'), json.dumps(self.core.gate_table(), indent=1) + '\n')
        if epoch + 1 < args.epochs:
            return None
        data['valid'].set_epoch(0)
        batches = list(itertools.islice(data['valid'], args.valid_batches))
        tic = time.time()
        results = self.core.sample(batches, args.candidates, args.seed)
        self.best = best(results)
        doc = dict(best=self.best['candidate'],
                   candidates=[dict(r, genotype=json.loads(genotypes.json_text(r['genotype']))) for r in results])
        utils.write_text_atomic(self.run.file('candidates.json'), json.dumps(doc, indent=1) + '\n')
        accuracies = sorted(r['accuracy'] for r in results)
        self.run.log(f'{len(results)} candidates scored on {sum(len(y) for _, y in batches)} validation '
                     f'images in {utils.format_time(time.time() - tic)}: best {accuracies[-1]:.2f}%, median '
                     f'{accuracies[len(accuracies) // 2]:.2f}% (candidate {self.best["candidate"]})')
        self.run.metric(phase='sample', step=step, best_valid_acc=accuracies[-1],
                        median_valid_acc=accuracies[len(accuracies) // 2])
        return dict(candidates=len(results), best=self.best['candidate'], best_valid_acc=accuracies[-1])

    def genotype(self):
        if self.best is None:           # a finished run resumed: its candidates are on disk
            doc = json.loads(Path(self.run.file('candidates.json')).read_text())
            winner = doc['candidates'][doc['best']]
            masks = draw_candidate(self.core.gated, self.args.seed, winner['candidate'])
            self.best = dict(winner, genotype=self.core.genotype(masks))
        return self.best['genotype'], f'derived by search.py --method pgnas, candidate {self.best["candidate"]}'
