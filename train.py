"""Retrain a cell genotype from scratch on CIFAR-10 or ImageNet and report its test accuracy.

    python train.py --arch BayesNAS                          # a named cell, DARTS's CIFAR-10 recipe
    python train.py --genotype runs/search-x/genotype.json   # a cell derived by derive.py
    python train.py --dataset imagenet --data /data/imagenet --arch BayesNAS_0_01
    python train.py --space nb201 --arch '|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|'
    python train.py --space proxyless --arch ProxylessNAS_G  # the published network of the proxyless space
    torchrun --nproc_per_node 8 train.py --arch DARTS_V2     # data parallel, one process per GPU
    python train.py --save runs/train-x --resume             # continue an interrupted run
    python train.py --eval_only runs/train-x/model.pt        # test accuracy of a trained network

Defaults are DARTS's retraining recipes. CIFAR-10: 600 epochs, batch 96, SGD lr 0.025 cosine-annealed
to 0, momentum 0.9, weight decay 3e-4, 36 initial channels, 20 cells, auxiliary head (weight 0.4),
cutout 16, drop-path 0.2 ramped linearly from 0, gradient norm clipped at 5. ImageNet: 250 epochs,
batch 128, lr 0.1 multiplied by 0.97 every epoch, weight decay 3e-5, 48 channels, 14 cells, label
smoothing 0.1, auxiliary head, no drop-path. --space nb201 trains a NAS-Bench-201 cell (an architecture
string, or a genotype.json of an nb201 search) with the recipe behind the benchmark's table: 200
epochs, batch 256, SGD with Nesterov momentum 0.9, lr 0.1 cosine to 0, weight decay 5e-4, random crop
and flip, nothing else (16 channels, 5 cells per stage). --space proxyless trains a PyramidTreeNet
network config (ProxylessNAS_G, or the genotype.json of a proxyless search: proxyless.py) with the
recipe of Path-Level EAS: 300 epochs, batch 64, SGD with Nesterov momentum 0.9, lr 0.1 cosine to 0,
weight decay 1e-4, cutout 16, no auxiliary head and no drop-path (the longer variant: --epochs 600
--drop_path_prob P, which drops whole residual branches, more often deeper in the network). Every
knob is a flag (DARTS's names).

Speed on CUDA. bf16 autocast (--amp) is on for ImageNet but off for CIFAR-10, where a step at batch 96
is paced by kernel launches rather than arithmetic and the casts cost more than they save; channels-last
is on (docs/results.md, Performance, has the measurements).

Data. CIFAR-10 sits on the device as uint8; crop, flip and cutout are applied batch-wise there
(utils.Batches), with order and augmentation a function of (seed, epoch): that is what makes --resume
exact. The last incomplete training batch of an epoch is dropped, so every step has the full global
batch (the shuffle puts those images into full batches in other epochs). ImageNet is read by a
DataLoader over torchvision's ImageFolder (utils.imagenet_loaders).

Data parallel (torchrun). Each process drives one GPU, cuda:(--gpu + LOCAL_RANK), over NCCL, or a CPU
over gloo when there is no CUDA. --batch_size is the global batch. On CIFAR-10 every process forms
the same global batch (same seed) and trains on its own contiguous slice of it, so W processes see
exactly the images, augmentation included, that one process would; the price is that each process
augments the whole global batch, which is cheap next to the network. DDP averages the gradients, so
the update is that of the global mean loss. What differs from one process is BatchNorm: it normalises
with the statistics of each process's slice (there is no synchronised BatchNorm on CPU). Before each
evaluation the BatchNorm running statistics of rank 0 (the ones saved) are copied to every process;
the test set is split between processes and the sums of losses and hits are all-reduced, so a
sharded evaluation equals a single-process one. On ImageNet a DistributedSampler shards the training
set. Only rank 0 writes the run directory; resuming, rank 0 reads the checkpoint and broadcasts it, so
the machines need no shared file system. A resumed run is exact when it has the same number of
processes (each one's random state, used by drop-path, is saved); on ImageNet the order of the
images and the DataLoader workers' random streams are a function of (seed, epoch).

Run directory (--save): args.json, log.txt, metrics.jsonl (one line per epoch), checkpoint.pt (written
atomically after every epoch: model, optimiser, schedule, every process's random state), curves.png,
and at the end model.pt (the trained weights and how to build the network, for --eval_only).
"""
import argparse
import gc
import math
import os
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import genotypes
import spaces
import utils


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

COMMON_DEFAULTS = dict(
    space='darts', dataset='cifar10', arch='BayesNAS', genotype=None, momentum=0.9, nesterov=False,
    gamma=0.97, decay_period=1,
    auxiliary=True, auxiliary_weight=0.4, cutout_length=16, grad_clip=5.0, report_freq=50,
    gpu=None, seed=0, save=None, resume=False, eval_only=None, workers=4, channels_last=True,
    download=False, deterministic=False, compile=False)

