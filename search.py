"""BayesNAS search on CIFAR-10: train the switch-augmented supernet, then prune it with HARD priors.

    python search.py --gpu 0                                 # the default search (lambda 0.01)
    python search.py --space nb201 --benchmark TABLE.csv     # a NAS-Bench-201 cell, looked up
    python search.py --space proxyless --gpu 0               # tree cells in the retrained PyramidNet
    python search.py --lambda 0.03 --save runs/search-l03    # a sparser cell
    python search.py --save runs/search-l03 --resume         # continue an interrupted search
    python derive.py runs/search-l03 --topk 2                # a DARTS-comparable cell afterwards

The protocol (the paper's Algorithm 1 where it states one):
  1. warm-up: --warmup_epochs epochs of ordinary training of the weights (switches frozen at 1) on
     the first --warmup_portion of the (shuffled) training set, with cutout;
  2. --iterations times: one epoch (or --switch_steps steps) of joint training of weights and
     switches on the rest of the training set, minimising cross-entropy + lambda * sum_g omega_g
     ||w_g|| (the HARD prior's re-weighted group penalty), then the curvature of the loss w.r.t. every switch (--hessian, on
     --hessian_batches batches of the same part, without augmentation, in eval mode), the update of
     gamma and omega with the HARD couplings, and pruning of every switch group whose effective
     gamma is 0 or below --threshold (its ops are no longer computed);
  3. derivation: every op that survived, where it lies on a path from an input to the output
     (derive.py), printed as a Python literal for genotypes.py; in the NAS-Bench-201 space
     (--space nb201, spaces.py) the strongest surviving op of each edge, printed as the benchmark's
     architecture string on the last line; in the proxyless space (--space proxyless) the strongest
     surviving op of each edge of every block's trees, written as the network's PyramidTreeNet config
     (proxyless.py). A cell the threshold would leave empty keeps its single most relevant
     operation, and the log says so (a proxyless half may be empty: its block still computes).
The weights train with SGD, momentum 0.9, a fixed learning rate 0.1 and weight decay 1e-4, as in the
paper. The prior starts at gamma = omega = 1. The two parts of the training set are disjoint and the
test set is never read.

Where it departs from the paper's code, and why (docs/design.md, "Design notes"; docs/results.md has
the measurements):
  * The update (--update evidence, the default). Each group's gamma is the one that maximises the
    Laplace evidence: with the loss near the trained switches taken as a Gaussian of precision h/lambda,
    a one-switch group keeps gamma = w^2 - lambda/h when h w^2 > lambda and is pruned otherwise. So
    a switch survives when the loss it is worth (to second order, h w^2 / 2) exceeds lambda / 2: the
    curvature and the switch value decide together, and lambda is a loss scale. The decision does not
    move along the directions in which BatchNorm makes the loss blind to a switch's scale (w -> a w
    scales h by 1/a^2). The paper's update, gamma = ||w|| / omega with omega from gamma = 1
    (--update reweight), can only raise gamma where the curvature is small, so one iteration prunes
    what the penalty drove to zero or what is small in magnitude.
  * The switches train with proximal Adam (hessian.ProxAdam, --switch_lr, which says why).
  * The default curvature is the Monte-Carlo Fisher, unbiased for the GGN diagonal; the paper's
    layer-wise recursion ('--hessian recursive') misses the cross terms of the global average pool
    and is orders of magnitude below it on this network. '--hessian constant' replaces every
    switch's curvature by their mean: the ablation in which the decision rests on magnitudes alone.
  * --paper puts the published choices back (the re-weighting update, the recursive curvature).
    --aux_skip, --op_dropout and --select relevance are ablations against the supernet's lean on
    the identity: an identity outside the switches while it trains, ops dropped per step, and ops
    ranked by the loss they are worth rather than by gamma, which the coupling caps at the edge's.

Run directory (--save, default runs/search-TIME): log.txt, args.json, metrics.jsonl, checkpoint.pt
(atomic, every --checkpoint_freq steps and after every phase; --resume continues exactly), gamma.json
(per switch group by cell type, edge and op: gamma, omega, curvature per member, posterior variance,
switch values, relevance = sum h w^2 / lambda, and for pruned groups the gamma and iteration at which
they went), gamma.png (heat map of gamma per edge and op), curves.png, and after the last iteration
genotype.json, genotype.py, cell_normal.png and cell_reduce.png (nb201: genotype.json and cell.png;
proxyless: genotype.json, the network's config, and cell_s{1,2,3}h{0,1}.png, the two halves of the
first block of each stage).
"""
import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import derive
import model_search
import spaces
import tabular
import utils
from hessian import METHODS, RULES, ProxAdam, switch_curvature


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------

# Flags that say where and how a run executes, not what it computes: a resumed run may change them.
RUN_FLAGS = ('data', 'download', 'gpu', 'report_freq', 'checkpoint_freq', 'save', 'resume', 'amp',
             'channels_last', 'deterministic', 'benchmark', 'compile')


