"""Structural-sparsity compression of ordinary CNNs with BayesNAS switches and the HARD prior.

    python compress.py --model lenet5 --compare magnitude --save runs/lenet5
    python compress.py --model lenet5 --pretrained runs/lenet5/dense_model.pt --lambda 3e-3   # sparser
    python compress.py --model vgg16 --data data --gpu 0 --epochs 160 --learning_rate 0.1 \
        --batch_size 128 --iterations 3 --epochs_per_iteration 10 --finetune_epochs 40
    python compress.py --save runs/lenet5 --resume          # continue an interrupted run

Every prunable unit group of a CNN (the filters of a conv layer, the neurons of a hidden linear layer,
optionally the flattened inputs of the first linear layer) gets a switch (prune.py). A run:
  1. dense training for --epochs, or the dense weights of an earlier run (--pretrained);
  2. --iterations times: --epochs_per_iteration epochs of weights and switches with the penalty
     lambda * sum_g omega_g |s_g|, then the curvature of the training loss w.r.t. every switch
     (--hessian), the Laplace update of gamma and omega, and pruning of the units whose gamma falls
     below --threshold (a layer always keeps its strongest unit);
  3. fine-tuning of the network itself, at the weights' own rate: the switches are folded into them;
  4. physical pruning: the masked network becomes a smaller nn.Sequential with the same outputs;
  5. with --compare magnitude: the dense network pruned by weight norm to the same units per layer
     and fine-tuned for as many epochs as BayesNAS trained after the dense phase.
The test set is only measured, never used for a decision; --resume continues to the same result.

Why so (docs/results.md, "Compression (compress.py)", has the measurements):
  * The prior starts at gamma = omega = 1: the dense network fits its training images almost
    perfectly, so its curvature, and the penalty a first pass would give, are too small to prune.
  * SGD for the weights, cosine decay except while the switches train; proximal Adam without weight
    decay for the switches, for the reasons hessian.ProxAdam gives.
  * The curvature is the Monte-Carlo Fisher, as in search.py, so that lambda means the same in both.

Run directory (--save): log.txt, args.json, metrics.jsonl, checkpoint.pt, dense_model.pt (for
--pretrained), pruned_model.pt and magnitude_model.pt (load_pruned(path) gives an nn.Sequential),
report.json, units.png and curves.png.
"""
import argparse
import itertools
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import prune
import utils
from hessian import METHODS, HardPrior, ProxAdam, Switch, switch_curvature, switch_parameters, weight_parameters


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------

# Flags that say where and how a run executes, not what it computes: a resumed run may change them.
RUN_FLAGS = ('data', 'gpu', 'deterministic', 'report_freq', 'save', 'resume')


def build_parser():
    p = utils.Parser('compress.py', description='Structural-sparsity compression of LeNet/VGG with BayesNAS '
                                                'switches and the HARD prior (see the module docstring).')
    p.add_argument('--model', default='lenet300', choices=sorted(MODELS), help='network to compress')
    p.add_argument('--data', default='data', help='folder holding MNIST/raw (lenet300, lenet5) or '
                                                  'cifar-10-batches-py (vgg16) (default: data)')
    p.add_argument('--epochs', type=int, default=10, help='dense training epochs (0 needs --pretrained)')
    p.add_argument('--pretrained', default=None, help="dense_model.pt of an earlier run: skip dense training")
    p.add_argument('--iterations', type=int, default=3,
                   help='penalised training -> curvature -> update -> prune')
    p.add_argument('--epochs_per_iteration', type=int, default=2, help='penalised epochs per iteration')
    p.add_argument('--lambda', dest='lam', type=float, default=1e-3, help='temperature lambda (> 0) of the '
                   'HARD prior and weight of the penalty: larger is sparser')
    p.add_argument('--threshold', type=float, default=0.01, help='prune units whose gamma falls below this')
    p.add_argument('--switch_lr', type=float, default=0.01, help='Adam learning rate of the switches')
    p.add_argument('--hessian', default='fisher', choices=METHODS, help='curvature estimator (as search.py)')
    p.add_argument('--hessian_batches', type=int, default=20, help='training batches for the curvature')
    p.add_argument('--finetune_epochs', type=int, default=6, help='fine-tuning epochs after pruning')
    p.add_argument('--batch_size', type=int, default=64)
    p.add_argument('--learning_rate', type=float, default=0.05, help='SGD learning rate of the weights')
    p.add_argument('--momentum', type=float, default=0.9, help='SGD momentum of the weights')
    p.add_argument('--weight_decay', type=float, default=5e-4,
                   help='weight decay of the weights (switches get none)')
    p.add_argument('--compare', default='none', choices=('none', 'magnitude'),
                   help='magnitude: also prune the dense model by weight norm to the same units per layer')
    p.add_argument('--save', default=None, help='run directory (default runs/compress-MODEL-TIME)')
    p.add_argument('--resume', action='store_true', help='continue the run in --save')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--gpu', type=int, default=None, help='CUDA device (default: cuda:0 if present, else CPU)')
    p.add_argument('--deterministic', action='store_true', help='deterministic algorithms and no cuDNN '
                   'autotuning, so that a GPU run repeats exactly (slower; a CPU run always does)')
    p.add_argument('--report_freq', type=int, default=100, help='log every N steps (0: once per epoch)')
    return p


