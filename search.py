"""The search harness: one command for every search method, over every search space.

    python search.py --gpu 0                                 # BayesNAS, the default method (bayesnas.py)
    python search.py --space nb201 --benchmark TABLE.csv     # a NAS-Bench-201 cell, looked up
    python search.py --space proxyless --gpu 0               # tree cells in the retrained PyramidNet
    python search.py --save runs/search-l03 --resume         # continue an interrupted search
    python search.py --method rea --oracle TABLE.csv         # a sample-based method (tabular.py)
    python search.py --method NAME --help                    # a method's own flags

What the harness does for every method: the common flags (data, the weights' SGD, the supernet's size,
device, run directory), the split of the training set into the two disjoint parts the method asks for
(the test set is never read), the run directory, the phases with a checkpoint after each one and every
--checkpoint_freq steps (--resume continues exactly, to the bit on a CPU), the training step (the
weights with SGD, momentum, a fixed learning rate and weight decay, gradient clipping; the method's
own optimisers beside it), the log and metrics, and the outputs: genotype.json and genotype.py (the
Python literal for genotypes.py; nb201: the benchmark's architecture string on the last line;
proxyless: the network's PyramidTreeNet config), the cell pictures, and with --benchmark the derived
cell's accuracies in a table (the search itself never reads one).

A method is one module registered in METHODS (bayesnas.py says what each part is for): add_flags(parser),
defaults(args, space), rules(args), parts(args) (its split of the training set), phases(args),
steps(args, data), phase_name(kind, epoch), and a class that builds the supernet and holds the method's
state: describe(), weight_parameters(), state_dict() / load_state_dict(), start_phase(kind),
before_step(kind, i, n), regulariser(kind) (a term added to the loss, or None), optimizers(kind),
status(kind), end_phase(kind, epoch, data, step) and genotype(), built as Method(args, space, device,
run, data). Sample-based methods on a benchmark table (--method bonas, random_search, rea) run in
tabular.py, which takes their flags.

Run directory (--save, default runs/search-TIME): log.txt, args.json, metrics.jsonl, checkpoint.pt
(atomic), curves.png, the method's own files (bayesnas: gamma.json, gamma.png), and after the last phase
genotype.json, genotype.py, cell_normal.png and cell_reduce.png (nb201: genotype.json and cell.png;
proxyless: genotype.json, the network's config, and cell_s{1,2,3}h{0,1}.png, the two halves of the
first block of each stage). Checkpoints of runs before the method files existed load unchanged.
"""
import argparse
import importlib
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import benchmark
import model_search
import spaces
import tabular
import utils
import visualize


# ----------------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------------

# Registering a supernet method is one line: its name and the module that holds it.
METHODS = {'bayesnas': 'bayesnas', 'pgnas': 'pgnas'}


def method_module(name):
    return importlib.import_module(METHODS[name])


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------

# Flags that say where and how a run executes, not what it computes: a resumed run may change them.
RUN_FLAGS = ('data', 'download', 'gpu', 'report_freq', 'checkpoint_freq', 'save', 'resume', 'amp',
             'channels_last', 'deterministic', 'benchmark', 'compile')


def build_parser(method='bayesnas'):
    """The common flags and those of one method (search.py --method NAME --help shows them)."""
    p = utils.Parser('search.py', description='Search a cell with a supernet method (default: BayesNAS) '
                                              'or a sample-based one (see the module docstring).')
    p.add_argument('--method', choices=tuple(METHODS) + tabular.METHODS, default='bayesnas',
                   help='bayesnas (default; bayesnas.py), pgnas (pgnas.py), or a sample-based method on a '
                        'benchmark table (tabular.py, whose flags it then takes: --oracle FILE, --queries N, ...)')
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
                   'weights, not of the architecture parameters (1e-4)')
    p.add_argument('--grad_clip', type=float, default=5.0, help='gradient norm clip of the weights, '
                   '0 for none (5)')
    p.add_argument('--init_channels', type=int, default=16, help='channels of the first cells; '
                   'proxyless: of the stem, where the widths start (16)')
    p.add_argument('--layers', type=int, default=None, help='cells in the supernet (darts: 8) or per stage '
                   '(nb201: 5, as the benchmark; proxyless: 18 tree blocks, as the published network)')
    p.add_argument('--alpha', type=int, default=None, help='proxyless: PyramidNet widening, the cell width '
                   'grows by alpha over the network (84, as the published network)')
    method_module(method).add_flags(p)
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
                        "reduce-overhead; it compiles again after pruning); the method's own evaluations "
                        'run eagerly (default: off)')
    p.add_argument('--report_freq', type=int, default=50, help='log every this many steps (50)')
    p.add_argument('--checkpoint_freq', type=int, default=200, help='also checkpoint every this many '
                   'steps inside an epoch, 0 for phase ends only (200)')
    p.add_argument('--save', default=None, help='run directory (default: runs/search-TIME)')
    p.add_argument('--resume', action='store_true', help='continue the run in --save from its checkpoint')
    p.add_argument('--benchmark', metavar='FILE', default=None, help='nb201: print the accuracies of the '
                   'derived cell in FILE (a CSV table or the NATS-Bench API file; see benchmark.py)')
    return p