def build_parser():
    p = utils.Parser('search.py', description='BayesNAS search of a CIFAR-10 cell (see the module '
                                              'docstring).')
    p.add_argument('--method', choices=('bayesnas',) + tabular.METHODS, default='bayesnas',
                   help='bayesnas (default), or a sample-based method on a benchmark table (tabular.py, '
                        'whose flags it then takes: --oracle FILE, --queries N, ...)')
    p.add_argument('--space', choices=spaces.NAMES, default='darts', help="search space: DARTS's cells "
                   "(default), NAS-Bench-201's, or the proxyless space's tree cells in the retrained "
                   'PyramidNet itself (spaces.py)')
    p.add_argument('--data', default='data', help='folder holding cifar-10-batches-py (default: data)')
    p.add_argument('--download', action='store_true', help='download CIFAR-10 into --data if missing')
    p.add_argument('--batch_size', type=int, default=None, help='batch size (default: 64; proxyless: '
                   '32, as the paper)')
    p.add_argument('--learning_rate', type=float, default=0.1, help='fixed SGD learning rate (0.1)')
    p.add_argument('--momentum', type=float, default=0.9, help='SGD momentum (0.9)')
    p.add_argument('--weight_decay', type=float, default=1e-4, help='weight decay of the network '
                   'weights, not the switches (1e-4)')
    p.add_argument('--grad_clip', type=float, default=5.0, help='gradient norm clip of the weights, '
                   '0 for none (5)')
    p.add_argument('--init_channels', type=int, default=16, help='channels of the first cells; '
                   'proxyless: of the stem, where the widths start (16)')
    p.add_argument('--layers', type=int, default=None, help='cells in the supernet (darts: 8) or per stage '
                   '(nb201: 5, as the benchmark; proxyless: 18 tree blocks, as the published network)')
    p.add_argument('--alpha', type=int, default=None, help='proxyless: PyramidNet widening, the cell width '
                   'grows by alpha over the network (84, as the published network)')
    p.add_argument('--tie', action=argparse.BooleanOptionalAction, default=None, help='one switch group '
                   'per position, shared by the cells of a type (proxyless: by the blocks of a stage); '
                   '--no-tie: one per cell, so that cells may differ (default: tied; proxyless: not)')
    p.add_argument('--cutout', action=argparse.BooleanOptionalAction, default=True,
                   help='cutout during the warm-up, as in the paper (default: on)')
    p.add_argument('--cutout_length', type=int, default=16, help='cutout square side (16)')
    p.add_argument('--lambda', dest='lam', type=float, default=None, help='temperature lambda of all '
                   'switches, a loss scale: larger is sparser (default: darts 0.01, nb201 and proxyless '
                   '0.005; see docs/results.md)')
    p.add_argument('--lambda_origin', type=float, default=None, help='lambda of the edge (parent) '
                   'switches (default: --lambda)')
    p.add_argument('--lambda_child', type=float, default=None, help='lambda of the op (child) switches '
                   '(default: --lambda)')
    p.add_argument('--switch_lr', type=float, default=None, help='learning rate of the switches '
                   '(proximal Adam, see the module docstring; default: darts 0.002, nb201 and proxyless 0.01)')
    p.add_argument('--paper', action='store_true', help="the paper's algorithm where this project departs "
                   'from it: --update reweight --hessian recursive --aux_skip 0 --op_dropout 0 --select gamma '
                   '(flags given beside it win)')
    p.add_argument('--hessian', choices=METHODS + ('constant',), default=None, help='curvature '
                   "estimator: Monte-Carlo Fisher (default), the exact GGN diagonal, the paper's layer-wise "
                   "recursion, or 'constant': the Fisher's mean over all switches in place of every "
                   "switch's own (an ablation: the decision then rests on switch magnitudes alone)")
    p.add_argument('--update', choices=RULES, default=None, help="the prior update: 'evidence' "
                   '(default: gamma maximises the Laplace evidence, so a group is pruned when the loss it '
                   "is worth is within lambda) or 'reweight' (the paper's gamma = ||w|| / omega); see the "
                   'module docstring')
    p.add_argument('--hessian_batches', type=int, default=20, help='training batches the curvature is '
                   'averaged over (20)')
    p.add_argument('--warmup_epochs', type=int, default=1, help='epochs of weight-only training (1)')
    p.add_argument('--warmup_portion', type=float, default=0.1, help='share of the training set for the '
                   'warm-up; the switches train on the rest (0.1, as the paper; 0 needs --warmup_epochs 0)')
    p.add_argument('--iterations', type=int, default=1, help='joint epoch + curvature + update + prune '
                   'rounds (paper: 1)')
    p.add_argument('--switch_steps', type=int, default=None, help='joint training steps of each iteration '
                   '(default: one pass over the switch-training part, as the paper). The steps run through '
                   'consecutive passes, so on a small data set a larger value gives the switch phase the '
                   'length of a full search, and with --iterations T a smaller one cuts the epoch into rounds')
    p.add_argument('--select', choices=derive.SELECT, default=None, help="what an edge's surviving ops "
                   "compete by in the derivation: 'gamma' (the paper) or 'relevance' (the loss the op is "
                   'worth, which the coupling to its edge does not cap); the other breaks ties (default: '
                   'gamma)')
    p.add_argument('--aux_skip', type=float, default=None, help='weight of an auxiliary identity on every '
                   'stride-1 supernet edge, outside the switches and never a candidate: constant in the '
                   'warm-up, decayed linearly to 0 over each switch phase, so that the update sees the '
                   'supernet without it (0: none, as the paper and the default)')
    p.add_argument('--op_dropout', type=float, default=None, help='in training, drop each op of each edge '
                   'with this probability per step (at least one stays; the rest scaled up), so that each '
                   'op must work without the others (0: none, as the paper and the default)')
    p.add_argument('--threshold', type=float, default=0.0, help='also prune switch groups whose effective '
                   'gamma falls below this (default 0: a group goes when its gamma is 0, which the evidence '
                   'update decides)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--gpu', type=int, default=None, help='CUDA device index (default: cuda:0 if present, '
                   'else the CPU)')
    p.add_argument('--amp', action=argparse.BooleanOptionalAction, default=False,
                   help='bf16 autocast of the training steps on CUDA (default: off; docs/results.md, '
                        'Performance)')
    p.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True,
                   help='channels-last memory format on CUDA (default: on; never on a CPU, where PyTorch 2.14 '
                        'corrupts memory in the backward pass of some of its convolutions)')
    p.add_argument('--deterministic', action='store_true', help='deterministic algorithms and no cuDNN '
                   'autotuning, so that a GPU run repeats exactly (slower; a CPU run always does)')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the supernet's training forward pass (CUDA: with CUDA graphs, mode "
                        "reduce-overhead; it compiles again after pruning); the curvature runs eagerly "
                        '(default: off)')
    p.add_argument('--report_freq', type=int, default=50, help='log every this many steps (50)')
    p.add_argument('--checkpoint_freq', type=int, default=200, help='also checkpoint every this many '
                   'steps inside an epoch, 0 for phase ends only (200)')
    p.add_argument('--save', default=None, help='run directory (default: runs/search-TIME)')
    p.add_argument('--resume', action='store_true', help='continue the run in --save from its checkpoint')
    p.add_argument('--benchmark', metavar='FILE', default=None, help='nb201: print the accuracies of the '
                   'derived cell in FILE (a CSV table or the NATS-Bench API file; see derive.py)')
    return p