def check_args(a):
    """UserError for the first value out of range."""
    bounds = dict(lam='> 0', threshold='>= 0', learning_rate='> 0', switch_lr='> 0', momentum='in [0, 1)',
                  weight_decay='>= 0', batch_size='>= 1', hessian_batches='>= 1', report_freq='>= 0',
                  epochs='>= 0', iterations='>= 0', epochs_per_iteration='>= 0', finetune_epochs='>= 0')
    within = {'> 0': lambda v: v > 0, '>= 0': lambda v: v >= 0, '>= 1': lambda v: v >= 1,
              'in [0, 1)': lambda v: 0 <= v < 1}
    option = build_parser().option          # how the user writes a flag: --lambda for lam
    rules = [(within[bound](getattr(a, dest)), f'{option(dest)} must be {bound}, got {getattr(a, dest)}')
             for dest, bound in bounds.items()]
    rules.append((a.epochs != 0 or a.pretrained,
                  '--epochs 0 would compress an untrained network; train it (--epochs 1 or more) or give '
                  'its dense weights with --pretrained DENSE_MODEL.pt'))
    utils.check(rules)


# ----------------------------------------------------------------------------------------------------
# Models and data
# ----------------------------------------------------------------------------------------------------
# Nonlinearities are modules (nn.ReLU), so that the recursive curvature sees them, and every model is
# one flat nn.Sequential, so that prune.py places the switches and prunes for all of them.

