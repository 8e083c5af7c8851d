"""Project helpers: errors and CLI entry, devices and seeds, data sets kept on the device with
batch-wise augmentation, meters, run directories, atomic checkpoints, model statistics, plots.

Device-agnostic: nothing here assumes CUDA; tensors stay on the device they were given.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import pickle
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


# ---------------------------------------------------------------------------------------------
# Errors and the command-line entry point
# ---------------------------------------------------------------------------------------------

class UserError(Exception):
    """A mistake of the user (bad flag, missing or corrupt file); the message is one line."""


def cli(main):
    """Run a script's main(): a UserError or an OSError (a full disk, a folder that cannot be
    written) becomes one stderr line and exit code 2, Ctrl-C exit 130."""
    try:
        main()
    except UserError as e:
        # One line, whatever the message holds, so the user never sees a wall of text.
        _fail(str(e))
    except OSError as e:
        _fail(os_error_line(e))
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr, flush=True)
        sys.exit(130)


def _fail(message):
    print('error: ' + ' '.join(message.split()), file=sys.stderr, flush=True)
    sys.exit(2)


def os_error_line(e):
    """'<reason>: <file>' for an OSError, the reason alone when it names no file."""
    reason = e.strerror or str(e) or type(e).__name__
    return f'{reason}: {e.filename}' if e.filename else reason


class Parser(argparse.ArgumentParser):
    """argparse for the project's scripts. A mistake on the command line is one UserError line that
    points at the script's --help; long options cannot be abbreviated, so that the flags a resumed
    run compares are the ones written; parse() also says which flags were given."""

    def __init__(self, prog, **kwargs):
        super().__init__(prog=prog, allow_abbrev=False, **kwargs)

    def error(self, message):
        raise UserError(f'{message} (see python {self.prog} --help)')

    def parse(self, argv=None):
        """(namespace with every default, {dest: value} of the flags given on the command line).
        For store-style actions (store, store_true, BooleanOptionalAction), which are all the
        scripts use; an append or count action would need its own marker."""
        # argparse leaves attributes already in the namespace alone: a marker that survives
        # parsing is a flag that was not given.
        unset = object()
        marked = argparse.Namespace(**{a.dest: unset for a in self._actions if a.dest != 'help'})
        given = {k: v for k, v in vars(self.parse_args(argv, marked)).items() if v is not unset}
        return self.parse_args(argv), given

    def defaults(self):
        return {a.dest: a.default for a in self._actions
                if a.dest != 'help' and a.default is not argparse.SUPPRESS}

    def option(self, dest):
        """The option string of a destination, as the user writes it ('--lambda' for 'lam')."""
        for a in self._actions:
            if a.dest == dest and a.option_strings:
                return max(a.option_strings, key=lambda o: (o.startswith('--'), -len(o)))
        return '--' + dest


def check(rules):
    """Raise UserError with the message of the first (ok, message) rule whose ok is false: a
    script's flag checks read as one list of rules."""
    for ok, message in rules:
        if not ok:
            raise UserError(message)


def resumed_args(parser, stored, given, run_flags, defaults=None):
    """The configuration of a resumed run: every flag as the run was started with it, unless the
    user gives it again. Flags in run_flags (where and how the run executes) may change; any other
    flag given with another value than the run's is a UserError, since the run would no longer
    continue the computation it started. A flag the run predates takes its default."""
    defaults = parser.defaults() if defaults is None else defaults
    for dest, value in given.items():
        before = stored.get(dest, defaults.get(dest))
        if dest not in run_flags and value != before:
            changeable = ', '.join(parser.option(d) for d in sorted(run_flags) if d != 'resume')
            raise UserError(f'{parser.option(dest)} {value} differs from the resumed run\'s {before}; a '
                            f'resumed run keeps its configuration (only {changeable} may change)')
    return {**defaults, **stored, **{k: v for k, v in given.items() if k in run_flags}}


# ---------------------------------------------------------------------------------------------
# Devices and random state
# ---------------------------------------------------------------------------------------------