DATASET_DEFAULTS = {
    'cifar10': dict(data='data', epochs=600, batch_size=96, learning_rate=0.025, lr_schedule='cosine',
                    weight_decay=3e-4, init_channels=36, layers=20, cutout=True, drop_path_prob=0.2,
                    label_smooth=0.0, amp=False),
    'imagenet': dict(data='data/imagenet', epochs=250, batch_size=128, learning_rate=0.1,
                     lr_schedule='step', weight_decay=3e-5, init_channels=48, layers=14, cutout=False,
                     drop_path_prob=0.0, label_smooth=0.1, amp=True),
}

# Flags that say where and how fast a run executes, not what it computes: a resumed run may change
# them. Every other flag of a resumed run comes from its checkpoint.
RUN_FLAGS = {'data', 'gpu', 'report_freq', 'workers', 'amp', 'channels_last', 'download',
             'save', 'resume', 'deterministic', 'compile'}
# The flags --eval_only accepts; the network and its data set come from the checkpoint.
EVAL_FLAGS = {'eval_only', 'data', 'gpu', 'batch_size', 'workers', 'amp', 'channels_last', 'download',
              'deterministic'}

CURVE_KEYS = ['train_loss', 'test_loss', 'train_acc', 'test_acc', 'lr']


def _default(name):
    """The default of a flag for help texts, per data set and space where they differ."""
    if name in COMMON_DEFAULTS:
        text = f'default: {COMMON_DEFAULTS[name]}'
    else:
        cifar, imagenet = DATASET_DEFAULTS['cifar10'][name], DATASET_DEFAULTS['imagenet'][name]
        text = f'default: {cifar}' if cifar == imagenet else f'default: {cifar} on CIFAR-10, {imagenet} on ImageNet'
    for space in spaces.SPACES.values():
        own = space.train_defaults
        usual = DATASET_DEFAULTS['cifar10'].get(name, COMMON_DEFAULTS.get(name))
        if name in own and name != 'arch' and own[name] is not None and own[name] != usual:
            text += f'; {own[name]} with --space {space.name}'
    return text


def build_parser():
    # No argparse defaults: the flags actually given are what is parsed, so a resumed run can tell a
    # changed flag from an unmentioned one, and defaults can depend on --dataset.
    p = utils.Parser('train.py', description='Retrain a cell genotype from scratch and report its test '
                                             'accuracy.', argument_default=argparse.SUPPRESS)
    d = _default
    p.add_argument('--space', choices=spaces.NAMES, help="the cell's search space: darts genotypes, "
                   "NAS-Bench-201 architecture strings trained with the benchmark's recipe, or proxyless "
                   'network configs trained with the recipe of Path-Level EAS (' + d('space') + ')')
    p.add_argument('--dataset', choices=sorted(DATASET_DEFAULTS), help=d('dataset'))
    p.add_argument('--data', help='CIFAR-10: the folder holding cifar-10-batches-py; ImageNet: the '
                                  'folder holding train/ and val/ (' + d('data') + ')')
    p.add_argument('--download', action='store_true', help='download CIFAR-10 if it is missing')
    p.add_argument('--arch', help='named genotype: ' + ', '.join(genotypes.NAMES) + f' ({d("arch")}); with '
                   "--space nb201 an architecture string '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'; with --space "
                   'proxyless ' + ', '.join(spaces.PROXYLESS_NAMES))
    p.add_argument('--genotype', help='genotype JSON file (derive.py writes RUN_DIR/genotype.json; proxyless: '
                   'any PyramidTreeNet config)')
    p.add_argument('--epochs', type=int, help=d('epochs'))
    p.add_argument('--batch_size', type=int, help='global batch, split between processes (' +
                   d('batch_size') + ')')
    p.add_argument('--learning_rate', type=float, help='initial learning rate (' + d('learning_rate') + ')')
    p.add_argument('--lr_schedule', choices=['cosine', 'step'],
                   help='cosine: annealed to 0 over the epochs; step: times --gamma every '
                        '--decay_period epochs (' + d('lr_schedule') + ')')
    p.add_argument('--gamma', type=float, help='step schedule decay factor (' + d('gamma') + ')')
    p.add_argument('--decay_period', type=int, help='step schedule period in epochs (' +
                   d('decay_period') + ')')
    p.add_argument('--momentum', type=float, help=d('momentum'))
    p.add_argument('--nesterov', action=argparse.BooleanOptionalAction, help='Nesterov momentum (' +
                   d('nesterov') + ')')
    p.add_argument('--weight_decay', type=float, help=d('weight_decay'))
    p.add_argument('--init_channels', type=int, help=d('init_channels'))
    p.add_argument('--layers', type=int, help='number of cells (' + d('layers') + ')')
    p.add_argument('--auxiliary', action=argparse.BooleanOptionalAction,
                   help='auxiliary head after 2/3 of the cells (' + d('auxiliary') + ')')
    p.add_argument('--auxiliary_weight', type=float, help=d('auxiliary_weight'))
    p.add_argument('--cutout', action=argparse.BooleanOptionalAction, help='CIFAR-10 only (' +
                   d('cutout') + ')')
    p.add_argument('--cutout_length', type=int, help=d('cutout_length'))
    p.add_argument('--drop_path_prob', type=float, help='final drop-path probability, ramped '
                   'linearly from 0 (' + d('drop_path_prob') + ')')
    p.add_argument('--label_smooth', type=float, help=d('label_smooth'))
    p.add_argument('--grad_clip', type=float, help='gradient norm clip, 0 for none (' +
                   d('grad_clip') + ')')
    p.add_argument('--report_freq', type=int, help='log every this many steps (' + d('report_freq') + ')')
    p.add_argument('--workers', type=int, help='ImageNet DataLoader workers per process (' +
                   d('workers') + ')')
    p.add_argument('--gpu', type=int, help='GPU index (under torchrun: of local rank 0); default: '
                                           'cuda:0 when CUDA is present, else the CPU')
    p.add_argument('--amp', action=argparse.BooleanOptionalAction,
                   help='bf16 autocast on CUDA (' + d('amp') + ')')
    p.add_argument('--channels_last', action=argparse.BooleanOptionalAction,
                   help='channels-last memory format on CUDA (' + d('channels_last') + ')')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction,
                   help="torch.compile the training step's network (CUDA: with CUDA graphs, mode "
                        "reduce-overhead); compilation time is logged apart (" + d('compile') + ')')
    p.add_argument('--deterministic', action='store_true', help='deterministic algorithms and no cuDNN '
                   'autotuning, so that a GPU run repeats exactly (slower; a CPU run always does)')
    p.add_argument('--seed', type=int, help=d('seed'))
    p.add_argument('--save', help='run directory (default: runs/train-NAME-TIME)')
    p.add_argument('--resume', action='store_true', help='continue the run in --save from its checkpoint')
    p.add_argument('--eval_only', metavar='CHECKPOINT',
                   help='only report the test accuracy of a checkpoint.pt or model.pt (reads only the '
                        'test set; --data defaults to the one the network was trained on)')
    return p