def check_args(a):
    """UserError for the first value out of range."""
    utils.check([
        (a.batch_size >= 2, f'--batch_size must be at least 2 (BatchNorm), got {a.batch_size}'),
        (a.learning_rate > 0, f'--learning_rate must be positive, got {a.learning_rate}'),
        (0 <= a.momentum < 1, f'--momentum must be in [0, 1), got {a.momentum}'),
        (a.weight_decay >= 0, f'--weight_decay must be >= 0, got {a.weight_decay}'),
        (a.grad_clip >= 0, f'--grad_clip must be >= 0 (0: no clipping), got {a.grad_clip}'),
        (a.init_channels >= 2 and a.init_channels % 2 == 0 or a.space == 'nb201' and a.init_channels >= 1,
         f'--init_channels must be even and positive (FactorizedReduce halves it), got {a.init_channels}'
         if a.space == 'darts' else f'--init_channels must be even and positive, got {a.init_channels}'),
        (a.alpha is None or a.space == 'proxyless', '--alpha applies to --space proxyless only'),
        (a.space != 'proxyless' or a.alpha is None or a.alpha >= 0, f'--alpha must be >= 0, got {a.alpha}'),
        (a.layers >= 3 or a.space != 'darts' and a.layers >= 1,
         f'--layers must be at least 3 (two of them are reduction cells), got {a.layers}'
         if a.space == 'darts' else f'--layers (cells per stage) must be at least 1, got {a.layers}'),
    ] + method_module(a.method).rules(a) + [
        (a.report_freq >= 1, f'--report_freq must be at least 1, got {a.report_freq}'),
        (a.checkpoint_freq >= 0, f'--checkpoint_freq must be >= 0, got {a.checkpoint_freq}'),
    ])
    benchmark.check(a.benchmark, spaces.get(a.space))


def space_defaults(args):
    """Fill in the flags whose default depends on --space (--layers, --batch_size, --alpha) and the
    method's (its defaults(args, space))."""
    space = spaces.get(args.space)
    args.layers = space.layers if args.layers is None else args.layers
    args.batch_size = space.batch_size if args.batch_size is None else args.batch_size
    if args.space == 'proxyless' and args.alpha is None:
        args.alpha = 84
    method_module(args.method).defaults(args, space)
    return args


def compiled(model, device):
    """model under torch.compile: CUDA graphs on CUDA, where the supernet's many small kernels are
    paced by their launches; the default mode elsewhere."""
    return torch.compile(model, mode='reduce-overhead' if device.type == 'cuda' else 'default', dynamic=False)


# ----------------------------------------------------------------------------------------------------
# Data: two disjoint parts of the training set
# ----------------------------------------------------------------------------------------------------

def make_data(args, device):
    """The method's parts of the training set (its parts(args)): a shuffled split at the share it
    gives, each part with its augmentation and its own shuffling seed."""
    share, flag, wanted = method_module(args.method).parts(args)
    data = utils.load_cifar10(args.data, device=device, download=args.download)
    n = len(data['train_x'])
    first, rest = (idx.to(device) for idx in utils.shuffled_split(n, int(round(share * n)), args.seed))
    x, y = data['train_x'], data['train_y']
    out = {}
    for name, (half, augment, drop_last, seed, used, label) in wanted.items():
        part = first if half == 'first' else rest
        if used and len(part) < args.batch_size:
            raise utils.UserError(f'the training set ({len(x)} images) is too small for --batch_size '
                                  f'{args.batch_size} with {flag} {share}: the {label} part holds '
                                  f'{len(part)} images')
        out[name] = utils.Batches(x[part], y[part], args.batch_size, drop_last=drop_last,
                                  seed=args.seed + seed, augment=augment)
    return out


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


# ----------------------------------------------------------------------------------------------------
# The run: the method, the weights' optimiser, the position in the phases
# ----------------------------------------------------------------------------------------------------