def lenet300(num_classes=10):
    """LeNet-300-100: 784-300-100-10 fully connected."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, num_classes))


def lenet5(num_classes=10):
    """LeNet-5-Caffe: conv 20@5x5, pool, conv 50@5x5, pool, 800-500-10."""
    return nn.Sequential(nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, num_classes))


def vgg16(num_classes=10):
    """VGG-16 with BatchNorm for 32x32 inputs: 13 conv-BN-ReLU layers, 512-512 hidden, classifier."""
    layers, c_in = [], 3
    for v in (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'):
        if v == 'M':
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
            c_in = v
    layers += [nn.Flatten(), nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


# flat_switch: also put a switch on the flattened features that enter the first linear layer (for
# LeNet-300-100 these are the input pixels, as in the compression literature's 784-300-100). Another
# CNN goes here as a function returning one flat nn.Sequential (prune.py says of which layers), e.g.
# build=lambda: prune.chain(torchvision.models.vgg11_bn(num_classes=10)) for a torchvision network.
MODELS = {
    'lenet300': dict(build=lenet300, data='mnist', flat_switch=True),
    'lenet5': dict(build=lenet5, data='mnist', flat_switch=True),
    'vgg16': dict(build=vgg16, data='cifar10', flat_switch=False),
}

DATASETS = {
    'mnist': dict(load=utils.load_mnist, shape=(1, 28, 28), mean=utils.MNIST_MEAN, std=utils.MNIST_STD,
                  augment=None),
    'cifar10': dict(load=utils.load_cifar10, shape=(3, 32, 32), mean=utils.CIFAR_MEAN, std=utils.CIFAR_STD,
                    augment=dict(crop_pad=4, flip=True)),
}


class Built(NamedTuple):
    plain: nn.Sequential        # the model of MODELS
    switched: nn.Sequential     # the same layers with a hessian.Switch after every unit layer


def build(name):
    """A model of MODELS, plain and switched (sharing its layers)."""
    plain = MODELS[name]['build']()
    return Built(plain, prune.add_switches(plain, MODELS[name]['flat_switch']))


# ----------------------------------------------------------------------------------------------------
# The compression run
# ----------------------------------------------------------------------------------------------------

class Phase(NamedTuple):
    name: str       # as the log and metrics.jsonl call it: 'dense', 'iteration 2', ...
    kind: str       # 'dense', 'penalised', 'finetune' or 'magnitude'
    epochs: int


def keep_strongest(prior, threshold):
    """No layer may lose its last unit (the network would output a constant): if every live unit of a
    switch is below the threshold, the one with the largest gamma is raised to it."""
    # prior.gid holds the group index of every switch entry, switch after switch.
    for ids in prior.gid.split([sw.s.numel() for _, sw in prior.switches]):
        gamma, live = prior.gamma[ids], ~prior.pruned[ids]
        if live.any() and not (live & (gamma >= threshold)).any():
            prior.gamma[ids[torch.where(live, gamma, -math.inf).argmax()]] = threshold


class Compression:
    """State and phases of one run: the switched model, its prior, the optional baseline, the data.

    self.progress holds everything else that changes as the run goes (phase, epoch, optimiser states,
    the dense weights, results); with the model, prior, baseline and RNG states it is the checkpoint."""

    def __init__(self, args, run, device, data, dense=None):
        self.args, self.run, self.data = args, run, data
        self.data_spec = DATASETS[MODELS[args.model]['data']]
        utils.set_seed(args.seed)
        self.plain, self.model = build(args.model)
        if dense is not None:           # --pretrained, read and checked by read_dense
            self.plain.load_state_dict(dense)
        self.model.to(device)
        self.prior = HardPrior(self.model, args.lam)
        self.baseline = build(args.model).switched.to(device) if args.compare == 'magnitude' else None
        self.batches = self.batches_of('train', args.batch_size, drop_last=True,
                                       augment=self.data_spec['augment'], seed=args.seed)
        if len(self.batches) == 0:
            raise utils.UserError(f'--batch_size {args.batch_size} is larger than the training set '
                                  f'({len(self.data["train_x"])} images)')
        self.phases = [Phase('dense', 'dense', 0 if args.pretrained else args.epochs)]
        self.phases += [Phase(f'iteration {k}', 'penalised', args.epochs_per_iteration)
                        for k in range(1, args.iterations + 1)]
        self.phases.append(Phase('finetune', 'finetune', args.finetune_epochs))
        if args.compare == 'magnitude':     # as many epochs as BayesNAS trains after the dense phase
            self.phases.append(Phase('magnitude', 'magnitude', sum(p.epochs for p in self.phases[1:])))
        self.progress = dict(phase=0, epoch=0, optimizer=None, dense=None, results={}, elapsed=0.0)
        self.t0 = time.time()

    # -- checkpoints ---------------------------------------------------------------------------------

    def elapsed(self):
        return self.progress['elapsed'] + time.time() - self.t0

    def save(self):
        # run_files: how far log.txt and metrics.jsonl were written, for a resumed run to rewind to.
        state = dict(self.progress, elapsed=self.elapsed(), kind='compress', run_files=self.run.sizes(),
                     args=vars(self.args), model=self.model.state_dict(), prior=self.prior.state_dict(),
                     rng=utils.get_rng_state(),
                     baseline=None if self.baseline is None else self.baseline.state_dict())
        utils.save_checkpoint(state, self.run.file('checkpoint.pt'))

    def restore(self, state):
        try:
            self.model.load_state_dict(state['model'])
            self.prior.load_state_dict(state['prior'])
            if self.baseline is not None:
                self.baseline.load_state_dict(state['baseline'])
            self.progress = {k: state[k] for k in self.progress}
            utils.set_rng_state(state['rng'])
        except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as e:
            raise utils.UserError(f'checkpoint {self.run.file("checkpoint.pt")} does not fit this run: '
                                  f'{type(e).__name__}: {e}') from e
        self.t0 = time.time()

    # -- the phases ----------------------------------------------------------------------------------

    def execute(self):
        """Each phase: its start (if any) before the first epoch, the epochs, its end."""
        starts = {'finetune': self.start_finetune, 'magnitude': self.start_magnitude}
        ends = {'dense': self.end_dense, 'penalised': self.end_penalised, 'finetune': self.end_finetune,
                'magnitude': self.end_magnitude}
        while self.progress['phase'] < len(self.phases):
            name, kind, epochs = self.phases[self.progress['phase']]
            if kind in starts and self.progress['epoch'] == 0:
                starts[kind]()
            net = self.baseline if kind == 'magnitude' else self.model
            optimizers = self.optimizers(net, kind)
            while self.progress['epoch'] < epochs:
                self.train_one_epoch(name, kind, epochs, net, optimizers)
            ends[kind](name)
            self.progress.update(phase=self.progress['phase'] + 1, epoch=0, optimizer=None)
            self.save()

    def optimizers(self, net, kind):
        """[SGD for the weights, then ProxAdam in a penalised phase], fresh at a phase's start or as
        checkpointed. Switches only train in the penalised phases; elsewhere they are frozen."""
        penalised = kind == 'penalised'
        for p in switch_parameters(net):
            p.requires_grad_(penalised)
        optimizers = [torch.optim.SGD(weight_parameters(net), lr=self.args.learning_rate,
                                      momentum=self.args.momentum, weight_decay=self.args.weight_decay)]
        if penalised:
            optimizers.append(ProxAdam(self.prior, self.args.switch_lr))
        if self.progress['optimizer'] is not None:
            for opt, key in zip(optimizers, ('weights', 'switches')):
                opt.load_state_dict(self.progress['optimizer'][key])
        return optimizers

    def epochs_before(self, phase):
        return sum(p.epochs for p in self.phases[:phase])

    def train_one_epoch(self, name, kind, epochs, net, optimizers):
        """One pass over the training batches, every optimiser stepping after each backward pass."""
        e, n = self.progress['epoch'], len(self.batches)
        lr0, total = self.args.learning_rate, epochs * n
        # Its place in the data order: the baseline sees the batches BayesNAS saw after the dense phase.
        index = e + self.epochs_before(1 if kind == 'magnitude' else self.progress['phase'])
        self.batches.set_epoch(index)
        net.train()
        loss_m, acc_m = utils.AverageMeter(), utils.AverageMeter()
        for step, (x, y) in enumerate(self.batches):
            # The weights' rate: a cosine over the phase, constant while the switches settle with them.
            lr = lr0 if kind == 'penalised' else 0.5 * lr0 * (1 + math.cos(math.pi * (e * n + step) / total))
            optimizers[0].param_groups[0]['lr'] = lr       # the weights' SGD has one parameter group
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            utils.check_finite(loss, f'{name}: training loss')
            net.zero_grad()             # the optimisers' parameters are all the net's
            loss.backward()
            for opt in optimizers:
                opt.step()
            loss_m.update(loss.item(), len(y))
            acc_m.update(utils.accuracy(logits.detach(), y)[0], len(y))
            if self.args.report_freq and (step + 1) % self.args.report_freq == 0:
                self.run.log(f'{name} step {step + 1}/{n} loss {loss_m.avg:.4f} error {100 - acc_m.avg:.2f}% '
                             f'lr {lr:.4g}')
        loss, err = loss_m.avg, 100 - acc_m.avg
        states = [opt.state_dict() for opt in optimizers] + [None]
        self.progress.update(epoch=e + 1, optimizer=dict(weights=states[0], switches=states[1]))
        penalty = f' penalty {self.prior.penalty().item():.4f}' if kind == 'penalised' else ''
        self.run.log(f'{name} epoch {e + 1}/{epochs} train loss {loss:.4f} error {err:.2f}%{penalty}')
        pre = 'baseline_' if kind == 'magnitude' else ''
        self.run.metric(phase=name, epoch=index + 1, **{f'{pre}train_loss': loss, f'{pre}train_error': err})
        self.save()

    def batches_of(self, split, batch_size, shuffle=True, **kwargs):
        return utils.Batches(self.data[f'{split}_x'], self.data[f'{split}_y'], batch_size, shuffle=shuffle,
                             mean=self.data_spec['mean'], std=self.data_spec['std'], **kwargs)

    @torch.no_grad()
    def error(self, net):
        """Top-1 test error (%) in eval mode, the net's mode restored: measured, never used for a decision."""
        was_training, batches = net.training, self.batches_of('test', 500, shuffle=False)
        net.eval()
        wrong = sum((net(x).argmax(1) != y).sum().item() for x, y in batches)
        net.train(was_training)
        return 100.0 * wrong / max(len(batches.x), 1)

    def end_dense(self, name):
        self.progress['dense'] = {k: v.detach().clone() for k, v in self.plain.state_dict().items()}
        utils.save_checkpoint(dict(model=self.args.model, state_dict=self.progress['dense']),
                              self.run.file('dense_model.pt'))
        err = self.progress['results']['error_dense'] = self.error(self.model)
        self.run.log(f'dense model: test error {err:.2f}%')

    def end_penalised(self, name):
        """Curvature, Laplace update of gamma and omega, pruning (the module docstring's step 2)."""
        args = self.args
        batches = self.batches_of('train', args.batch_size, seed=args.seed + 1)
        batches.set_epoch(self.progress['phase'])
        curv = switch_curvature(self.model, itertools.islice(batches, args.hessian_batches), args.hessian)
        self.prior.update(curv)
        keep_strongest(self.prior, args.threshold)
        newly = self.prior.prune(args.threshold)
        units = prune.layer_units(self.model)
        record = dict(pruned=len(newly), units=[u.live for u in units], masked_error=self.error(self.model))
        self.progress['results'].setdefault('iterations', []).append(dict(iteration=name, **record))
        self.run.log(f'{name}: pruned {len(newly)} units, {prune.units_string(units, "total")} -> '
                     f'{prune.units_string(units, "live")}, masked test error {record["masked_error"]:.2f}%')
        self.run.metric(phase=name, epoch=self.epochs_before(self.progress['phase'] + 1), **record)

    def start_finetune(self):
        """The switches' values go into the weights: fine-tuning trains the pruned network itself."""
        prune.fold_switches(self.model)

    def export(self, net, filename, what, masked_key, pruned_key):
        """Write the physically pruned network to filename; keep and log the test errors of both."""
        res = self.progress['results']
        res[masked_key] = self.error(net)
        pruned = prune.physical_prune(net)
        save_pruned(self.args.model, net, pruned, self.run.file(filename))
        res[pruned_key] = self.error(pruned)
        self.run.log(f'{what} fine-tuned: test error masked {res[masked_key]:.2f}%, '
                     f'physically pruned {res[pruned_key]:.2f}%')

    def end_finetune(self, name):
        self.export(self.model, 'pruned_model.pt', 'BayesNAS', 'error_masked', 'error_pruned')

    def start_magnitude(self):
        """The dense weights, pruned by weight norm to the BayesNAS model's units per layer."""
        # Its switches are still as built (1, nothing masked) in every checkpoint before this phase's start.
        plain = nn.Sequential(*[m for m in self.baseline if not isinstance(m, Switch)])
        plain.load_state_dict(self.progress['dense'])
        prune.magnitude_prune(self.baseline, [u.live for u in prune.layer_units(self.model)])
        err = self.progress['results']['error_magnitude_before_finetune'] = self.error(self.baseline)
        units = prune.units_string(prune.layer_units(self.baseline), 'live')
        self.run.log(f'magnitude baseline: {units} units, test error before fine-tuning {err:.2f}%')

    def end_magnitude(self, name):
        self.export(self.baseline, 'magnitude_model.pt', 'magnitude baseline', 'error_magnitude',
                    'error_magnitude_pruned')


