"""BayesNAS (Zhou, Yang, Wang, Pan, ICML 2019) as a search method of search.py: the switch-augmented
supernet, trained under hierarchical ARD (HARD) priors and pruned with a Laplace approximation.

    python search.py --gpu 0                                 # the default search (this method)
    python search.py --space nb201 --benchmark TABLE.csv     # a NAS-Bench-201 cell, looked up
    python search.py --lambda 0.03 --save runs/search-l03    # a sparser cell
    python derive.py runs/search-l03 --topk 2                # a DARTS-comparable cell afterwards

The protocol (the paper's Algorithm 1 where it states one):
  1. warm-up: --warmup_epochs epochs of ordinary training of the weights (switches frozen at 1) on
     the first --warmup_portion of the (shuffled) training set, with cutout;
  2. --iterations times: one epoch (or --switch_steps steps) of joint training of weights and
     switches on the rest of the training set, minimising cross-entropy + lambda * sum_g omega_g
     ||w_g|| (the HARD prior's re-weighted group penalty), then the curvature of the loss w.r.t. every
     switch (--hessian, on --hessian_batches batches of the same part, without augmentation, in eval
     mode), the update of gamma and omega with the HARD couplings, and pruning of every switch group
     whose effective gamma is 0 or below --threshold (its ops are no longer computed);
  3. derivation (derive.py): every op that survived, where it lies on a path from an input to the
     output; in the NAS-Bench-201 space the strongest surviving op of each edge; in the proxyless
     space the strongest surviving op of each edge of every block's trees. A cell the threshold would
     leave empty keeps its single most relevant operation, and the log says so (a proxyless half may
     be empty: its block still computes).
The prior starts at gamma = omega = 1. The two parts of the training set are disjoint and the test set
is never read.

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

What it adds to the run directory: gamma.json (per switch group by cell type, edge and op: gamma,
omega, curvature per member, posterior variance, switch values, relevance = sum h w^2 / lambda, and
for pruned groups the gamma and iteration at which they went) and gamma.png (gamma per edge and op).
"""
import argparse
import itertools
import json
import math
import time

import torch
import torch.nn.functional as F

import derive
import model_search
import utils
from hessian import METHODS, RULES, ProxAdam, switch_curvature


# ----------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------