class Search:
    """Everything a checkpoint holds, and the steps of the run."""

    def __init__(self, args, device, run, steps_in, data=None):
        self.args, self.device, self.run = args, device, run
        self.steps_in = steps_in            # batches per epoch of each kind of phase
        self.cuda = device.type == 'cuda'
        utils.set_seed(args.seed)
        self.space = spaces.get(args.space)
        self.module = method_module(args.method)
        self.method = self.module.Method(args, self.space, device, run, data)
        self.model = self.method.model
        if self.cuda and args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # The training steps may run compiled; everything else (the method's evaluations, state) uses
        # the module.
        self.forward = compiled(self.model, device) if args.compile else self.model
        # weight_parameters(): tensors, or parameter groups where some weights take another decay.
        groups = list(self.method.weight_parameters())
        self.optimizer = torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum,
                                         weight_decay=args.weight_decay)
        self.weights = [w for g in self.optimizer.param_groups for w in g['params']]
        self.phases = self.module.phases(args)
        self.phase, self.step = 0, 0        # position: index into phases, batches done in that phase
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)   # loss sum, hits, images
        self.history = []                   # the method's summary of each phase that gave one
        self.elapsed = 0.0                  # seconds of earlier sessions of this run

    def state_dict(self):
        # run_files: how far log.txt and metrics.jsonl were written, for a resumed run to rewind to.
        return dict(kind='search', run_files=self.run.sizes(), args=vars(self.args),
                    model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    **self.method.state_dict(), phase=self.phase, step=self.step,
                    sums=self.sums.cpu(), history=self.history, elapsed=self.elapsed + self.clock(),
                    rng=utils.get_rng_state())

    def load_state_dict(self, state, path):
        try:
            self.model.load_state_dict(state['model'])
            self.optimizer.load_state_dict(state['optimizer'])
            self.method.load_state_dict(state)
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

    def train_step(self, x, y, kind):
        """One step of the weights (SGD) and of the method's optimisers of this kind of phase."""
        if self.cuda and self.args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda and self.args.amp):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y)
        extra = self.method.regulariser(kind)      # a term of the objective beside the data's (or None)
        others = self.method.optimizers(kind)
        self.optimizer.zero_grad(set_to_none=True)
        for optimizer in others:
            optimizer.zero_grad()
        (loss if extra is None else loss + extra).backward()
        if self.args.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.weights, self.args.grad_clip)
        self.optimizer.step()
        for optimizer in others:
            optimizer.step()
        # Left on the device: reading them every step would make the host wait for the GPU.
        self.sums += torch.stack([loss.detach().double() * len(y),
                                  (logits.argmax(1) == y).sum().double(),
                                  loss.new_full((), len(y), dtype=torch.float64)])   # filled on the device

    def train_phase(self, batches, kind, epoch):
        """The rest of one epoch, from self.step on; checkpoints every --checkpoint_freq steps."""
        args = self.args
        self.method.start_phase(kind)
        self.model.train()
        n, start, tic = self.steps_in[kind], self.step, time.time()
        # The batches of a pass are a fixed function of (seed, epoch): a resumed phase regenerates
        # the ones it had done and skips them, so it continues with exactly the same data.
        for i, (x, y) in enumerate(passes(batches, epoch * n, n)):
            if i < start:
                continue
            self.method.before_step(kind, i, n)
            self.train_step(x, y, kind)
            if args.compile and i == start:
                if self.cuda:
                    torch.cuda.synchronize(self.device)
                self.run.log(f'{self.phase_name(kind, epoch)}: first step {time.time() - tic:.1f} s '
                             f'(compilation included)')
            self.step = i + 1
            if self.step % args.report_freq == 0 or self.step == n:
                self.report(kind, epoch, n, start, tic)
            if args.checkpoint_freq and self.step % args.checkpoint_freq == 0 and self.step < n:
                self.check_finite(kind)         # never replace a good checkpoint with a diverged one
                self.save()

    def check_finite(self, kind):
        utils.check_finite(self.sums[0], f'{kind} training loss at step {self.step}')

    def phase_name(self, kind, epoch):
        return self.module.phase_name(kind, epoch)

    def report(self, kind, epoch, n, start, tic):
        self.check_finite(kind)
        loss, hits, images = self.sums.tolist()
        seconds = time.time() - tic
        rate = (self.step - start) * self.args.batch_size / max(seconds, 1e-9)
        left = n - self.step + sum(len_of for len_of in self.steps_after_phase())
        eta = left * self.args.batch_size / max(rate, 1e-9)
        self.run.log(f'{self.phase_name(kind, epoch)}  step {self.step}/{n}  loss {loss / images:.4f}  acc '
                     f'{100 * hits / images:.2f}%{self.method.status(kind)}  {rate:.0f} img/s  ETA '
                     f'{utils.format_time(eta)}')
        self.run.metric(phase=kind, epoch=epoch + 1, step=self.global_step(), train_loss=loss / images,
                        train_acc=100 * hits / images, images_per_s=rate)

    def position(self):
        """Where the run stands, as its log lines count: 'search iteration 1 at step 5/72'."""
        if self.phase >= len(self.phases):
            return 'the finished search'
        kind, epoch = self.phases[self.phase]
        return f'{self.phase_name(kind, epoch)} at step {self.step}/{self.steps_in[kind]}'

    def steps_after_phase(self):
        return [self.steps_in[kind] for kind, _ in self.phases[self.phase + 1:]]

    def global_step(self):
        return sum(self.steps_in[kind] for kind, _ in self.phases[:self.phase]) + self.step

    def end_phase(self, data):
        """The method's work after a phase (BayesNAS: its update after a switch epoch), then a checkpoint."""
        kind, epoch = self.phases[self.phase]
        summary = self.method.end_phase(kind, epoch, data, self.global_step())
        if summary is not None:
            self.history.append(summary)
        self.phase, self.step = self.phase + 1, 0
        self.sums.zero_()
        self.save()
        utils.plot_curves(self.run.file('metrics.jsonl'), self.run.file('curves.png'), ['train_loss', 'train_acc'])


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------