# ----------------------------------------------------------------------------------------------------
# Saved networks
# ----------------------------------------------------------------------------------------------------

def read_dense(path, name):
    """The dense weights of model `name` in an earlier run's dense_model.pt (--pretrained), checked
    to fit the model; read before the run directory exists, so that a wrong file leaves nothing."""
    state = utils.load_checkpoint(path)
    if state.get('model') != name or 'state_dict' not in state:
        raise utils.UserError(f'--pretrained {path} is not a dense {name} model written by compress.py '
                              f'(it holds {_contents(state)})')
    problem = utils.state_dict_mismatch(build(name).plain, state['state_dict'])
    if problem:
        raise utils.UserError(f'--pretrained {path} does not fit {name}: {problem}')
    return state['state_dict']


def _contents(state):
    """A few words on what a checkpoint holds (never its tensors)."""
    if isinstance(state.get('model'), str):
        return f'a {state["model"]} model'
    kind = utils.checkpoint_kind(state)
    return f'a checkpoint of {kind}.py' if kind else 'something else'


def save_pruned(name, seq, pruned, path):
    """Write a physically pruned network with what load_pruned needs to rebuild its architecture."""
    utils.save_checkpoint(dict(model=name, masks=prune.pruned_masks(seq),
                               state_dict={k: v.cpu() for k, v in pruned.state_dict().items()}), path)