def add_flags(p):
    g = p.add_argument_group('BayesNAS (--method bayesnas)')
    g.add_argument('--tie', action=argparse.BooleanOptionalAction, default=None, help='one switch group '
                   'per position, shared by the cells of a type (proxyless: by the blocks of a stage); '
                   '--no-tie: one per cell, so that cells may differ (default: tied; proxyless: not)')
    g.add_argument('--lambda', dest='lam', type=float, default=None, help='temperature lambda of all '
                   'switches, a loss scale: larger is sparser (default: darts 0.01, nb201 and proxyless '
                   '0.005; see docs/results.md)')
    g.add_argument('--lambda_origin', type=float, default=None, help='lambda of the edge (parent) '
                   'switches (default: --lambda)')
    g.add_argument('--lambda_child', type=float, default=None, help='lambda of the op (child) switches '
                   '(default: --lambda)')
    g.add_argument('--switch_lr', type=float, default=None, help='learning rate of the switches '
                   '(proximal Adam, see bayesnas.py; default: darts 0.002, nb201 and proxyless 0.01)')
    g.add_argument('--paper', action='store_true', help="the paper's algorithm where this project departs "
                   'from it: --update reweight --hessian recursive --aux_skip 0 --op_dropout 0 --select gamma '
                   '(flags given beside it win)')
    g.add_argument('--hessian', choices=METHODS + ('constant',), default=None, help='curvature '
                   "estimator: Monte-Carlo Fisher (default), the exact GGN diagonal, the paper's layer-wise "
                   "recursion, or 'constant': the Fisher's mean over all switches in place of every "
                   "switch's own (an ablation: the decision then rests on switch magnitudes alone)")
    g.add_argument('--update', choices=RULES, default=None, help="the prior update: 'evidence' "
                   '(default: gamma maximises the Laplace evidence, so a group is pruned when the loss it '
                   "is worth is within lambda) or 'reweight' (the paper's gamma = ||w|| / omega); see "
                   'bayesnas.py')
    g.add_argument('--hessian_batches', type=int, default=20, help='training batches the curvature is '
                   'averaged over (20)')
    g.add_argument('--cutout', action=argparse.BooleanOptionalAction, default=True,
                   help='cutout during the warm-up, as in the paper (default: on)')
    g.add_argument('--cutout_length', type=int, default=16, help='cutout square side (16)')
    g.add_argument('--warmup_epochs', type=int, default=1, help='epochs of weight-only training (1)')
    g.add_argument('--warmup_portion', type=float, default=0.1, help='share of the training set for the '
                   'warm-up; the switches train on the rest (0.1, as the paper; 0 needs --warmup_epochs 0)')
    g.add_argument('--iterations', type=int, default=1, help='joint epoch + curvature + update + prune '
                   'rounds (paper: 1)')
    g.add_argument('--switch_steps', type=int, default=None, help='joint training steps of each iteration '
                   '(default: one pass over the switch-training part, as the paper). The steps run through '
                   'consecutive passes, so on a small data set a larger value gives the switch phase the '
                   'length of a full search, and with --iterations T a smaller one cuts the epoch into rounds')
    g.add_argument('--select', choices=derive.SELECT, default=None, help="what an edge's surviving ops "
                   "compete by in the derivation: 'gamma' (the paper), 'relevance' (the loss the op is "
                   "worth to second order, which the coupling to its edge does not cap) or 'removal' (that "
                   'loss measured: the search evaluates the supernet without each switch group on the '
                   'curvature batches, one evaluation per group); gamma breaks ties (default: gamma)')
    g.add_argument('--aux_skip', type=float, default=None, help='weight of an auxiliary identity on every '
                   'stride-1 supernet edge, outside the switches and never a candidate: constant in the '
                   'warm-up, decayed linearly to 0 over each switch phase, so that the update sees the '
                   'supernet without it (0: none, as the paper and the default)')
    g.add_argument('--op_dropout', type=float, default=None, help='in training, drop each op of each edge '
                   'with this probability per step (at least one stays; the rest scaled up), so that each '
                   'op must work without the others (0: none, as the paper and the default)')
    g.add_argument('--threshold', type=float, default=0.0, help='also prune switch groups whose effective '
                   'gamma falls below this (default 0: a group goes when its gamma is 0, which the evidence '
                   'update decides)')


# The choices of the published algorithm that this project's defaults depart from (--paper).
PAPER = dict(update='reweight', hessian='recursive', aux_skip=0.0, op_dropout=0.0, select='gamma')


def method_defaults(space):
    """The defaults of PAPER's flags in a space (docs/results.md: how they were chosen). The same in
    every space so far: the measured alternatives (--aux_skip, --op_dropout, --select relevance) have
    not yet found better NAS-Bench-201 cells at the full protocol."""
    return dict(update='evidence', hessian='fisher', aux_skip=0.0, op_dropout=0.0, select='gamma')


def defaults(args, space):
    """Fill in the flags whose default depends on --space (--lambda, --switch_lr, --tie) or on --paper
    (PAPER's)."""
    chosen = PAPER if getattr(args, 'paper', False) else method_defaults(args.space)
    for flag, value in chosen.items():
        if getattr(args, flag, None) is None:
            setattr(args, flag, value)
    args.lam = space.lam if args.lam is None else args.lam
    args.switch_lr = space.switch_lr if args.switch_lr is None else args.switch_lr
    args.tie = space.tie if args.tie is None else args.tie