def check_args(a):
    """UserError for the first value out of range."""
    rules = [
        (a.batch_size >= 2, f'--batch_size must be at least 2 (BatchNorm), got {a.batch_size}'),
        (a.learning_rate > 0, f'--learning_rate must be positive, got {a.learning_rate}'),
        (a.switch_lr > 0, f'--switch_lr must be positive, got {a.switch_lr}'),
        (0 <= a.momentum < 1, f'--momentum must be in [0, 1), got {a.momentum}'),
        (a.weight_decay >= 0, f'--weight_decay must be >= 0, got {a.weight_decay}'),
        (a.grad_clip >= 0, f'--grad_clip must be >= 0 (0: no clipping), got {a.grad_clip}'),
        (a.init_channels >= 2 and a.init_channels % 2 == 0 or a.space == 'nb201' and a.init_channels >= 1,
         f'--init_channels must be even and positive (FactorizedReduce halves it), got {a.init_channels}'
         if a.space == 'darts' else f'--init_channels must be even and positive, got {a.init_channels}'),
        (a.alpha is None or a.space == 'proxyless', '--alpha applies to --space proxyless only'),
        (a.space != 'proxyless' or a.alpha is None or a.alpha >= 0, f'--alpha must be >= 0, got {a.alpha}'),
        (a.space != 'proxyless' or a.hessian != 'recursive',
         "--hessian recursive walks the DARTS and NAS-Bench-201 supernets only; the proxyless space's "
         'residual blocks need fisher or ggn'),
        (a.layers >= 3 or a.space != 'darts' and a.layers >= 1,
         f'--layers must be at least 3 (two of them are reduction cells), got {a.layers}'
         if a.space == 'darts' else f'--layers (cells per stage) must be at least 1, got {a.layers}'),
        (a.cutout_length >= 1, f'--cutout_length must be at least 1, got {a.cutout_length}'),
        (a.hessian_batches >= 1, f'--hessian_batches must be at least 1, got {a.hessian_batches}'),
        (a.warmup_epochs >= 0, f'--warmup_epochs must be >= 0, got {a.warmup_epochs}'),
        (0 <= a.warmup_portion < 1, f'--warmup_portion must be in [0, 1), got {a.warmup_portion}'),
        (a.warmup_portion > 0 or a.warmup_epochs == 0,
         f'--warmup_portion 0 leaves the warm-up without images, but --warmup_epochs is '
         f'{a.warmup_epochs}; give --warmup_epochs 0 to skip the warm-up, or a positive --warmup_portion'),
        (a.iterations >= 1, f'--iterations must be at least 1, got {a.iterations}'),
        (a.switch_steps is None or a.switch_steps >= 1, f'--switch_steps must be at least 1, got {a.switch_steps}'),
        (a.threshold >= 0, f'--threshold must be >= 0, got {a.threshold}'),
        (a.aux_skip >= 0, f'--aux_skip must be >= 0, got {a.aux_skip}'),
        (0 <= a.op_dropout < 1, f'--op_dropout must be in [0, 1), got {a.op_dropout}'),
        (a.report_freq >= 1, f'--report_freq must be at least 1, got {a.report_freq}'),
        (a.checkpoint_freq >= 0, f'--checkpoint_freq must be >= 0, got {a.checkpoint_freq}'),
    ]
    for flag in ('lam', 'lambda_origin', 'lambda_child'):
        value = getattr(a, flag)
        name = '--lambda' if flag == 'lam' else f'--{flag}'
        rules.append((value is None or (math.isfinite(value) and value > 0),
                      f'{name} must be a positive number, got {value}'))
    utils.check(rules)
    derive.check_benchmark(a.benchmark, spaces.get(a.space))