def load_pruned(path):
    """The physically pruned network saved by a compression run (an ordinary nn.Sequential)."""
    state = utils.load_checkpoint(path)
    if state.get('model') not in MODELS or 'masks' not in state or 'state_dict' not in state:
        raise utils.UserError(f'{path} is not a pruned model written by compress.py')
    seq = build(state['model']).switched
    if len(prune.switch_layers(seq)) != len(state['masks']):
        raise utils.UserError(f'{path} does not match model {state["model"]}: its switch layers differ')
    try:
        prune.apply_masks(seq, state['masks'])
        net = prune.physical_prune(seq)
        net.load_state_dict(state['state_dict'])
    except (RuntimeError, AttributeError, TypeError) as e:
        raise utils.UserError(f'{path} does not match model {state["model"]}: '
                              f'{" ".join(str(e).split())}') from e
    return net.eval()


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------

REPORT_COLUMNS = {'dense': 'dense', 'bayesnas': 'BayesNAS', 'magnitude': 'magnitude'}  # the table's, in order


def make_report(comp):
    """report.json, the table in the log, units.png and curves.png of a finished run."""
    run, res = comp.run, comp.progress['results']
    model_units = prune.layer_units(comp.model)
    # (network, units per layer, file); comp.plain shares the switched model's layers, at dense shapes.
    nets = {'dense': (comp.plain, [u.total for u in model_units], 'dense_model.pt'),
            'bayesnas': (prune.physical_prune(comp.model), [u.live for u in model_units], 'pruned_model.pt')}
    error = dict(dense=res['error_dense'], bayesnas=res['error_masked'], bayesnas_pruned=res['error_pruned'],
                 bayesnas_before_finetune=res.get('iterations', [{}])[-1].get('masked_error'))
    if comp.baseline is not None:
        nets['magnitude'] = (prune.physical_prune(comp.baseline),
                             [u.live for u in prune.layer_units(comp.baseline)], 'magnitude_model.pt')
        error.update(magnitude=res['error_magnitude'], magnitude_pruned=res['error_magnitude_pruned'],
                     magnitude_before_finetune=res['error_magnitude_before_finetune'])
    units = {k: u for k, (_, u, _) in nets.items()}
    params = {k: utils.count_params(n) for k, (n, _, _) in nets.items()}
    macs = {k: utils.count_macs(n, comp.data_spec['shape']) for k, (n, _, _) in nets.items()}
    report = dict(
        model=comp.args.model, dataset=MODELS[comp.args.model]['data'],
        layers=[dict(layer=u.label, **{k: v[i] for k, v in units.items()})
                for i, u in enumerate(model_units)],
        units={k: '-'.join(map(str, v)) for k, v in units.items()}, params=params, macs=macs,
        compression={k: params['dense'] / params[k] for k in nets if k != 'dense'},
        speedup={k: macs['dense'] / macs[k] for k in nets if k != 'dense'},
        file_bytes={k: run.file(f).stat().st_size for k, (_, _, f) in nets.items()},
        error=error, iterations=res.get('iterations', []), wall_time_s=comp.elapsed())
    utils.write_text_atomic(run.file('report.json'), json.dumps(report, indent=2) + '\n')
    for line in report_lines(report):
        run.log(line)
    plot_units(report, run.file('units.png'))
    plot_curves(run.file('metrics.jsonl'), run.file('curves.png'), comp.phases)
    return report