def rules(a):
    """(ok, message) for every flag of this method."""
    out = [
        (a.switch_lr > 0, f'--switch_lr must be positive, got {a.switch_lr}'),
        (a.space != 'proxyless' or a.hessian != 'recursive',
         "--hessian recursive walks the DARTS and NAS-Bench-201 supernets only; the proxyless space's "
         'residual blocks need fisher or ggn'),
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
    ]
    for flag in ('lam', 'lambda_origin', 'lambda_child'):
        value = getattr(a, flag)
        name = '--lambda' if flag == 'lam' else f'--{flag}'
        out.append((value is None or (math.isfinite(value) and value > 0),
                    f'{name} must be a positive number, got {value}'))
    return out


def lambdas(a):
    """(lambda of edge switches, lambda of op switches)."""
    return (a.lam if a.lambda_origin is None else a.lambda_origin,
            a.lam if a.lambda_child is None else a.lambda_child)


# ----------------------------------------------------------------------------------------------------
# Data and phases
# ----------------------------------------------------------------------------------------------------

def parts(args):
    """The harness's split of the training set: (the first part's share, the flag that sets it, {part:
    its half ('first' or 'rest'), augmentation, drop_last, seed offset, whether a phase reads it, and
    its name in messages}). The weights warm up on the first part; the switches train, and their
    curvature is measured, on the rest."""
    aug = dict(crop_pad=4, flip=True)
    return args.warmup_portion, '--warmup_portion', {
        'search': ('rest', aug, True, 1, True, 'switch-training'),
        'warmup': ('first', dict(aug, cutout=args.cutout_length if args.cutout else 0), True, 0,
                   args.warmup_epochs > 0, 'warm-up'),
        # The curvature is measured on the model as it is, on plain images of the same part.
        'curvature': ('rest', None, False, 2, False, 'curvature'),
    }


def phases(args):
    """The run as a list of (kind, epoch): warm-up epochs, then one switch epoch per iteration."""
    return [('warmup', e) for e in range(args.warmup_epochs)] + [('search', i) for i in range(args.iterations)]


def steps(args, data):
    """Batches per phase of each kind."""
    return dict(warmup=len(data['warmup']), search=args.switch_steps or len(data['search']))


def describe_data(args, data, steps):
    """The data of a run, for its log."""
    return (f'{len(data["warmup"].x)} warm-up / {len(data["search"].x)} switch images, batch '
            f'{args.batch_size}, {steps["search"]} switch steps per iteration')


def phase_name(kind, epoch):
    return f'warmup {epoch + 1}' if kind == 'warmup' else f'search iteration {epoch + 1}'


# ----------------------------------------------------------------------------------------------------
# Op dropout: the method's gate on the supernet's cells
# ----------------------------------------------------------------------------------------------------

class OpDropout:
    """A cell gate (model_search.set_gate): in training, each live op of an edge drops out with
    probability p, at least one stays, and the survivors are scaled by live / kept so that the edge's
    output keeps its size. Ops that drop are not computed."""

    def __init__(self, p):
        self.p = p

    def __call__(self, cell, live):
        if not (cell.training and self.p > 0):
            return [(ops, 1.) for ops in live]
        keep = (torch.rand(sum(len(ops) for ops in live)) >= self.p).tolist()
        out, i = [], 0
        for ops in live:
            kept = [k for k, on in zip(ops, keep[i:i + len(ops)]) if on]
            if ops and not kept:
                kept = [ops[int(torch.randint(len(ops), ()))]]
            out.append((kept, len(ops) / max(len(kept), 1)))
            i += len(ops)
        return out


# ----------------------------------------------------------------------------------------------------
# The method: the supernet, its prior, the switches' optimiser and the Bayesian update
# ----------------------------------------------------------------------------------------------------