def fresh_args(given):
    """The configuration of a new run: defaults of the data set, overridden by the given flags."""
    if 'arch' in given and 'genotype' in given:
        raise utils.UserError('give --arch NAME or --genotype FILE, not both')
    dataset = given.get('dataset', COMMON_DEFAULTS['dataset'])
    space = given.get('space', COMMON_DEFAULTS['space'])
    if dataset != 'cifar10' and given.get('cutout'):
        raise utils.UserError('--cutout applies to CIFAR-10 only')
    try:
        spaces.get(space).check_train(given, dataset)
    except ValueError as e:
        raise utils.UserError(str(e)) from e
    args = {**COMMON_DEFAULTS, **DATASET_DEFAULTS[dataset], **spaces.get(space).train_defaults, **given}
    if 'genotype' in given:
        args['arch'] = None     # so that args.json names the cell that was trained
    return args


def _space_defaults(name):
    """train.py's defaults of a stored run's space ({} for a space this version does not know)."""
    return spaces.SPACES[name].train_defaults if name in spaces.SPACES else {}


def resumed_args(stored, given):
    """The configuration of a resumed run: the checkpoint's, with only RUN_FLAGS changeable."""
    dataset = stored.get('dataset', COMMON_DEFAULTS['dataset'])
    space = stored.get('space', COMMON_DEFAULTS['space'])
    defaults = {**COMMON_DEFAULTS, **DATASET_DEFAULTS.get(dataset, {}), **_space_defaults(space)}
    return utils.resumed_args(build_parser(), stored, given, RUN_FLAGS, defaults)