def get_device(gpu=None, deterministic=False):
    """None: cuda:0 when CUDA is available, else CPU. An int N: cuda:N, checked to exist.

    deterministic: the same results from run to run on a GPU too (deterministic algorithms only,
    no cuDNN autotuning), at some cost in speed. Otherwise cuDNN autotuning is switched on: every
    network here runs fixed input shapes."""
    if deterministic:
        set_deterministic()
    if gpu is None:
        if not torch.cuda.is_available():
            return torch.device('cpu')
        gpu = 0
    if not torch.cuda.is_available():
        raise UserError(f'--gpu {gpu} asked for, but CUDA is not available on this machine')
    count = torch.cuda.device_count()
    if not 0 <= gpu < count:
        raise UserError(f'--gpu {gpu} is out of range: this machine has {count} GPU(s), 0..{count - 1}')
    # Make it the current device too, so autocast, memory statistics and synchronize() refer to it.
    torch.cuda.set_device(gpu)
    torch.backends.cudnn.benchmark = not deterministic
    return torch.device('cuda', gpu)


def peak_memory_mib(device):
    """Peak GPU memory allocated (since the last torch.cuda.reset_peak_memory_stats); on the CPU the
    process's peak resident size."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # ru_maxrss is in KiB


def set_deterministic():
    """Deterministic algorithms everywhere; an op without one raises instead of varying."""
    # cuBLAS reads this when it creates its first handle, so it must be set before any CUDA work.
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def set_seed(seed):
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state():
    """Every global random state a run depends on, for its checkpoint."""
    state = {'python': random.getstate(), 'numpy': np.random.get_state(),
             'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what get_rng_state() returned (CUDA states only where CUDA is present)."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        cuda_states = state['cuda'][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ---------------------------------------------------------------------------------------------
# Data sets: read once into uint8 tensors that stay on the device
# ---------------------------------------------------------------------------------------------

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR_FOLDER = 'cifar-10-batches-py'
CIFAR_TRAIN_FILES = tuple(f'data_batch_{i}' for i in range(1, 6))
CIFAR_TEST_FILE = 'test_batch'


def _cifar_folder(root):
    """The folder that holds the pickles: root/cifar-10-batches-py, or root itself when it is one."""
    root = Path(root)
    names = CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)
    if not (root / CIFAR_FOLDER).is_dir() and (
            root.name == CIFAR_FOLDER or any((root / n).exists() for n in names)):
        return root
    return root / CIFAR_FOLDER


def _missing_cifar_files(folder, names=CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)):
    return [folder / name for name in names if not (folder / name).is_file()]


def _download_cifar10(root):
    import torchvision  # only needed for the download
    try:
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except (OSError, RuntimeError, ValueError) as e:  # network errors are OSErrors (URLError)
        raise UserError(f'could not download CIFAR-10 into {root}: {e}') from e


def _read_cifar_batch(path):
    """One python-pickle batch -> (uint8 [N,3,32,32], int64 [N]); UserError when it is not one."""
    try:
        with open(path, 'rb') as f:
            batch = pickle.load(f, encoding='latin1')
        data = np.asarray(batch['data'])
        labels = np.asarray(batch['labels'], dtype=np.int64)
    except Exception as e:  # a damaged pickle can fail in many ways; all mean the same to the user
        raise UserError(f'CIFAR-10 file {path} is corrupt or not a CIFAR-10 batch: '
                        f'{type(e).__name__}: {e}') from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f'CIFAR-10 file {path} is corrupt: expected uint8 data of shape [N, 3072], '
                        f'found {data.dtype} {list(data.shape)}')
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise UserError(f'CIFAR-10 file {path} is corrupt: expected {data.shape[0]} labels in 0..9')
    # Each row holds the R, G and B planes one after the other, row-major: a plain reshape.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def load_cifar10(root, device='cpu', download=False, train=True):
    """CIFAR-10 from the standard python pickles under root/cifar-10-batches-py (or root itself).

    Returns dict(train_x, train_y, test_x, test_y): uint8 [N,3,32,32] images and int64 labels on
    `device`; train=False reads (and needs) only the test batch and returns test_x, test_y. The
    pickles are read directly (no checksum), so shortened subsets load as well.
    """
    folder = _cifar_folder(root)
    names = (CIFAR_TRAIN_FILES if train else ()) + (CIFAR_TEST_FILE,)
    if download and _missing_cifar_files(folder, names):
        # torchvision unpacks into <dir>/cifar-10-batches-py: give it the folder above ours.
        _download_cifar10(folder.parent)
    missing = _missing_cifar_files(folder, names)
    if missing:
        expected = 'data_batch_1..5 and test_batch' if train else 'test_batch'
        raise UserError(f'CIFAR-10 not found: {missing[0]} is missing (expected {expected} in '
                        f'{folder}){"" if download else " (search.py and train.py fetch it with --download)"}; '
                        f'point the data path at the folder that holds {CIFAR_FOLDER}')
    test_x, test_y = _read_cifar_batch(folder / CIFAR_TEST_FILE)
    out = {'test_x': test_x.to(device), 'test_y': test_y.to(device)}
    if train:
        batches = [_read_cifar_batch(folder / name) for name in CIFAR_TRAIN_FILES]
        out.update(train_x=torch.cat([x for x, _ in batches]).to(device),
                   train_y=torch.cat([y for _, y in batches]).to(device))
    return out


def _mnist_root(root):
    """Accept the folder that holds MNIST/raw, or MNIST, or MNIST/raw itself."""
    root = Path(root)
    if root.name == 'raw' and root.parent.name == 'MNIST':
        return root.parent.parent
    if root.name == 'MNIST' and (root / 'raw').is_dir():
        return root.parent
    return root


MNIST_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
               't10k-labels-idx1-ubyte')


def load_mnist(root, device='cpu'):
    """MNIST from the IDX files under root/MNIST/raw via torchvision; uint8 [N,1,28,28], int64 labels."""
    import torchvision  # only needed for MNIST's file format
    root = _mnist_root(root)
    raw = root / 'MNIST' / 'raw'
    # Checked here, not left to torchvision, which reports a damaged file as a missing data set.
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    if missing:
        raise UserError(f'MNIST not found under {root}: {raw / missing[0]} is missing (expected '
                        f'{", ".join(MNIST_FILES)} in {raw})')
    out = {}
    for split, train in (('train', True), ('test', False)):
        try:
            ds = torchvision.datasets.MNIST(str(root), train=train, download=False)
        except Exception as e:  # damaged IDX files fail in the parser with varied exceptions
            raise UserError(f'MNIST files in {raw} are truncated or corrupt: '
                            f'{type(e).__name__}: {e}') from e
        out[f'{split}_x'] = ds.data.to(torch.uint8).unsqueeze(1).to(device)
        out[f'{split}_y'] = ds.targets.to(torch.int64).to(device)
    return out


def imagenet_loaders(root, batch_size, workers, distributed=False, crop=224, resize=256,
                     pin_memory=True, seed=0):
    """ImageFolder loaders for root/train and root/val with the usual ImageNet transforms.

    Returns (train_loader, val_loader, train_sampler); train_sampler is a DistributedSampler when
    `distributed`, else None. Call set_loader_epoch(train_loader, train_sampler, seed, epoch) before
    every epoch: the order and the workers' random streams are then a function of (seed, epoch), so
    a resumed run sees the same images and augmentation. The validation loader holds the whole
    validation set; a data-parallel caller shards it (train.py gives each process every world-th image
    and sums the counts).
    """
    import torchvision.datasets as datasets
    import torchvision.transforms as T
    root = Path(root)
    for split in ('train', 'val'):
        if not (root / split).is_dir():
            raise UserError(f'ImageNet folder {root / split} is missing: expected {root}/train and '
                            f'{root}/val with one sub-folder of images per class')
    normalize_t = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_t = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(),
                         T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
                         T.ToTensor(), normalize_t])
    val_t = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), normalize_t])
    try:
        train_set = datasets.ImageFolder(str(root / 'train'), train_t)
        val_set = datasets.ImageFolder(str(root / 'val'), val_t)
    except (FileNotFoundError, OSError) as e:
        raise UserError(f'cannot read ImageNet under {root}: {e}') from e
    train_sampler = None
    if distributed:
        train_sampler = torch.utils.data.distributed.DistributedSampler(train_set, shuffle=True, seed=seed)
    # Workers are started anew each epoch (not persistent), so that their random streams, drawn
    # from the loader's generator, restart from the epoch's seed.
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch_size, shuffle=train_sampler is None, sampler=train_sampler,
        num_workers=workers, pin_memory=pin_memory, drop_last=True,
        generator=torch.Generator().manual_seed(seed))
    val_loader = torch.utils.data.DataLoader(
        val_set, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory)
    return train_loader, val_loader, train_sampler


def set_loader_epoch(loader, sampler, seed, epoch):
    """Make the next pass of an imagenet_loaders training loader a function of (seed, epoch)."""
    if sampler is not None:
        sampler.set_epoch(epoch)
    loader.generator.manual_seed((seed * 0x9E3779B97F4A7C15 + epoch) % 2**63)


# ---------------------------------------------------------------------------------------------
# Normalisation and augmentation, batch-wise on the data's device
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _affine(mean, std, device):
    """Per-channel (scale, shift) with x/255 normalised = x * scale + shift, made once per device
    (building them every step would copy from the host and stall the GPU's queue)."""
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std_t), -mean_t / std_t