def method_of(argv):
    """The method a command asks for: --method, or for --resume the run directory's own (None: the
    default, or one the harness does not know, which the parser then names)."""
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
    return method


def configure(argv):
    """(args, checkpoint state or None): a new run's flags, or a resumed run's own with the flags the
    user gives again (only RUN_FLAGS may differ)."""
    method = method_of(argv)
    parser = build_parser(method if method in METHODS else 'bayesnas')
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
    if getattr(stored, 'tie', False) is None:      # a BayesNAS checkpoint of the days of --untie
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


def write_outputs(search, genotype, note):
    """genotype.json, genotype.py and the cell pictures; returns the literal."""
    literal = visualize.write_genotype(genotype, search.run.path, note)
    visualize.plot_genotype(genotype, search.run.path)
    return literal


def main(argv=None):
    if method_of(argv) in tabular.METHODS:
        return tabular.main(argv)
    args, state = configure(argv)
    device = utils.get_device(args.gpu, args.deterministic)
    data = make_data(args, device)          # before the run directory: bad data leaves nothing behind
    run = open_run(args, state)
    module = method_module(args.method)
    search = Search(args, device, run, module.steps(args, data), data)
    if state is not None:
        resume(search, state, run)
        state = None
    else:
        run.log(f'{search.method.name} search in the {args.space} space: {args.layers} '
                f'{search.space.layers_means}, {args.init_channels} channels, '
                f'{utils.count_params(search.model) / 1e6:.2f}M weights, {search.method.describe()}')
        run.log(f'device {device}; {module.describe_data(args, data, search.steps_in)}; '
                f'run directory {args.save}')
    search.start_clock()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)

    while search.phase < len(search.phases):
        kind, epoch = search.phases[search.phase]
        search.train_phase(data[kind], kind, epoch)
        search.end_phase(data)

    total = search.elapsed + search.clock()
    run.log(f'search finished in {utils.format_time(total)}, peak memory '
            f'{utils.peak_memory_mib(device):.0f} MiB ({"GPU" if device.type == "cuda" else "process"})')
    genotype, note = search.method.genotype()
    literal = write_outputs(search, genotype, note)
    if args.benchmark is not None:
        run.log(benchmark.lookup(args.benchmark, genotype))
    files = ', '.join(visualize.outputs(search.space))
    if args.space == 'proxyless':
        net = model_search.ProxylessNetwork(genotype)
        run.log(f'derived network: {utils.count_params(net) / 1e6:.3f}M parameters, '
                f'{utils.count_macs(net, (3, 32, 32)) / 1e6:.1f}M multiply-adds per image')
    run.log(f'derived {"genotype" if args.space == "darts" else "architecture"} ({files}):\n{literal}')
    return dict(genotype=genotype, history=search.history, seconds=total, save=args.save)


if __name__ == '__main__':
    utils.cli(main)