def check_args(a, world):
    """UserError for the first out-of-range value."""
    rules = [
        (a.epochs >= 1, f'--epochs must be at least 1, got {a.epochs}'),
        (a.batch_size >= 1 and a.batch_size % world == 0,
         f'--batch_size {a.batch_size} must be a positive multiple of the {world} processes'),
        # The auxiliary head's BatchNorm sees 1x1 maps: it needs two images per process.
        (a.batch_size // world >= 2, f'--batch_size {a.batch_size} leaves fewer than 2 images per '
                                     f'process; BatchNorm needs at least 2'),
        (0 < a.learning_rate < math.inf, f'--learning_rate must be positive and finite, got '
                                         f'{a.learning_rate}'),
        (0 <= a.momentum < 1, f'--momentum must be in [0, 1), got {a.momentum}'),
        (a.momentum > 0 or not a.nesterov, '--nesterov needs a positive --momentum'),
        (0 <= a.weight_decay < math.inf, f'--weight_decay must be >= 0 and finite, got {a.weight_decay}'),
        (0 < a.gamma <= 1, f'--gamma must be in (0, 1], got {a.gamma}'),
        (a.decay_period >= 1, f'--decay_period must be at least 1, got {a.decay_period}'),
        *spaces.get(a.space).train_rules(a),
        (0 <= a.auxiliary_weight < math.inf, f'--auxiliary_weight must be >= 0 and finite, got '
                                             f'{a.auxiliary_weight}'),
        (a.cutout_length >= 1, f'--cutout_length must be at least 1, got {a.cutout_length}'),
        (0 <= a.drop_path_prob < 1, f'--drop_path_prob must be in [0, 1), got {a.drop_path_prob}'),
        (0 <= a.label_smooth < 1, f'--label_smooth must be in [0, 1), got {a.label_smooth}'),
        (0 <= a.grad_clip < math.inf, f'--grad_clip must be >= 0 and finite (0: no clipping), got '
                                      f'{a.grad_clip}'),
        (a.report_freq >= 1, f'--report_freq must be at least 1, got {a.report_freq}'),
        (a.workers >= 0, f'--workers must be >= 0, got {a.workers}'),
    ]
    utils.check(rules)


# ---------------------------------------------------------------------------------------------
# Processes: one, or a torchrun job
# ---------------------------------------------------------------------------------------------