def normalize(x_uint8, mean, std):
    """uint8 images [N,C,H,W] -> float32 (x/255 - mean) / std, per channel."""
    scale, shift = _affine(tuple(mean), tuple(std), x_uint8.device)
    return torch.addcmul(shift, x_uint8.float(), scale)


def crop_flip(x, pad, top, left, flip):
    """Per-sample crop of the zero-padded batch at offsets (top, left), mirrored where `flip`.

    x: [N,C,H,W]; top, left: int64 [N] in 0..2*pad; flip: bool [N]. The output keeps H x W. All
    samples go through one gather on precomputed flat indices: no loop over samples.
    """
    n, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    padded = x.new_zeros(n, c, hp, wp)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    rows = top.view(n, 1) + torch.arange(h, device=x.device)                     # [N,H]
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = left.view(n, 1) + torch.where(flip.view(n, 1), w - 1 - cols, cols)   # [N,W]
    index = (rows.view(n, h, 1) * wp + cols.view(n, 1, w)).view(n, 1, h * w)
    return padded.view(n, c, hp * wp).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def cutout_mask(n, h, w, size, generator=None, device='cpu'):
    """bool [N,H,W]: one square of side `size` per sample, centred anywhere, clipped at the border."""
    cy = torch.randint(0, h, (n, 1), generator=generator, device=device)
    cx = torch.randint(0, w, (n, 1), generator=generator, device=device)
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    in_rows = (ys >= cy - size // 2) & (ys < cy + size // 2)                    # [N,H]
    in_cols = (xs >= cx - size // 2) & (xs < cx + size // 2)                    # [N,W]
    return in_rows.view(n, h, 1) & in_cols.view(n, 1, w)


def augment(x_uint8, generator=None, crop_pad=4, flip=True, cutout=0, mean=CIFAR_MEAN,
            std=CIFAR_STD):
    """Random crop (zero padding), horizontal flip, normalisation and cutout of a uint8 batch.

    All randomness comes from `generator` (on x's device; None: the global generator), so a fixed
    generator state gives a fixed result. Padding is black before normalisation, and the cutout
    hole is 0 after it, as in the usual CIFAR-10 pipeline.
    """
    if x_uint8.dtype != torch.uint8:
        raise ValueError(f'augment expects uint8 images, got {x_uint8.dtype}')
    n, _, h, w = x_uint8.shape
    dev = x_uint8.device
    x = x_uint8
    if crop_pad > 0 or flip:
        if crop_pad > 0:
            top = torch.randint(0, 2 * crop_pad + 1, (n,), generator=generator, device=dev)
            left = torch.randint(0, 2 * crop_pad + 1, (n,), generator=generator, device=dev)
        else:
            top = left = torch.zeros(n, dtype=torch.int64, device=dev)
        if flip:
            mirror = torch.rand(n, generator=generator, device=dev) < 0.5
        else:
            mirror = torch.zeros(n, dtype=torch.bool, device=dev)
        # Moving uint8 rather than float keeps the gather's memory traffic at a quarter.
        x = crop_flip(x, crop_pad, top, left, mirror)
    out = normalize(x, mean, std)
    if cutout > 0:
        hole = cutout_mask(n, h, w, cutout, generator=generator, device=dev)
        out = out.masked_fill(hole.unsqueeze(1), 0.0)
    return out


def spearman(x, y):
    """Spearman's rank correlation of two equally long sequences (ties in arbitrary order); NaN
    below three values."""
    if len(x) < 3:
        return float('nan')
    rx, ry = (torch.as_tensor(v, dtype=torch.float64).argsort().argsort().double() for v in (x, y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()).clamp_min(1e-30))


def shuffled_split(n, cut, seed):
    """(first `cut` indices, the rest) of a seeded shuffle of range(n): two disjoint parts of a
    training set that are the same on every machine."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:cut], order[cut:]


class Batches:
    """Mini-batches (float inputs, int64 labels) over uint8 images that already sit on the device.

    The order and the augmentation of a pass are a fixed function of (seed, epoch): set_epoch(e)
    chooses the epoch of the next pass, and every pass moves on to the following epoch, so a run
    resumed with set_epoch(start_epoch) sees exactly the batches it would have seen.
    `augment` is a dict of augment() keyword arguments, or None for normalisation only.
    """

    def __init__(self, x, y, batch_size, shuffle=True, drop_last=False, augment=None,
                 mean=CIFAR_MEAN, std=CIFAR_STD, seed=0):
        if len(x) != len(y):
            raise ValueError(f'{len(x)} images but {len(y)} labels')
        if batch_size < 1:
            raise UserError(f'batch size must be at least 1, got {batch_size}')
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.mean, self.std = mean, std
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _generator(self, epoch):
        # Mix seed and epoch into one 63-bit seed (odd multiplier: distinct pairs rarely collide).
        g = torch.Generator(device=self.x.device)
        g.manual_seed((self.seed * 0x9E3779B97F4A7C15 + epoch) % 2**63)
        return g

    def __iter__(self):
        g = self._generator(self.epoch)
        self.epoch += 1
        n = len(self.x)
        dev = self.x.device
        order = torch.randperm(n, generator=g, device=dev) if self.shuffle else torch.arange(n, device=dev)
        aug = None if self.augment is None else {'mean': self.mean, 'std': self.std, **self.augment}
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            xb = self.x[idx]
            xb = normalize(xb, self.mean, self.std) if aug is None else augment(xb, generator=g, **aug)
            yield xb, self.y[idx]


# ---------------------------------------------------------------------------------------------
# Meters
# ---------------------------------------------------------------------------------------------

class AverageMeter:
    """Running average of a value weighted by sample counts."""

    def __init__(self):
        self.sum = 0.0
        self.count = 0
        self.avg = 0.0

    def update(self, val, n=1):
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count if self.count else 0.0


def accuracy(logits, target, topk=(1,)):
    """Top-k accuracies in percent (python floats), one per k."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices                      # [N, maxk]
    hit = pred.eq(target.view(-1, 1))
    n = max(target.numel(), 1)
    return [hit[:, :min(k, maxk)].any(dim=1).float().sum().item() * 100.0 / n for k in topk]


def check_finite(value, what):
    """Stop the run with a UserError when a loss (tensor or float) is NaN or infinite."""
    finite = bool(torch.isfinite(value).all()) if torch.is_tensor(value) else math.isfinite(value)
    if not finite:
        raise UserError(f'{what} is NaN/inf; the run stops here and the last good checkpoint is kept '
                        f'(try a smaller learning rate)')


def format_time(seconds):
    """Seconds as '3.2s', '4m 05s' or '2h 03m 04s'."""
    if seconds < 60:
        return f'{seconds:.1f}s'
    s = int(round(seconds))
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f'{h}h {m:02d}m {s:02d}s' if h else f'{m}m {s:02d}s'


# ---------------------------------------------------------------------------------------------
# Run directories and checkpoints
# ---------------------------------------------------------------------------------------------

def _json_default(obj):
    """JSON for values found in args and metrics: tensors, numpy scalars and arrays, paths."""
    if torch.is_tensor(obj) or isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    return str(obj)


class RunDir:
    """A run's directory: args.json, log.txt (the lines printed to stdout), metrics.jsonl.

    A new run refuses a directory that already holds a checkpoint (*.pt), so finished work is
    never overwritten by accident; resume=True continues it and appends to its files. Opening a
    run removes the temporary files a write cut short left behind. rewind: the sizes() recorded in
    the checkpoint a run resumes from; the lines written after it are dropped, since the resumed
    run writes them again.
    """

    APPENDED = ('log.txt', 'metrics.jsonl')

    def __init__(self, path, args=None, resume=False, rewind=None, flag='--save'):
        self.path = Path(path)
        # A file where the directory or one of its parents should be: mkdir would raise.
        blocking = next((p for p in (self.path, *self.path.parents) if p.exists() and not p.is_dir()), None)
        if blocking == self.path:
            raise UserError(f'{flag} {self.path} is a file, not a run directory; choose another {flag}')
        if blocking is not None:
            raise UserError(f'{flag} {self.path}: {blocking} is a file, not a directory')
        if not resume and any(self.path.glob('*.pt')):
            raise UserError(f'{self.path} already holds a run with a checkpoint; pass --resume to '
                            f'continue it or choose another {flag} directory')
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        if rewind:
            self.rewind(rewind)
        if args is not None:
            values = args if isinstance(args, dict) else vars(args)
            text = json.dumps(values, indent=2, sort_keys=True, default=_json_default)
            if resume and self.file('args.json').exists():
                # Keep the original arguments; the resumed call's arguments go into the log.
                self.log('resumed with args: ' + json.dumps(values, sort_keys=True,
                                                            default=_json_default))
            else:
                write_text_atomic(self.file('args.json'), text + '\n')

    def file(self, name):
        return self.path / name

    def log(self, msg):
        line = time.strftime('%Y-%m-%d %H:%M:%S ') + str(msg)
        print(line, flush=True)
        self._append('log.txt', line + '\n')

    def metric(self, **values):
        record = {'time': time.time(), **values}
        self._append('metrics.jsonl', json.dumps(record, default=_json_default) + '\n')

    def _append(self, name, text):
        try:
            with open(self.file(name), 'a') as f:
                f.write(text)
        except OSError as e:        # a full disk shows only when the buffer is written: name the file
            e.filename = e.filename or str(self.file(name))
            raise

    def sizes(self):
        """{file: bytes} of the files runs append to, for a checkpoint: what rewind() goes back to."""
        return {name: self.file(name).stat().st_size for name in self.APPENDED if self.file(name).exists()}

    def rewind(self, sizes):
        """Cut the appended files back to `sizes`: a run killed after its last checkpoint has logged
        steps that its resumption repeats."""
        for name, size in sizes.items():
            path = self.file(name)
            if name in self.APPENDED and path.exists() and path.stat().st_size > size:
                with open(path, 'r+b') as f:
                    f.truncate(size)


def remove_stale_temporaries(folder):
    """Delete the '.NAME.*.tmp' files write_atomic leaves when it is killed mid-write."""
    for tmp in Path(folder).glob('.*.tmp'):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def trim_metrics(path, keep):
    """Keep the JSON lines of metrics file `path` for which keep(record) is true (a torn line goes
    too): for a run resumed from a checkpoint that records no sizes() to rewind to."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if keep(r)]
    write_text_atomic(path, ''.join(json.dumps(r, default=_json_default) + '\n' for r in kept))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write):
    """Call write(binary file) on a temporary file beside `path`, fsync, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a torn file. The
    temporary name starts with '.' and ends in '.tmp', so it is never taken for an output (and
    RunDir removes it). The file gets the mode open() would give it. An OSError (a full disk)
    names `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        # mkstemp makes the file private (0600); outputs are read by other users and tools too.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)
        raise


def write_text_atomic(path, text):
    write_atomic(path, lambda f: f.write(text.encode()))


def save_figure_atomic(fig, path, **kwargs):
    """fig.savefig(path) through write_atomic (the format comes from path's suffix)."""
    fmt = Path(path).suffix.lstrip('.') or 'png'
    write_atomic(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


def save_checkpoint(state, path):
    """torch.save through write_atomic, then make the rename durable where the OS allows it."""
    path = Path(path)
    write_atomic(path, lambda f: torch.save(state, f))
    if hasattr(os, 'O_DIRECTORY'):  # make the rename itself durable where the OS allows it
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(path, map_location='cpu'):
    """The dict saved by save_checkpoint; UserError when the file is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'checkpoint {path} is missing')
    try:
        # weights_only=False: checkpoints hold RNG states, and numpy's contains an ndarray, which
        # the weights-only unpickler refuses. Full unpickling can run code, so load only
        # checkpoints from runs you trust (as with any pickle).
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torn zip, foreign pickle, truncated file: all mean "not loadable"
        raise UserError(f'checkpoint {path} is corrupt or not a checkpoint: '
                        f'{type(e).__name__}: {e}') from e
    if not isinstance(state, dict):
        raise UserError(f'checkpoint {path} is corrupt or not a checkpoint: '
                        f'holds a {type(state).__name__}, not a dict')
    return state


# Keys that tell the checkpoints of each script apart when they were written before checkpoints
# recorded their 'kind'.
_LEGACY_KINDS = (('search', ('prior', 'switch_optimizer', 'phase', 'step')),
                 ('train', ('config', 'model')))


def checkpoint_kind(state):
    """'search', 'train' or 'compress': the script that wrote a checkpoint, None if unknown."""
    if isinstance(state.get('kind'), str):
        return state['kind']
    if state.get('script') == 'compress':
        return 'compress'
    for kind, keys in _LEGACY_KINDS:
        if all(k in state for k in keys):
            return kind
    return None


def require_kind(state, kind, path):
    """UserError unless `state` is a checkpoint of <kind>.py, naming the script that wrote it."""
    found = checkpoint_kind(state)
    if found is None:
        raise UserError(f'{path} is not a checkpoint of {kind}.py')
    if found != kind:
        raise UserError(f'{path} is a checkpoint of {found}.py, not of {kind}.py')


# ---------------------------------------------------------------------------------------------
# Model statistics
# ---------------------------------------------------------------------------------------------

def state_dict_mismatch(module, state_dict):
    """A short description of why `state_dict` does not load into `module` (missing, unexpected
    and reshaped entries, with the first of each), or None when it fits. load_state_dict's own
    message lists every key, which for a whole network is a wall of text."""
    if not isinstance(state_dict, dict):
        return f'expected a dict of tensors, found a {type(state_dict).__name__}'
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [k for k in own if k in state_dict and (
        not torch.is_tensor(state_dict[k]) or state_dict[k].shape != own[k].shape)]
    parts = []
    if missing:
        parts.append(f'{len(missing)} missing (e.g. {missing[0]})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected (e.g. {unexpected[0]})')
    if reshaped:
        k = reshaped[0]
        found = list(state_dict[k].shape) if torch.is_tensor(state_dict[k]) else type(state_dict[k]).__name__
        parts.append(f'{len(reshaped)} of another shape (e.g. {k}: {found} instead of {list(own[k].shape)})')
    return ', '.join(parts) if parts else None


def count_params(model, skip=('auxiliary',)):
    """Number of parameters whose name contains none of `skip` (the auxiliary head by default)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not any(s in name for s in skip))


def count_macs(model, input_shape):
    """Multiply-adds per image of the Conv2d and Linear layers actually run on one input.

    input_shape: (C, H, W), or (1, C, H, W). Counted with forward hooks on a zero image in eval
    mode without gradients; every module's training flag is restored afterwards.
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device('cpu')
    total = [0]

    def conv_hook(m, inputs, out):
        kh, kw = m.kernel_size
        total[0] += out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m, inputs, out):
        total[0] += out.numel() // out.shape[0] * m.in_features

    flags = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, device=device))
    finally:
        for h in handles:
            h.remove()
        for m, training in flags.items():
            m.training = training
    return total[0] // shape[0]


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def read_metrics(metrics_path):
    """The records (JSON objects) of a metrics.jsonl file; lines that are not one are skipped."""
    records = []
    with open(metrics_path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A run killed while writing leaves a torn last line; the rest is still good.
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


@contextlib.contextmanager
def figure(path, *args, dpi=100, **kwargs):
    """The axes of plt.subplots(*args, **kwargs) for a with block, after which the figure is laid
    out, written to `path` through save_figure_atomic and closed."""
    import matplotlib
    matplotlib.use('Agg')  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield axes
        fig.tight_layout()
        save_figure_atomic(fig, path, dpi=dpi)
    finally:
        plt.close(fig)


def plot_curves(metrics_path, png_path, keys):
    """PNG with one panel per metric key, against 'step' (or 'epoch', or record number).

    Keys that no record holds are skipped; returns the keys drawn (nothing is written if none).
    """
    import matplotlib
    matplotlib.use('Agg')  # files only: no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    series = {}
    for i, r in enumerate(records):
        x = r.get('step', r.get('epoch', i))
        for k in keys:
            if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool):
                series.setdefault(k, ([], []))
                series[k][0].append(x)
                series[k][1].append(r[k])
    drawn = [k for k in keys if k in series]
    if not drawn:
        return drawn
    fig, axes = plt.subplots(len(drawn), 1, figsize=(6, 2.5 * len(drawn)), squeeze=False)
    for ax, k in zip(axes[:, 0], drawn):
        ax.plot(*series[k], marker='.' if len(series[k][0]) < 50 else None)
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel('step' if any('step' in r for r in records) else 'epoch')
    fig.tight_layout()
    save_figure_atomic(fig, png_path, dpi=100)
    plt.close(fig)
    return drawn