# The choices of the published algorithm that this project's defaults depart from (--paper).
PAPER = dict(update='reweight', hessian='recursive', aux_skip=0.0, op_dropout=0.0, select='gamma')


def method_defaults(space):
    """The defaults of PAPER's flags in a space (docs/results.md: how they were chosen). The same in
    every space so far: the measured alternatives (--aux_skip, --op_dropout, --select relevance) have
    not yet found better NAS-Bench-201 cells at the full protocol."""
    return dict(update='evidence', hessian='fisher', aux_skip=0.0, op_dropout=0.0, select='gamma')


def space_defaults(args):
    """Fill in the flags whose default depends on --space (--layers, --lambda, --switch_lr,
    --batch_size, --tie, --alpha) or on --paper (PAPER's)."""
    defaults = PAPER if getattr(args, 'paper', False) else method_defaults(args.space)
    for flag, value in defaults.items():
        if getattr(args, flag, None) is None:
            setattr(args, flag, value)
    space = spaces.get(args.space)
    args.layers = space.layers if args.layers is None else args.layers
    args.lam = space.lam if args.lam is None else args.lam
    args.switch_lr = space.switch_lr if args.switch_lr is None else args.switch_lr
    args.batch_size = space.batch_size if args.batch_size is None else args.batch_size
    args.tie = space.tie if args.tie is None else args.tie
    if args.space == 'proxyless' and args.alpha is None:
        args.alpha = 84
    return args


def net_of(args):
    """The supernet's size as spaces.Space.supernet takes it (and gamma.json records it)."""
    return dict(C=args.init_channels, layers=args.layers, alpha=args.alpha, classes=10, tie=args.tie)


def compiled(model, device):
    """model under torch.compile: CUDA graphs on CUDA, where the supernet's many small kernels are
    paced by their launches; the default mode elsewhere."""
    return torch.compile(model, mode='reduce-overhead' if device.type == 'cuda' else 'default', dynamic=False)


def lambdas(a):
    """(lambda of edge switches, lambda of op switches)."""
    return (a.lam if a.lambda_origin is None else a.lambda_origin,
            a.lam if a.lambda_child is None else a.lambda_child)


# ----------------------------------------------------------------------------------------------------
# Data: two disjoint parts of the training set
# ----------------------------------------------------------------------------------------------------

def make_data(args, device):
    data = utils.load_cifar10(args.data, device=device, download=args.download)
    n = len(data['train_x'])
    cut = int(round(args.warmup_portion * n))
    warm, joint = (idx.to(device) for idx in utils.shuffled_split(n, cut, args.seed))
    x, y = data['train_x'], data['train_y']
    for name, part, used in (('switch-training', joint, True), ('warm-up', warm, args.warmup_epochs > 0)):
        if used and len(part) < args.batch_size:
            raise utils.UserError(f'the training set ({len(x)} images) is too small for --batch_size '
                                  f'{args.batch_size} with --warmup_portion {args.warmup_portion}: the '
                                  f'{name} part holds {len(part)} images')
    cutout = args.cutout_length if args.cutout else 0
    return {
        'warmup': utils.Batches(x[warm], y[warm], args.batch_size, drop_last=True, seed=args.seed,
                                augment=dict(crop_pad=4, flip=True, cutout=cutout)),
        'search': utils.Batches(x[joint], y[joint], args.batch_size, drop_last=True, seed=args.seed + 1,
                                augment=dict(crop_pad=4, flip=True)),
        # The curvature is measured on the model as it is, on plain images of the same part.
        'curvature': utils.Batches(x[joint], y[joint], args.batch_size, seed=args.seed + 2),
    }