class Job:
    """This process's place in a torchrun job; rank 0 of 1 when the script is run plainly."""

    def __init__(self):
        self.world = int(os.environ.get('WORLD_SIZE', 1))
        self.rank = int(os.environ.get('RANK', 0))
        self.local_rank = int(os.environ.get('LOCAL_RANK', 0))
        self.enabled = self.world > 1
        self.main = self.rank == 0

    def device(self, gpu, deterministic=False):
        if not self.enabled:
            return utils.get_device(gpu, deterministic)
        if gpu is None and not torch.cuda.is_available():
            return utils.get_device(None, deterministic)
        return utils.get_device((gpu or 0) + self.local_rank, deterministic)

    def start(self, device):
        if self.enabled:
            cuda = device.type == 'cuda'
            dist.init_process_group('nccl' if cuda else 'gloo', device_id=device if cuda else None)

    def stop(self):
        if self.enabled and dist.is_initialized():
            # The DDP wrapper and the parameters' gradient hooks sit in reference cycles that hold
            # the process group; left to the interpreter's exit, gloo's threads outlive it and the
            # process aborts ('terminate called without an active exception') after its work is
            # done. Collecting them first makes the group's destruction the last word.
            gc.collect()
            dist.destroy_process_group()

    def sum(self, values):
        """Element-wise sum over processes of a float64 tensor, as a list of floats."""
        if self.enabled:
            values = values.clone()
            dist.all_reduce(values)
        return values.tolist()

    def on_rank0(self, fn):
        """fn() run by rank 0 only, its result broadcast to every process. A UserError or OSError
        it raises is raised by every process as a UserError, so none is left waiting for the others."""
        if not self.enabled:
            return fn()
        box = [None]
        if self.main:
            try:
                box = [('ok', fn())]
            except utils.UserError as e:
                box = [('error', str(e))]
            except OSError as e:
                box = [('error', utils.os_error_line(e))]
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == 'error':
            raise utils.UserError(value)
        return value

    def gather(self, obj):
        """The list of every process's obj, by rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def share_buffers(self, net):
        """Give every process rank 0's buffers (BatchNorm running statistics), which each process
        has updated from its own slice since DDP last copied them."""
        if self.enabled:
            for buf in net.buffers():
                dist.broadcast(buf, 0)


class Silent:
    """The run directory of processes other than rank 0: only rank 0 writes."""

    def log(self, msg):
        pass

    def metric(self, **values):
        pass


# ---------------------------------------------------------------------------------------------
# Genotype and network
# ---------------------------------------------------------------------------------------------

def load_genotype(args):
    """(genotype, short name for the run directory) from --genotype FILE or --arch NAME, as the space
    reads them (spaces.py)."""
    space = spaces.get(args.space)
    try:
        if args.genotype:
            path = Path(args.genotype)
            return space.read(path), path.parent.name or path.stem
        return space.named(args.arch), space.run_name(args.arch)
    except ValueError as e:
        raise utils.UserError(str(e)) from e


def network_config(args, genotype, num_classes):
    """Everything needed to rebuild the network; stored in checkpoints as plain Python data."""
    try:
        fields = spaces.get(args.space).stored(genotype, args, num_classes)
    except ValueError as e:
        raise utils.UserError(str(e)) from e
    return {'space': args.space, 'dataset': args.dataset, 'num_classes': num_classes, **fields}


def build_network(config):
    """(genotype, network) of a stored configuration."""
    try:
        return spaces.get(config.get('space', 'darts')).network(config)
    except (KeyError, TypeError, ValueError) as e:
        raise utils.UserError(f'cannot build the network from the stored configuration: '
                              f'{type(e).__name__}: {e}') from e


def input_shape(dataset):
    return (3, 224, 224) if dataset == 'imagenet' else (3, 32, 32)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

class Shard:
    """This process's contiguous slice of every global batch; every process draws the same global
    batches (same seed), so together they see exactly what one process would."""

    def __init__(self, batches, rank, world):
        self.batches, self.rank, self.world = batches, rank, world

    def set_epoch(self, epoch):
        self.batches.set_epoch(epoch)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for x, y in self.batches:
            n = len(y) // self.world
            yield x[self.rank * n:(self.rank + 1) * n], y[self.rank * n:(self.rank + 1) * n]


class Epochs:
    """An ImageNet training DataLoader whose passes are a function of (seed, epoch)."""

    def __init__(self, loader, sampler, seed):
        self.loader, self.sampler, self.seed = loader, sampler, seed

    def set_epoch(self, epoch):
        utils.set_loader_epoch(self.loader, self.sampler, self.seed, epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def cifar_data(args, device, job):
    """(training batches, this process's test batches, number of classes) with data on the device."""
    if args.download and job.local_rank != 0:
        dist.barrier()          # one download per machine: the first process fetches it
    data = utils.load_cifar10(args.data, device=device, download=args.download)
    if args.download and job.local_rank == 0 and job.enabled:
        dist.barrier()
    cutout = args.cutout_length if args.cutout else 0
    train = utils.Batches(data['train_x'], data['train_y'], args.batch_size, shuffle=True,
                          drop_last=True, augment={'crop_pad': 4, 'flip': True, 'cutout': cutout},
                          seed=args.seed)
    return Shard(train, job.rank, job.world), cifar_test_batches(data, args, job), 10


def cifar_test_batches(data, args, job):
    """This process's share of the test set, in order."""
    test_x = torch.tensor_split(data['test_x'], job.world)[job.rank]
    test_y = torch.tensor_split(data['test_y'], job.world)[job.rank]
    return utils.Batches(test_x, test_y, args.batch_size // job.world, shuffle=False)


def cifar_test_data(args, device, job):
    """The test batches alone: only test_batch is read (and needs to be present)."""
    if args.download and job.local_rank != 0:
        dist.barrier()
    data = utils.load_cifar10(args.data, device=device, download=args.download, train=False)
    if args.download and job.local_rank == 0 and job.enabled:
        dist.barrier()
    return cifar_test_batches(data, args, job)


def imagenet_data(args, device, job):
    """(training batches, this process's validation batches, number of classes) from ImageFolders."""
    per_process = args.batch_size // job.world
    pin = device.type == 'cuda'
    train, val, sampler = utils.imagenet_loaders(args.data, per_process, args.workers,
                                                 distributed=job.enabled, pin_memory=pin, seed=args.seed)
    # ImageFolder numbers the classes of each folder by their sorted names: a class missing from
    # one of them would shift every label after it, and the accuracy would be silently wrong.
    if train.dataset.classes != val.dataset.classes:
        only = sorted(set(train.dataset.classes) ^ set(val.dataset.classes))
        raise utils.UserError(f'{args.data}: train/ and val/ must hold the same class folders, but '
                              f'{len(only)} class(es) are in only one of them, e.g. {only[0]!r}')
    if job.enabled:
        # Every process gets every job.world-th validation image; the sums are all-reduced.
        subset = torch.utils.data.Subset(val.dataset, range(job.rank, len(val.dataset), job.world))
        val = torch.utils.data.DataLoader(subset, batch_size=per_process, shuffle=False,
                                          num_workers=args.workers, pin_memory=pin)
    return Epochs(train, sampler, args.seed), val, len(train.dataset.classes)


def load_data(args, device, job):
    return (imagenet_data if args.dataset == 'imagenet' else cifar_data)(args, device, job)


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------

def autocast(device, args):
    # bf16 needs no loss scaling; on the CPU it is slower than fp32, so it is used on CUDA only.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda' and args.amp)


def to_device(x, y, device, args):
    x = x.to(device, non_blocking=True)
    if device.type == 'cuda' and args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def batch_stats(logits, y, loss):
    """[loss sum, top-1 hits, top-5 hits, images] of a batch, left on the device: reading them
    every step would make the host wait for the GPU."""
    hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(y.view(-1, 1))
    n = len(y)
    # new_full fills on the device; new_tensor would copy the count from the host every step.
    return torch.stack([loss.detach().double() * n, hits[:, 0].sum().double(),
                        hits.any(dim=1).sum().double(), loss.new_full((), n, dtype=torch.float64)])


def summary(sums):
    loss, top1, top5, images = sums
    n = max(images, 1)
    return {'loss': loss / n, 'acc': 100 * top1 / n, 'top5': 100 * top5 / n, 'images': int(images)}


def train_epoch(model, net, data, optimizer, criterion, epoch, *, args, device, job, run, first=False):
    """One pass over the training data; returns the summary of the whole global batch. first: the
    session's first epoch, whose first step compiles a --compile network (its time is logged)."""
    model.train()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    start = time.time()
    for step, (x, y) in enumerate(data, 1):
        x, y = to_device(x, y, device, args)
        with autocast(device, args):
            logits, logits_aux = model(x)
            loss = criterion(logits, y)
            total = loss if logits_aux is None else loss + args.auxiliary_weight * criterion(logits_aux, y)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if args.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
        optimizer.step()
        sums += batch_stats(logits, y, loss)
        if step == 1 and args.compile and first:
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            run.log(f'  first step {time.time() - start:.1f} s (compilation included)')
        if step % args.report_freq == 0:
            # Reduced over processes, so every process sees the same value and stops together.
            s = summary(job.sum(sums))
            utils.check_finite(s['loss'], f'training loss at epoch {epoch + 1} step {step}')
            run.log(f'  step {step}/{len(data)}  loss {s["loss"]:.4f}  acc {s["acc"]:.2f}%  '
                    f'{s["images"] / (time.time() - start):.0f} img/s')
    s = summary(job.sum(sums))
    utils.check_finite(s['loss'], f'training loss of epoch {epoch + 1}')
    return s


@torch.no_grad()
def evaluate(net, data, args, device, job):
    """Mean cross-entropy, top-1 and top-5 accuracy (%) of the whole test set, over all processes."""
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for x, y in data:
        x, y = to_device(x, y, device, args)
        with autocast(device, args):
            logits, _ = net(x)
        sums += batch_stats(logits, y, F.cross_entropy(logits.float(), y))
    return summary(job.sum(sums))


def make_scheduler(optimizer, args):
    if args.lr_schedule == 'cosine':
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=0.0)
    return torch.optim.lr_scheduler.StepLR(optimizer, args.decay_period, gamma=args.gamma)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def restore(state, net, optimizer, scheduler, args, job, run):
    """Load a checkpoint into the run; returns the number of epochs it had completed."""
    load_weights(net, state.get('model', {}), Path(args.save) / 'checkpoint.pt')
    try:
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        epochs_done, rng = state['epoch'], state['rng']
    except (KeyError, RuntimeError, ValueError) as e:
        raise utils.UserError(f'checkpoint in {args.save} does not fit this run: '
                              f'{type(e).__name__}: {e}') from e
    if len(rng) == job.world:
        utils.set_rng_state(rng[job.rank])
    else:
        # Another number of processes: drop-path masks cannot follow the old streams.
        utils.set_seed(args.seed + job.world * epochs_done + job.rank)
        run.log(f'the checkpoint was written by {len(rng)} processes, this run has {job.world}: '
                f'drop-path draws new random numbers and BatchNorm sees other slices')
    if job.main and 'run_files' not in state:
        # Written before checkpoints recorded how far the run's files went (RunDir rewinds to that):
        # drop the metrics of epochs after the checkpoint's, which the resumed run repeats.
        utils.trim_metrics(Path(args.save) / 'metrics.jsonl', lambda r: r.get('epoch', 0) <= epochs_done)
    return epochs_done


def read_checkpoint(path, job, resumable=False):
    """A checkpoint.pt or model.pt of this script, read by rank 0 and given to every process;
    resumable: a checkpoint.pt, which also holds the run's arguments and training state."""
    def read():
        state = utils.load_checkpoint(path)
        utils.require_kind(state, 'train', path)
        if not isinstance(state.get('config'), dict) or not isinstance(state.get('model'), dict):
            raise utils.UserError(f'{path} is not a checkpoint of train.py (no network configuration)')
        if resumable and not (isinstance(state.get('args'), dict) and
                              all(k in state for k in ('epoch', 'optimizer', 'scheduler', 'rng'))):
            raise utils.UserError(f'{path} cannot be resumed: it holds no training state (arguments, '
                                  f'epoch, optimiser, schedule, random state); a model.pt holds only '
                                  f'the network')
        return state
    return job.on_rank0(read)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def compiled(model, device, run):
    """model under torch.compile: CUDA graphs on CUDA (the steps are paced by kernel launches), the
    default mode elsewhere. Random ops (drop-path masks) keep PyTorch's own generator, so a compiled
    run draws what an eager one draws and resumes as exactly."""
    import torch._inductor.config
    torch._inductor.config.fallback_random = True
    mode = 'reduce-overhead' if device.type == 'cuda' else 'default'
    run.log(f'torch.compile, mode {mode}: the first steps of the first epoch include the compilation')
    return torch.compile(model, mode=mode, dynamic=False)


def train(given, device, job):
    state = None
    if given.get('resume'):
        if 'save' not in given:
            raise utils.UserError('--resume needs --save RUN_DIR, the run to continue')
        state = read_checkpoint(Path(given['save']) / 'checkpoint.pt', job, resumable=True)
        args = argparse.Namespace(**resumed_args(state['args'], given))
    else:
        args = argparse.Namespace(**fresh_args(given))
    check_args(args, job.world)
    if args.deterministic:          # a resumed run may have been started with it
        utils.set_deterministic()
    utils.set_seed(args.seed + job.rank)

    if state is None:
        genotype, name = load_genotype(args)
    train_data, test_data, num_classes = load_data(args, device, job)
    if len(train_data) == 0:
        raise utils.UserError(f'the training set holds fewer images than one batch of '
                              f'{args.batch_size}; lower --batch_size')
    if state is None:
        config = network_config(args, genotype, num_classes)
        if args.save is None:
            args.save = f'runs/train-{name}-{time.strftime("%Y%m%d-%H%M%S")}'
    else:
        config = state['config']
    rewind = state.get('run_files') if state is not None else None
    run_dir = job.on_rank0(lambda: utils.RunDir(args.save, vars(args), resume=args.resume, rewind=rewind))
    run = run_dir if job.main else Silent()

    genotype, net = build_network(config)
    net = net.to(device)
    params = utils.count_params(net)
    macs = utils.count_macs(net, input_shape(config['dataset']))
    line, shape = spaces.get(config.get('space', 'darts')).network_line(config, genotype)
    run.log(f'network: {line}')
    run.log(f'{config["dataset"]}: {shape}, '
            f'{params / 1e6:.3f}M parameters (auxiliary head excluded), {macs / 1e6:.1f}M '
            f'multiply-adds per image')
    run.log(f'{job.world} process(es) on {device}, global batch {args.batch_size}; run directory '
            f'{args.save}')
    if device.type == 'cuda' and args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), args.learning_rate, momentum=args.momentum,
                                nesterov=args.nesterov, weight_decay=args.weight_decay)
    scheduler = make_scheduler(optimizer, args)
    start = 0 if state is None else restore(state, net, optimizer, scheduler, args, job, run)
    state = None                # the checkpoint's tensors are no longer needed
    if start:
        run.log(f'resumed after epoch {start}')

    # DDP copies rank 0's weights to every process here, so all start alike.
    model = DistributedDataParallel(net, device_ids=[device.index] if device.type == 'cuda' else None) \
        if job.enabled else net
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smooth)
    # The drop-path probability lives in a tensor, changed in place every epoch: a compiled network
    # then sees the same input each epoch instead of a new constant to compile for.
    net.drop_path_prob = torch.zeros((), device=device) if args.drop_path_prob > 0 else 0.0
    if args.compile:
        model = compiled(model, device, run)

    test = None
    for epoch in range(start, args.epochs):
        drop_prob = args.drop_path_prob * epoch / args.epochs
        if args.drop_path_prob > 0:
            net.drop_path_prob.fill_(drop_prob)
        lr = optimizer.param_groups[0]['lr']
        train_data.set_epoch(epoch)
        tic = time.time()
        trained = train_epoch(model, net, train_data, optimizer, criterion, epoch, args=args, device=device,
                              job=job, run=run, first=epoch == start)
        seconds = time.time() - tic
        job.share_buffers(net)
        test = evaluate(net, test_data, args, device, job)
        run.log(f'epoch {epoch + 1}/{args.epochs}  lr {lr:.3e}  drop-path {drop_prob:.3f}  '
                f'train loss {trained["loss"]:.4f} acc {trained["acc"]:.2f}%  test loss {test["loss"]:.4f} '
                f'acc {test["acc"]:.2f}%  {trained["images"] / seconds:.0f} img/s  '
                f'{utils.format_time(seconds)}')
        run.metric(epoch=epoch + 1, lr=lr, drop_path_prob=drop_prob, train_loss=trained['loss'],
                   train_acc=trained['acc'], test_loss=test['loss'], test_acc=test['acc'],
                   test_top5=test['top5'], images_per_s=trained['images'] / seconds, seconds=seconds)
        scheduler.step()
        rng = job.gather(utils.get_rng_state())
        if job.main:
            # run_files: how far log.txt and metrics.jsonl were written, for a resumed run to rewind to.
            utils.save_checkpoint({'kind': 'train', 'run_files': run.sizes(),
                                   'epoch': epoch + 1, 'args': vars(args), 'config': config,
                                   'model': net.state_dict(), 'optimizer': optimizer.state_dict(),
                                   'scheduler': scheduler.state_dict(), 'rng': rng},
                                  run.file('checkpoint.pt'))
            utils.plot_curves(run.file('metrics.jsonl'), run.file('curves.png'), CURVE_KEYS)

    if test is None:            # resumed a finished run: nothing trained, evaluate it again
        job.share_buffers(net)
        test = evaluate(net, test_data, args, device, job)
    if job.main:
        utils.save_checkpoint({'kind': 'train', 'args': vars(args), 'config': config,
                               'model': net.state_dict(), 'epochs': args.epochs,
                               'test_acc': test['acc'], 'test_top5': test['top5'],
                               'test_loss': test['loss']}, run.file('model.pt'))
    run.log(f'final test accuracy {test["acc"]:.2f}% (error {100 - test["acc"]:.2f}%, top-5 '
            f'{test["top5"]:.2f}%, loss {test["loss"]:.4f}) on {test["images"]} images after '
            f'{args.epochs} epochs; network saved to {Path(args.save) / "model.pt"}')
    return {'test_acc': test['acc'], 'test_top5': test['top5'], 'test_loss': test['loss'],
            'params': params, 'macs': macs, 'save': args.save}