class BayesNAS:
    """What search.py's harness asks of a method (search.py says what each part is for)."""

    name = 'BayesNAS'

    def __init__(self, args, space, device, run, data=None):
        self.args, self.space, self.device, self.run = args, space, device, run
        self.model = space.supernet(net_of(args)).to(device)
        self.prior = self.model.build_prior(*lambdas(args))
        self.switches = self.model.switch_parameters()
        self.switch_optimizer = ProxAdam(self.prior, args.switch_lr)
        self.doc = None                     # the last gamma table (gamma.json)

    def describe(self):
        lam_origin, lam_child = lambdas(self.args)
        return (f'{len(self.prior.keys)} switch groups; lambda {lam_origin:g} (edges) / {lam_child:g} (ops), '
                f'threshold {self.args.threshold:g}, curvature {self.args.hessian}')

    def weight_parameters(self):
        return self.model.weight_parameters()

    def state_dict(self):
        return dict(prior=self.prior.state_dict(), switch_optimizer=self.switch_optimizer.state_dict())

    def load_state_dict(self, state):
        self.prior.load_state_dict(state['prior'])
        self.switch_optimizer.load_state_dict(state['switch_optimizer'])

    # -- training --------------------------------------------------------------------------------------

    def start_phase(self, kind):
        """The switches train only in the search phases; op dropout gates every phase."""
        for sw in self.switches:
            sw.requires_grad_(kind == 'search')
        model_search.set_gate(self.model, OpDropout(self.args.op_dropout) if self.args.op_dropout else None)

    def before_step(self, kind, i, n):
        """The auxiliary identity: constant in the warm-up, decayed to 0 over a switch phase."""
        self.model.set_aux_skip(self.args.aux_skip * (1 - i / n if kind == 'search' else 1))

    def regulariser(self, kind):
        """None: the prior's penalty is the proximal part of the switches' optimiser, not a loss term."""
        return None

    def optimizers(self, kind):
        """The optimisers that step beside the weights' SGD in a phase of this kind."""
        return [self.switch_optimizer] if kind == 'search' else []

    def status(self, kind):
        """What the log shows beside the loss: in a search phase, the prior's proximal penalty."""
        return f'  penalty {self.prior.penalty().item():.4f}' if kind == 'search' else ''

    # -- the Bayesian update ---------------------------------------------------------------------------

    def end_phase(self, kind, epoch, data, step):
        """After a switch epoch: curvature, HARD update, pruning and the gamma table; returns the
        iteration's summary (None after a warm-up epoch). step: the run's global step, for metrics."""
        if kind != 'search':
            return None
        summary = self.update(data['curvature'], epoch, step)
        self.doc = write_gamma(self, epoch)
        return summary

    def update(self, curvature_batches, iteration, step):
        """Curvature, HARD update and pruning after a switch epoch; returns the iteration's summary."""
        args = self.args
        tic = time.time()
        curvature_batches.set_epoch(iteration)
        self.model.set_aux_skip(0.)
        curv = self.curvature(curvature_batches)
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        seconds = time.time() - tic
        self.prior.update(curv, rule=args.update)
        before = gamma_rows(self.model, self.prior)                         # before pruning zeroes w
        self.relevance = relevance(before)
        if args.select == 'removal':
            curvature_batches.set_epoch(iteration)
            tic = time.time()
            self.removal = self.removal_loss(before, itertools.islice(curvature_batches, args.hessian_batches))
            self.run.log(f'search iteration {iteration + 1}: the loss of removing each of {len(before)} switch '
                         f'groups, measured in {utils.format_time(time.time() - tic)}')
        self.norm_at_update = {r['key']: r['norm'] for r in before}
        newly = self.prior.prune(args.threshold)
        rows = gamma_rows(self.model, self.prior)
        live = count_live_ops(rows, derive.cell_types(rows, self.space))
        summary = dict(iteration=iteration + 1, curvature_s=seconds, pruned=len(newly),
                       live_groups=int((~self.prior.pruned).sum()), groups=len(self.prior.keys),
                       live_ops=live)
        self.run.log(f'search iteration {iteration + 1}: {args.hessian} curvature on '
                     f'{args.hessian_batches} batches in {utils.format_time(seconds)}; pruned {len(newly)} '
                     f'switch groups, {summary["live_groups"]}/{summary["groups"]} live; ops left: '
                     f'{ops_left(live)}')
        self.run.metric(phase='update', step=step, **summary)
        return summary

    @torch.no_grad()
    def removal_loss(self, rows, batches):
        """{group key: 2 (L without the group - L) / lambda}: the loss that removing a group's ops
        costs, measured on the curvature batches in eval mode (relevance approximates it to second
        order, in the same units). Groups already pruned cost 0."""
        batches = list(batches)
        modules = dict(self.model.named_modules())
        was_training = self.model.training
        self.model.eval()

        def loss():
            total = sum(F.cross_entropy(self.model(x), y, reduction='sum').item() for x, y in batches)
            return total / sum(len(y) for _, y in batches)
        base, out = loss(), {}
        for row in rows:
            if row['pruned']:
                out[row['key']] = 0.0
                continue
            members = [(modules[name].s.view(-1), i) for name, i in row['members']]
            kept = [s[i].clone() for s, i in members]
            for s, i in members:
                s[i] = 0.
            out[row['key']] = 2 * (loss() - base) / row['lam']
            for (s, i), value in zip(members, kept):
                s[i] = value
        self.model.train(was_training)
        return out

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

    # -- the result ------------------------------------------------------------------------------------

    def genotype(self):
        """(genotype, note for genotype.py): the cell derived from gamma.json as derive.py would."""
        doc = self.doc if self.doc is not None else derive.load_gamma(self.run.path)
        return derive.derive(doc), f'derived by search.py, threshold {self.args.threshold:g}'