def phases(args):
    """The run as a list of (kind, epoch): warm-up epochs, then one switch epoch per iteration."""
    return [('warmup', e) for e in range(args.warmup_epochs)] + [('search', i) for i in range(args.iterations)]


# ----------------------------------------------------------------------------------------------------
# The search state: model, prior, optimiser, position in the run
# ----------------------------------------------------------------------------------------------------

class Search:
    """Everything a checkpoint holds, and the steps of the run."""

    def __init__(self, args, device, run, steps_in):
        self.args, self.device, self.run = args, device, run
        self.steps_in = steps_in            # batches per epoch of each kind of phase
        self.cuda = device.type == 'cuda'
        utils.set_seed(args.seed)
        self.space = spaces.get(args.space)
        self.model = self.space.supernet(net_of(args)).to(device)
        if self.cuda and args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.prior = self.model.build_prior(*lambdas(args))
        # The training steps may run compiled; everything else (curvature, state) uses the module.
        self.forward = compiled(self.model, device) if args.compile else self.model
        # The weights train with SGD throughout; the switches with proximal Adam, without weight
        # decay (the prior is their regulariser), and only in the search phases.
        self.weights, self.switches = self.model.weight_parameters(), self.model.switch_parameters()
        self.optimizer = torch.optim.SGD(self.weights, lr=args.learning_rate, momentum=args.momentum,
                                         weight_decay=args.weight_decay)
        self.switch_optimizer = ProxAdam(self.prior, args.switch_lr)
        self.phases = phases(args)
        self.phase, self.step = 0, 0        # position: index into phases, batches done in that phase
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)   # loss sum, hits, images
        self.history = []                   # one summary per finished iteration
        self.elapsed = 0.0                  # seconds of earlier sessions of this run

    def state_dict(self):
        # run_files: how far log.txt and metrics.jsonl were written, for a resumed run to rewind to.
        return dict(kind='search', run_files=self.run.sizes(),
                    args=vars(self.args), model=self.model.state_dict(), prior=self.prior.state_dict(),
                    optimizer=self.optimizer.state_dict(), switch_optimizer=self.switch_optimizer.state_dict(),
                    phase=self.phase, step=self.step,
                    sums=self.sums.cpu(), history=self.history, elapsed=self.elapsed + self.clock(),
                    rng=utils.get_rng_state())

    def load_state_dict(self, state, path):
        try:
            self.model.load_state_dict(state['model'])
            self.prior.load_state_dict(state['prior'])
            self.optimizer.load_state_dict(state['optimizer'])
            self.switch_optimizer.load_state_dict(state['switch_optimizer'])
            self.phase, self.step = state['phase'], state['step']
            self.sums = state['sums'].to(self.device)
            self.history, self.elapsed = state['history'], state['elapsed']
            utils.set_rng_state(state['rng'])
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise utils.UserError(f'checkpoint {path} does not fit this search: {type(e).__name__}: '
                                  f'{" ".join(str(e).split())}') from e

    def start_clock(self):
        self.t0 = time.time()

    def clock(self):
        return time.time() - self.t0

    def save(self):
        utils.save_checkpoint(self.state_dict(), self.run.file('checkpoint.pt'))

    # -- training ------------------------------------------------------------------------------------

    def train_step(self, x, y, search):
        """One step of the weights (SGD) and, in a search phase, of the switches (proximal Adam)."""
        if self.cuda and self.args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda and self.args.amp):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.switch_optimizer.zero_grad()
        loss.backward()
        if self.args.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.weights, self.args.grad_clip)
        self.optimizer.step()
        if search:
            self.switch_optimizer.step()        # the penalty is its proximal part
        # Left on the device: reading them every step would make the host wait for the GPU.
        self.sums += torch.stack([loss.detach().double() * len(y),
                                  (logits.argmax(1) == y).sum().double(),
                                  loss.new_full((), len(y), dtype=torch.float64)])   # filled on the device

    def train_phase(self, batches, kind, epoch):
        """The rest of one epoch, from self.step on; checkpoints every --checkpoint_freq steps."""
        args, search = self.args, kind == 'search'
        for sw in self.switches:
            sw.requires_grad_(search)
        self.model.train()
        n, start, tic = self.steps_in[kind], self.step, time.time()
        # The batches of a pass are a fixed function of (seed, epoch): a resumed phase regenerates
        # the ones it had done and skips them, so it continues with exactly the same data.
        self.model.set_op_dropout(args.op_dropout)
        for i, (x, y) in enumerate(passes(batches, epoch * n, n)):
            if i < start:
                continue
            self.model.set_aux_skip(args.aux_skip * (1 - i / n if search else 1))
            self.train_step(x, y, search)
            if args.compile and i == start:
                if self.cuda:
                    torch.cuda.synchronize(self.device)
                self.run.log(f'{phase_name(kind, epoch)}: first step {time.time() - tic:.1f} s (compilation '
                             f'included)')
            self.step = i + 1
            if self.step % args.report_freq == 0 or self.step == n:
                self.report(kind, epoch, n, start, tic)
            if args.checkpoint_freq and self.step % args.checkpoint_freq == 0 and self.step < n:
                self.check_finite(kind)         # never replace a good checkpoint with a diverged one
                self.save()

    def check_finite(self, kind):
        utils.check_finite(self.sums[0], f'{kind} training loss at step {self.step}')

    def report(self, kind, epoch, n, start, tic):
        self.check_finite(kind)
        loss, hits, images = self.sums.tolist()
        seconds = time.time() - tic
        rate = (self.step - start) * self.args.batch_size / max(seconds, 1e-9)
        left = n - self.step + sum(len_of for len_of in self.steps_after_phase())
        eta = left * self.args.batch_size / max(rate, 1e-9)
        name = phase_name(kind, epoch)
        penalty = f'  penalty {self.prior.penalty().item():.4f}' if kind == 'search' else ''
        self.run.log(f'{name}  step {self.step}/{n}  loss {loss / images:.4f}  acc '
                     f'{100 * hits / images:.2f}%{penalty}  {rate:.0f} img/s  ETA {utils.format_time(eta)}')
        self.run.metric(phase=kind, epoch=epoch + 1, step=self.global_step(), train_loss=loss / images,
                        train_acc=100 * hits / images, images_per_s=rate)

    def position(self):
        """Where the run stands, as its log lines count: 'search iteration 1 at step 5/72'."""
        if self.phase >= len(self.phases):
            return 'the finished search'
        kind, epoch = self.phases[self.phase]
        return f'{phase_name(kind, epoch)} at step {self.step}/{self.steps_in[kind]}'

    def steps_after_phase(self):
        return [self.steps_in[kind] for kind, _ in self.phases[self.phase + 1:]]

    def global_step(self):
        return sum(self.steps_in[kind] for kind, _ in self.phases[:self.phase]) + self.step

    # -- the Bayesian update -------------------------------------------------------------------------

    def update(self, curvature_batches, iteration):
        """Curvature, HARD update and pruning after a switch epoch; returns the iteration's summary."""
        args = self.args
        tic = time.time()
        curvature_batches.set_epoch(iteration)
        self.model.set_aux_skip(0.)
        curv = self.curvature(curvature_batches)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.time() - tic
        self.prior.update(curv, rule=args.update)
        before = gamma_rows(self.model, self.prior)                         # before pruning zeroes w
        self.relevance = relevance(before)
        self.norm_at_update = {r['key']: r['norm'] for r in before}
        newly = self.prior.prune(args.threshold)
        rows = gamma_rows(self.model, self.prior)
        live = count_live_ops(rows, derive.cell_types(rows, self.space))
        summary = dict(iteration=iteration + 1, curvature_s=seconds, pruned=len(newly),
                       live_groups=int((~self.prior.pruned).sum()), groups=len(self.prior.keys),
                       live_ops=live)
        left = ops_left(live)
        self.run.log(f'search iteration {iteration + 1}: {args.hessian} curvature on '
                     f'{args.hessian_batches} batches in {utils.format_time(seconds)}; pruned {len(newly)} '
                     f'switch groups, {summary["live_groups"]}/{summary["groups"]} live; ops left: {left}')
        self.run.metric(phase='update', step=self.global_step(), **summary)
        return summary


    def curvature(self, batches):
        """{switch name: curvature} by --hessian; 'constant' puts the Fisher's mean over all live
        switch entries in place of each entry's own."""
        method = 'fisher' if self.args.hessian == 'constant' else self.args.hessian
        curv = switch_curvature(self.model, itertools.islice(batches, self.args.hessian_batches), method)
        if self.args.hessian == 'constant':
            modules = dict(self.model.named_modules())
            live = torch.cat([h[modules[name].mask != 0].flatten().double() for name, h in curv.items()])
            mean = live.mean() if len(live) else torch.zeros((), dtype=torch.float64)
            curv = {name: torch.full_like(h, mean.item()) for name, h in curv.items()}
        return curv