def eval_only(given, device, job):
    extra = sorted(set(given) - EVAL_FLAGS)
    if extra:
        raise utils.UserError(f'--{extra[0]} does not apply to --eval_only, which takes the network '
                              f'and its data set from the checkpoint')
    state = read_checkpoint(given['eval_only'], job)
    config = state['config']
    dataset = config.get('dataset', 'cifar10')
    if dataset not in DATASET_DEFAULTS:
        raise utils.UserError(f'{given["eval_only"]} names an unknown data set {dataset!r}')
    data, source = eval_data_path(given, state, dataset)
    space = config.get('space', 'darts')
    args = argparse.Namespace(**{**COMMON_DEFAULTS, **DATASET_DEFAULTS[dataset], **_space_defaults(space),
                                 **given, 'space': space, 'dataset': dataset, 'data': data})
    check_args(args, job.world)
    _, net = build_network(config)
    net = net.to(device)
    load_weights(net, state['model'], given['eval_only'])
    if device.type == 'cuda' and args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    try:
        test_data = load_test_data(args, device, job)
    except utils.UserError as e:
        raise utils.UserError(f'{e} (--data {data} is {source})') from e
    test = evaluate(net, test_data, args, device, job)
    if job.main:
        print(f'test accuracy {test["acc"]:.2f}% (error {100 - test["acc"]:.2f}%, top-5 '
              f'{test["top5"]:.2f}%, loss {test["loss"]:.4f}) on {test["images"]} images', flush=True)
    return {'test_acc': test['acc'], 'test_top5': test['top5'], 'test_loss': test['loss']}