def report_lines(r):
    """The report as a table (one row per layer, one column per network) and two summary lines; the
    units strings ('20-50-800-500') stay out of the table, where deep networks would make it too wide."""
    kinds = [k for k in REPORT_COLUMNS if k in r['params']]
    e = r['error']
    rows = [('layer', [REPORT_COLUMNS[k] for k in kinds])]
    rows += [(row['layer'], [str(row[k]) for k in kinds]) for row in r['layers']]
    rows += [(label, [f'{r[key][k]:,}' for k in kinds])
             for label, key in (('params', 'params'), ('MACs', 'macs'), ('file bytes', 'file_bytes'))]
    rows += [(label, ['1.0'] + [f'{r[key][k]:.1f}' for k in kinds[1:]])
             for label, key in (('params x', 'compression'), ('MACs x', 'speedup'))]
    rows.append(('error %', [f'{e[k]:.2f}' for k in kinds]))
    width = max(len(v) for _, values in rows for v in values) + 2
    lines = [f'{label:<10}' + ''.join(f'{v:>{width}}' for v in values) for label, values in rows]
    errors = [f'dense {e["dense"]:.2f}%']
    for k in kinds[1:]:
        more = [f'physically pruned {e[k + "_pruned"]:.2f}%']
        if e[k + '_before_finetune'] is not None:      # BayesNAS without iterations has none
            more.append(f'before fine-tuning {e[k + "_before_finetune"]:.2f}%')
        errors.append(f'{REPORT_COLUMNS[k]} {e[k]:.2f}% ({", ".join(more)})')
    return lines + ['test error: ' + ', '.join(errors),
                    f'units {r["units"]["dense"]} -> {r["units"]["bayesnas"]}, parameters '
                    f'{r["compression"]["bayesnas"]:.1f}x fewer, multiply-adds '
                    f'{r["speedup"]["bayesnas"]:.1f}x fewer, wall time {utils.format_time(r["wall_time_s"])}']