def relevance(rows):
    """{group key: sum_c h_c w_c^2 / lambda}: twice the loss (to second order) that zeroing the group's
    switches would cost, in units of the temperature. The evidence rule keeps a one-member group
    exactly when it exceeds 1."""
    return {r['key']: sum(h * w * w for h, w in zip(r['curvatures'], r['values'])) / r['lam'] for r in rows}


def passes(batches, first, n):
    """n batches from batch `first` on of the endless sequence of passes over `batches` (pass e is
    the one of epoch e): the phases of a kind read that sequence one after another."""
    epoch, skip = divmod(first, len(batches))
    while n > 0:
        batches.set_epoch(epoch)
        for i, batch in enumerate(batches):
            if i >= skip:
                yield batch
                n -= 1
                if n == 0:
                    return
        epoch, skip = epoch + 1, 0


def phase_name(kind, epoch):
    return f'warmup {epoch + 1}' if kind == 'warmup' else f'search iteration {epoch + 1}'


def ops_left(live):
    """'normal 40/98, reduce 37/98'; for a network of many cells, the total and the range per cell."""
    types = [k for k in live if not k.endswith('_total')]
    if len(types) <= 4:
        return ', '.join(f'{t} {live[t]}/{live[t + "_total"]}' for t in types)
    counts = [live[t] for t in types]
    return (f'{sum(counts)}/{sum(live[t + "_total"] for t in types)} in {len(types)} cells '
            f'({min(counts)}-{max(counts)} per cell)')