def eval_data_path(given, state, dataset):
    """(--data for --eval_only, where it came from): the flag, else the data the network was trained
    on (saved with it), else the data set's default."""
    if 'data' in given:
        return given['data'], 'the one given'
    saved = state.get('args')
    if isinstance(saved, dict) and isinstance(saved.get('data'), str):
        return saved['data'], "the training run's, saved with the network; pass --data to use another"
    return DATASET_DEFAULTS[dataset]['data'], 'the default; pass --data'


def load_test_data(args, device, job):
    if args.dataset == 'imagenet':
        return imagenet_data(args, device, job)[1]
    return cifar_test_data(args, device, job)


# Checkpoints written before a cell stopped building the preprocessing of an input that none of
# its edges reads hold that preprocessing's weights, which never took part in the computation.
UNREAD_PREPROCESSING = re.compile(r'cells\.\d+\.preprocess[01]\.')


def load_weights(net, weights, path):
    """Load a network's saved weights; UserError naming what does not fit, in one short line."""
    present = net.state_dict()
    weights = {k: v for k, v in weights.items() if k in present or not UNREAD_PREPROCESSING.match(k)}
    problem = utils.state_dict_mismatch(net, weights)
    if problem:
        raise utils.UserError(f'{path}: the weights do not fit the network: {problem}')
    net.load_state_dict(weights)


def main(argv=None):
    given = vars(build_parser().parse_args(argv))
    job = Job()
    device = job.device(given.get('gpu'), given.get('deterministic', False))
    job.start(device)
    try:
        if 'eval_only' in given:
            return eval_only(given, device, job)
        return train(given, device, job)
    finally:
        job.stop()


if __name__ == '__main__':
    utils.cli(main)