def plot_units(report, path):
    """Bars of the units per layer of the dense, BayesNAS and magnitude networks."""
    kinds = [k for k in REPORT_COLUMNS if k in report['params']]
    labels = [row['layer'] for row in report['layers']]
    width = 0.8 / len(kinds)
    with utils.figure(path, figsize=(max(5, 0.8 * len(labels) + 2), 3.5)) as ax:
        for j, k in enumerate(kinds):
            xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(labels))]
            bars = ax.bar(xs, [row[k] for row in report['layers']], width, label=REPORT_COLUMNS[k])
            if len(labels) <= 6:
                ax.bar_label(bars, fontsize=7)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylabel('units')
        ax.set_title(f'{report["model"]}: units per layer, {report["units"]["dense"]} -> '
                     f'{report["units"]["bayesnas"]}', fontsize=9)
        ax.legend(fontsize=8)


def plot_curves(metrics_path, path, phases):
    """Training loss and error per epoch of BayesNAS and of the magnitude baseline, the penalised
    epochs shaded, and the masked test error after each pruning step."""
    records = utils.read_metrics(metrics_path)

    def series(key):
        # By epoch, the last record winning: an epoch redone after an interruption is drawn once.
        points = {r['epoch']: r[key] for r in records if key in r and 'epoch' in r}
        return sorted(points), [points[e] for e in sorted(points)]

    # The magnitude phase comes last: the epochs before each phase are BayesNAS's.
    starts = itertools.accumulate((p.epochs for p in phases), initial=0)
    penalised = [(s + 0.5, s + p.epochs + 0.5) for s, p in zip(starts, phases) if p.kind == 'penalised']
    with utils.figure(path, 2, 1, figsize=(6.5, 5.5), sharex=True) as axes:
        for ax, what in zip(axes, ('loss', 'error')):
            ax.plot(*series(f'train_{what}'), marker='.', label='BayesNAS (dense, penalised, fine-tuned)')
            xs, ys = series(f'baseline_train_{what}')
            if xs:
                ax.plot(xs, ys, marker='.', label='magnitude baseline')
            for span in penalised:
                ax.axvspan(*span, color='0.9', zorder=0)
            ax.set_ylabel(f'train {what}' + (' %' if what == 'error' else ''))
            ax.grid(alpha=0.3)
        xs, ys = series('masked_error')
        if xs:
            axes[1].plot(xs, ys, 's', color='C3', label='masked test error after pruning')
        axes[0].set_yscale('log')
        axes[0].set_title('training curves (grey: penalised iterations)', fontsize=9)
        axes[1].set_xlabel('epoch')
        axes[1].legend(fontsize=7)


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------