def count_live_ops(rows, cell_types=derive.CELL_TYPES):
    """Unpruned op groups per cell type (of a tied search; untied: summed over cells)."""
    out = {k: 0 for t in cell_types for k in (t, t + '_total')}
    for row in rows:
        if row['op'] is not None:
            out[row['cell_type'] + '_total'] += 1
            out[row['cell_type']] += not row['pruned']
    return out


# ----------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def gamma_rows(model, prior):
    """The prior's table, each row with its position (cell_type, src, dst, op) and member switch values."""
    where = {d['key']: d for d in model.switch_info()}
    modules = dict(model.named_modules())
    rows = prior.table()
    for row in rows:
        d = where[row['key']]
        row.update(cell_type=d['cell_type'], src=d['src'], dst=d['dst'], op=d['op'])
        row['values'] = [modules[name].value().flatten()[i].item() for name, i in row['members']]
    return rows


def write_gamma(search, iteration):
    args = search.args
    lam_origin, lam_child = lambdas(args)
    rows = gamma_rows(search.model, search.prior)
    for row in rows:
        row.update(relevance=search.relevance[row['key']], norm_at_update=search.norm_at_update[row['key']])
    doc = dict(space=args.space, threshold=args.threshold, lambda_origin=lam_origin, lambda_child=lam_child,
               hessian=args.hessian, update=args.update, select=args.select, iteration=iteration + 1, tied=args.tie,
               net=net_of(args), groups=rows)
    if iteration + 1 == args.iterations:
        for line in rescue_empty_cells(doc):
            search.run.log(line)
    utils.write_text_atomic(search.run.file('gamma.json'), json.dumps(doc, indent=1) + '\n')
    derive.plot_gamma(rows, search.run.file('gamma.png'), args.threshold, search.space)
    return doc


def rescue_empty_cells(doc):
    """A cell that the threshold rule leaves empty keeps the one operation it can best justify: the
    op on an edge from an input node into an output node with the largest relevance (ties: curvature)
    among those the last update pruned. Marks those rows (and their edges) alive in doc; returns what
    it says."""
    space = derive.space_of(doc)
    if space.may_be_empty:
        return []
    said, tables = [], derive.cell_tables(doc['groups'], space)
    for cell_type in tables:
        try:
            derive.derive_cell(tables[cell_type], cell_type, threshold=doc['threshold'], space=space,
                               select=doc['select'])
            continue
        except utils.UserError:
            pass
        rows = {r['key']: r for r in doc['groups']}
        last = [r for r in doc['groups'] if r['cell_type'] == cell_type and r['op'] is not None
                and r['src'] in space.inputs and (space.outputs is None or r['dst'] in space.outputs)
                and r.get('pruned_at') == doc['iteration']]
        if not last:
            continue                        # nothing the last update decided: derivation will say so
        best = max(last, key=lambda r: (r['relevance'], r['curvature']))
        for row in (best, rows[best['key'].rsplit('/', 1)[0]]):
            row.update(pruned=False, rescued=True, gamma=max(row['gamma_at_prune'], doc['threshold'], 1e-12))
        said.append(f'the {cell_type} cell would be empty at threshold {doc["threshold"]:g}: it keeps its most '
                    f'relevant operation, {best["op"]} {best["src"]}->{best["dst"]} (relevance '
                    f'{best["relevance"]:.3g}); search with a smaller lambda for a larger cell')
    return said


def write_genotype(search, doc):
    """Derive the cell from gamma.json as derive.py would; returns the genotype."""
    genotype = derive.derive(doc)
    literal = derive.write_genotype(genotype, search.run.path,
                                    f'derived by search.py, threshold {search.args.threshold:g}')
    derive.plot_genotype(genotype, search.run.path)
    return genotype, literal


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------