def net_of(args):
    """The supernet's size as spaces.Space.supernet takes it (and gamma.json records it)."""
    return dict(C=args.init_channels, layers=args.layers, alpha=args.alpha, classes=10, tie=args.tie)


def relevance(rows):
    """{group key: sum_c h_c w_c^2 / lambda}: twice the loss (to second order) that zeroing the group's
    switches would cost, in units of the temperature. The evidence rule keeps a one-member group
    exactly when it exceeds 1."""
    return {r['key']: sum(h * w * w for h, w in zip(r['curvatures'], r['values'])) / r['lam'] for r in rows}


def ops_left(live):
    """'normal 40/98, reduce 37/98'; for a network of many cells, the total and the range per cell."""
    types = [k for k in live if not k.endswith('_total')]
    if len(types) <= 4:
        return ', '.join(f'{t} {live[t]}/{live[t + "_total"]}' for t in types)
    counts = [live[t] for t in types]
    return (f'{sum(counts)}/{sum(live[t + "_total"] for t in types)} in {len(types)} cells '
            f'({min(counts)}-{max(counts)} per cell)')


def count_live_ops(rows, cell_types):
    """Unpruned op groups per cell type (of a tied search; untied: summed over cells)."""
    out = {k: 0 for t in cell_types for k in (t, t + '_total')}
    for row in rows:
        if row['op'] is not None:
            out[row['cell_type'] + '_total'] += 1
            out[row['cell_type']] += not row['pruned']
    return out


# ----------------------------------------------------------------------------------------------------
# The gamma table (gamma.json, gamma.png)
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


def write_gamma(method, iteration):
    args = method.args
    lam_origin, lam_child = lambdas(args)
    rows = gamma_rows(method.model, method.prior)
    for row in rows:
        row.update(relevance=method.relevance[row['key']], norm_at_update=method.norm_at_update[row['key']])
        if args.select == 'removal':
            row['removal'] = method.removal[row['key']]
    doc = dict(space=args.space, threshold=args.threshold, lambda_origin=lam_origin, lambda_child=lam_child,
               hessian=args.hessian, update=args.update, select=args.select, iteration=iteration + 1, tied=args.tie,
               net=net_of(args), groups=rows)
    if iteration + 1 == args.iterations:
        for line in rescue_empty_cells(doc):
            method.run.log(line)
    utils.write_text_atomic(method.run.file('gamma.json'), json.dumps(doc, indent=1) + '\n')
    derive.plot_gamma(rows, method.run.file('gamma.png'), args.threshold, space=method.space)
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


Method = BayesNAS      # what search.py builds