def configure(argv):
    """(args, checkpoint state or None): a new run's flags, or a resumed run's own with the flags the
    user gives again (only RUN_FLAGS may differ)."""
    parser = build_parser()
    args, given = parser.parse(argv)
    if args.resume and args.save is None:
        raise utils.UserError('--resume needs --save DIR: the run to continue')
    if not args.resume:
        check_args(args)
        args.save = args.save or f'runs/compress-{args.model}-{time.strftime("%Y%m%d-%H%M%S")}'
        return args, None
    path = Path(args.save) / 'checkpoint.pt'
    state = utils.load_checkpoint(path)        # a missing one is an error: there is nothing to resume
    saved = state.get('args')
    # Not utils.require_kind: this message also says what the file holds instead.
    if utils.checkpoint_kind(state) != 'compress' or not isinstance(saved, dict):
        raise utils.UserError(f'{path} is not a checkpoint of a compress.py run '
                              f'(it holds {_contents(state)})')
    if saved.get('model') not in MODELS:
        raise utils.UserError(f'{path} holds a model this compress.py does not know: {saved.get("model")!r}')
    args = argparse.Namespace(**utils.resumed_args(parser, saved, given, RUN_FLAGS))
    if args.data is None:       # a run started when --data had no default of its own
        args.data = parser.get_default('data')
    check_args(args)
    return args, state


def main(argv=None):
    args, state = configure(argv)
    device = utils.get_device(args.gpu, args.deterministic)
    # Inputs first: bad data or a wrong --pretrained leaves no run directory behind.
    data = DATASETS[MODELS[args.model]['data']]['load'](args.data, device=device)
    dense = read_dense(args.pretrained, args.model) if args.pretrained and state is None else None
    run = utils.RunDir(args.save, args, resume=args.resume, rewind=(state or {}).get('run_files'))
    comp = Compression(args, run, device, data, dense)
    if state is not None:
        comp.restore(state)
        name = comp.phases[min(comp.progress['phase'], len(comp.phases) - 1)].name
        run.log(f'resuming at {name}, epoch {comp.progress["epoch"]}')
    else:
        units = prune.units_string(prune.layer_units(comp.model), 'total')
        run.log(f'compress {args.model}: units {units}, {utils.count_params(comp.plain):,} parameters, '
                f'{len(data["train_x"])} training / {len(data["test_x"])} test images, device {device}')
    comp.execute()
    return make_report(comp)


if __name__ == '__main__':
    utils.cli(main)