def configure(argv):
    """(args, checkpoint state or None): a new run's flags, or a resumed run's own with the flags the
    user gives again (only RUN_FLAGS may differ)."""
    parser = build_parser()
    args, given = parser.parse(argv)
    if not args.resume:
        space_defaults(args)
        check_args(args)
        args.save = args.save or f'runs/search-{time.strftime("%Y%m%d-%H%M%S")}'
        return args, None
    if args.save is None:
        raise utils.UserError('--resume needs --save RUN_DIR, the search to continue')
    path = Path(args.save) / 'checkpoint.pt'
    state = utils.load_checkpoint(path)
    utils.require_kind(state, 'search', path)
    if not isinstance(state.get('args'), dict):
        raise utils.UserError(f'{path} is not a checkpoint of search.py (it holds no arguments)')
    stored = argparse.Namespace(**utils.resumed_args(parser, state['args'], given, RUN_FLAGS))
    if stored.tie is None:      # a checkpoint of the days of --untie
        stored.tie = not state['args'].get('untie', False)
    space_defaults(stored)      # flags the run predates take their defaults, which depend on --space
    check_args(stored)
    return stored, state


def open_run(args, state):
    """The run directory; a resumed run's log and metrics go back to where its checkpoint was written."""
    rewind = state.get('run_files') if state is not None else None
    return utils.RunDir(args.save, args, resume=args.resume, rewind=rewind)


def resume(search, state, run):
    search.load_state_dict(state, run.file('checkpoint.pt'))
    if 'run_files' not in state:
        # Written before checkpoints recorded the files' sizes: drop the metrics of later steps.
        utils.trim_metrics(run.file('metrics.jsonl'), lambda r: r.get('step', 0) <= search.global_step())
    run.log(f'resumed in {search.position()}')


def sample_based(argv):
    """Whether the command asks for a sample-based method (tabular.py runs it): by --method, or for
    --resume by the run directory's own method."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--method')
    pre.add_argument('--save')
    pre.add_argument('--resume', action='store_true')
    known, _ = pre.parse_known_args(argv)
    method = known.method
    if method is None and known.resume and known.save:
        try:
            method = json.loads((Path(known.save) / 'args.json').read_text()).get('method')
        except (OSError, ValueError, AttributeError):
            method = None
    return method in tabular.METHODS


def main(argv=None):
    if sample_based(argv):
        return tabular.main(argv)
    args, state = configure(argv)
    device = utils.get_device(args.gpu, args.deterministic)
    data = make_data(args, device)          # before the run directory: bad data leaves nothing behind
    run = open_run(args, state)
    search = Search(args, device, run, dict(warmup=len(data['warmup']),
                                            search=args.switch_steps or len(data['search'])))
    if state is not None:
        resume(search, state, run)
        state = None
    else:
        lam_origin, lam_child = lambdas(args)
        run.log(f'BayesNAS search in the {args.space} space: {args.layers} {search.space.layers_means}, '
                f'{args.init_channels} channels, {utils.count_params(search.model) / 1e6:.2f}M weights, {len(search.prior.keys)} switch '
                f'groups; lambda {lam_origin:g} (edges) / {lam_child:g} (ops), threshold '
                f'{args.threshold:g}, curvature {args.hessian}')
        run.log(f'device {device}; {len(data["warmup"].x)} warm-up / {len(data["search"].x)} switch '
                f'images, batch {args.batch_size}, {search.steps_in["search"]} switch steps per iteration; '
                f'run directory {args.save}')
    search.start_clock()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)

    doc = None
    while search.phase < len(search.phases):
        kind, epoch = search.phases[search.phase]
        search.train_phase(data[kind], kind, epoch)
        if kind == 'search':
            search.history.append(search.update(data['curvature'], epoch))
            doc = write_gamma(search, epoch)
        search.phase, search.step = search.phase + 1, 0
        search.sums.zero_()
        search.save()
        utils.plot_curves(run.file('metrics.jsonl'), run.file('curves.png'), ['train_loss', 'train_acc'])
    if doc is None:             # resumed a finished search: its gamma table is on disk
        doc = derive.load_gamma(args.save)

    total = search.elapsed + search.clock()
    run.log(f'search finished in {utils.format_time(total)}, peak memory '
            f'{utils.peak_memory_mib(device):.0f} MiB ({"GPU" if device.type == "cuda" else "process"})')
    genotype, literal = write_genotype(search, doc)
    if args.benchmark is not None:
        run.log(derive.lookup(args.benchmark, genotype))
    files = ', '.join(derive.outputs(search.space))
    if args.space == 'proxyless':
        net = model_search.ProxylessNetwork(genotype)
        run.log(f'derived network: {utils.count_params(net) / 1e6:.3f}M parameters, '
                f'{utils.count_macs(net, (3, 32, 32)) / 1e6:.1f}M multiply-adds per image')
    run.log(f'derived {"genotype" if args.space == "darts" else "architecture"} ({files}):\n{literal}')
    return dict(genotype=genotype, history=search.history, seconds=total, save=args.save)


if __name__ == '__main__':
    utils.cli(main)
