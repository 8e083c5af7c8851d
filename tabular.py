"""Sample-based search in tabular mode: BONAS, random search or regularised evolution on NAS-Bench-201,
with a benchmark table as the oracle.

    python tabular.py --method bonas --oracle ../shared/data/nb201/nb201_cifar100_imagenet16.csv
    python tabular.py --method rea --oracle TABLE.csv --oracle_metric imagenet16_120_test_acc --queries 100
    python tabular.py --save runs/tabular-bonas --resume              # continue an interrupted run

A method proposes cells; the oracle gives their values (in tabular mode the table's accuracy, by
definition the only thing the search reads of it); the method sees the history and proposes again,
until --queries cells have been queried. Every cell is queried at most once. The oracle takes the
cells of an iteration together, so that a weight-sharing evaluator (train the iteration's cells as
one supernet) can replace the table lookup without touching the methods.

Run directory (--save, default runs/tabular-METHOD-TIME): args.json, log.txt, history.jsonl (one
line per query: cell, value, the method's predicted mean and deviation where it has them, iteration),
checkpoint.pt (after every iteration: the history and the random states, which are a run's whole
state; --resume continues exactly), and at the end best.png (the best value against the number of
queries) and genotype.json ({"space": "nb201", "arch": ...}, which train.py --genotype reads). The last
line printed is the best cell's NAS-Bench-201 string.
"""
import argparse
import itertools
import json
import math
import random
import time
from collections import namedtuple
from pathlib import Path

import benchmark
import genotypes
import utils

METHODS = ('bonas', 'random_search', 'rea')
# The flags of each method; any other method refuses them.
METHOD_FLAGS = {'bonas': ('k', 'warm_start', 'kappa', 'gcn_epochs'), 'random_search': (),
                'rea': ('population', 'tournament')}
# Flags that say where a run writes, not what it computes: a resumed run may change them.
RUN_FLAGS = ('save', 'resume')

# A query a method proposes: the cell, and its predicted mean and deviation of its value where the
# method has them.
Proposal = namedtuple('Proposal', 'cell mean std', defaults=(None, None))


# ----------------------------------------------------------------------------------------------------
# The space: NAS-Bench-201 cells as the benchmark's strings
# ----------------------------------------------------------------------------------------------------

# The six edges of a NAS-Bench-201 cell, (from, to), in the order of its string.
NB201_EDGES = [(s, d) for d in range(1, genotypes.NB201_NODES) for s in range(d)]


class NB201:
    """Every cell of NAS-Bench-201, random cells and one-edge mutations (the global python generator
    draws them)."""
    name = 'nb201'
    edges = len(NB201_EDGES)

    def __init__(self):
        self._cells = None

    @staticmethod
    def string(ops):
        """The string of one op per edge, in the string's order."""
        return genotypes.nb201_string([(op, s, d) for op, (s, d) in zip(ops, NB201_EDGES)])

    def cells(self):
        """All cells, in a fixed order."""
        if self._cells is None:
            self._cells = [self.string(ops) for ops in
                           itertools.product(genotypes.NB201_OPERATIONS, repeat=self.edges)]
        return self._cells

    def random_cell(self):
        return self.string([random.choice(genotypes.NB201_OPERATIONS) for _ in range(self.edges)])

    def random_unseen(self, seen, n):
        """n distinct random cells, none in `seen`."""
        out, taken = [], set(seen)
        while len(out) < n:
            cell = self.random_cell()
            if cell not in taken:
                out.append(cell)
                taken.add(cell)
        return out

    def mutate(self, cell):
        """The cell with one edge's op changed to another op."""
        ops = [op for op, _, _ in genotypes.nb201_edges(cell)]
        e = random.randrange(self.edges)
        ops[e] = random.choice([op for op in genotypes.NB201_OPERATIONS if op != ops[e]])
        return self.string(ops)


SPACES = {'nb201': NB201}


# ----------------------------------------------------------------------------------------------------
# The oracle: a benchmark table
# ----------------------------------------------------------------------------------------------------

class Oracle:
    """oracle(cells) -> their values in one column of a table (accuracies in percent). A cell the table
    lacks, or holds no number for, is a UserError: the search cannot go on without it."""

    def __init__(self, path, metric=None, table=None):
        self.path = path
        self.columns, self.table = table or benchmark.read_table(path, 'oracle table')[:2]
        self.metric = metric or self.columns[0]
        if self.metric not in self.columns:
            raise utils.UserError(f'--oracle_metric {self.metric} is not an accuracy column of {path}; its '
                                  f'accuracy columns: {", ".join(self.columns)}')

    def value(self, cell, metric=None):
        metric = metric or self.metric
        values = self.table.get(cell)
        if values is None:
            raise utils.UserError(f'{cell} is not in oracle table {self.path} ({len(self.table)} cells); a '
                                  f'tabular search needs every cell of the space in it')
        value = values[metric]
        if value is None or not 0 <= value <= 100:
            raise utils.UserError(f'oracle table {self.path}: {metric} of {cell} is not an accuracy in percent')
        return value

    def __call__(self, cells):
        return [self.value(c) for c in cells]


# ----------------------------------------------------------------------------------------------------
# Methods and the search loop
# ----------------------------------------------------------------------------------------------------

def make_method(args, space):
    """The method of args.method with its flags; imported here so that each stays a file of its own."""
    if args.method == 'bonas':
        import bonas
        return bonas.BONAS(space, args.k, args.warm_start, args.kappa, args.gcn_epochs)
    if args.method == 'rea':
        import rea
        return rea.REA(space, args.population, args.tournament)
    import random_search
    return random_search.RandomSearch(space)


def search(method, oracle, queries, history=None, after_iteration=None):
    """Query cells until the history holds `queries` of them: each iteration the method proposes,
    the oracle evaluates the proposals together, and their records join the history (a list of
    dicts: cell, value, mean, std, iteration). after_iteration(history) runs after each iteration."""
    history = [] if history is None else history
    iteration = history[-1]['iteration'] + 1 if history else 0
    while len(history) < queries:
        proposals = method.propose(history, queries - len(history))
        seen = {r['cell'] for r in history}
        if not proposals or len({p.cell for p in proposals} | seen) != len(seen) + len(proposals):
            raise RuntimeError(f'{type(method).__name__} proposed no cell or a cell already queried')
        for p, value in zip(proposals, oracle([p.cell for p in proposals])):
            history.append(dict(cell=p.cell, value=value, mean=p.mean, std=p.std, iteration=iteration))
        iteration += 1
        if after_iteration is not None:
            after_iteration(history)
    return history


def best_curve(history):
    """The best value among the first n queries, for n = 1, 2, ..."""
    return list(itertools.accumulate((r['value'] for r in history), max))


def best_record(history):
    return max(history, key=lambda r: r['value'])


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------

def add_method_flags(p):
    """The methods' own flags (shared with compare.py)."""
    b = p.add_argument_group('BONAS (--method bonas)')
    b.add_argument('--k', type=int, default=10, help='cells queried per iteration (the top of the UCB ranking)')
    b.add_argument('--warm_start', type=int, default=10, help='random cells queried before the surrogate is used')
    b.add_argument('--kappa', type=float, default=0.5, help='UCB = predicted mean + kappa * predicted deviation')
    b.add_argument('--gcn_epochs', type=int, default=100, help='epochs of the surrogate, retrained every iteration')
    r = p.add_argument_group('regularised evolution (--method rea)')
    r.add_argument('--population', type=int, default=10, help='population size P (the P cells queried last)')
    r.add_argument('--tournament', type=int, default=3,
                   help='tournament size S: the parent is the best of S cells drawn from the population')


def build_parser():
    p = utils.Parser('tabular.py', description='Sample-based search in tabular mode (see the module docstring).')
    p.add_argument('--method', choices=METHODS, default='bonas', help='the search method')
    p.add_argument('--space', choices=tuple(SPACES), default='nb201', help='the search space (tabular: NAS-Bench-201)')
    p.add_argument('--oracle', metavar='FILE', default=None,
                   help="the benchmark table: a CSV with a column of architecture strings ('arch...') and "
                        "accuracy columns (headers containing 'acc'), as derive.py --benchmark reads")
    p.add_argument('--oracle_metric', metavar='COLUMN', default=None,
                   help="the table's column the search maximises (default: its first accuracy column)")
    p.add_argument('--queries', type=int, default=150, help='cells queried in all (the budget)')
    p.add_argument('--seed', type=int, default=0, help='random seed')
    p.add_argument('--save', default=None, help='run directory (default: runs/tabular-METHOD-TIME)')
    p.add_argument('--resume', action='store_true', help='continue the run in --save from its checkpoint')
    add_method_flags(p)
    return p


def check_args(args, given, space_size):
    """The flags' rules; `given`: the flags on the command line, so that a method's flag given to
    another method is refused rather than ignored."""
    foreign = [d for m, flags in METHOD_FLAGS.items() if m != args.method for d in flags
               if d in given and d not in METHOD_FLAGS[args.method]]
    own = ', '.join(f'--{d}' for d in METHOD_FLAGS[args.method]) or 'none'
    utils.check([
        (args.oracle is not None, f'--oracle FILE is needed: the benchmark table the search queries (tabular '
                                  f'mode is the only mode of --method {args.method} so far)'),
        (not foreign, f'--{foreign[0] if foreign else ""} is not a flag of --method {args.method} '
                      f'(its own flags: {own})'),
        (1 <= args.queries <= space_size, f'--queries must be between 1 and the {space_size} cells of the '
                                          f'space, got {args.queries}'),
        (args.k >= 1, f'--k must be at least 1, got {args.k}'),
        (args.warm_start >= 2, f'--warm_start must be at least 2 (the surrogate needs cells to learn '
                               f'from), got {args.warm_start}'),
        (math.isfinite(args.kappa) and args.kappa >= 0, f'--kappa must be a number >= 0, got {args.kappa}'),
        (args.gcn_epochs >= 1, f'--gcn_epochs must be at least 1, got {args.gcn_epochs}'),
        (args.population >= 2, f'--population must be at least 2, got {args.population}'),
        (1 <= args.tournament <= args.population,
         f'--tournament must be between 1 and --population {args.population}, got {args.tournament}'),
    ])
    if not Path(args.oracle).is_file():
        raise utils.UserError(f'oracle table {args.oracle} does not exist')


def configure(argv):
    """(args, checkpoint state or None): a new run's flags, or a resumed run's own with the flags the
    user gives again (only RUN_FLAGS may differ)."""
    parser = build_parser()
    args, given = parser.parse(argv)
    state = None
    if args.resume:
        if args.save is None:
            raise utils.UserError('--resume needs --save RUN_DIR, the run to continue')
        path = Path(args.save) / 'checkpoint.pt'
        state = utils.load_checkpoint(path)
        utils.require_kind(state, 'tabular', path)
        if not isinstance(state.get('args'), dict) or not isinstance(state.get('history'), list):
            raise utils.UserError(f'{path} is not a checkpoint of tabular.py (no arguments or history)')
        args = argparse.Namespace(**utils.resumed_args(parser, state['args'], given, RUN_FLAGS))
        given = {}              # the run's own flags passed these checks when it started
    check_args(args, given, len(SPACES[args.space]().cells()))
    args.save = args.save or f'runs/tabular-{args.method}-{time.strftime("%Y%m%d-%H%M%S")}'
    return args, state


def write_history(run, history):
    """history.jsonl, replaced whole (atomically) so that it is always complete."""
    utils.write_text_atomic(run.file('history.jsonl'), ''.join(json.dumps(r) + '\n' for r in history))


def draw_best(run, history, metric):
    with utils.figure(run.file('best.png'), figsize=(6, 4)) as ax:
        ax.plot(range(1, len(history) + 1), best_curve(history))
        ax.set_xlabel('queries')
        ax.set_ylabel(f'best {metric}')
        ax.grid(alpha=0.3)


def main(argv=None):
    args, state = configure(argv)
    oracle = Oracle(args.oracle, args.oracle_metric)         # before the run directory: a bad table leaves nothing
    space = SPACES[args.space]()
    run = utils.RunDir(args.save, args, resume=args.resume, rewind=state and state.get('run_files'))
    method = make_method(args, space)
    if state is None:
        utils.set_seed(args.seed)
        history = []
        run.log(f'{args.method} in the {args.space} space, {args.queries} queries, oracle {args.oracle} '
                f'({oracle.metric}), seed {args.seed}; run directory {args.save}')
    else:
        utils.set_rng_state(state['rng'])
        history = state['history']
        run.log(f'resumed after {len(history)} queries')

    def after_iteration(history):
        best = best_record(history)
        last = history[-1]['iteration']
        run.log(f'iteration {last}: {len(history)} queries, best {best["value"]:.2f} {best["cell"]}')
        write_history(run, history)
        utils.save_checkpoint(dict(kind='tabular', args=vars(args), history=history, rng=utils.get_rng_state(),
                                   run_files=run.sizes()), run.file('checkpoint.pt'))

    search(method, oracle, args.queries, history, after_iteration)
    draw_best(run, history, oracle.metric)     # once: drawing it every query would take longer than the query
    best = best_record(history)
    genotypes.save_json(best['cell'], run.file('genotype.json'))
    others = ', '.join(f'{c} {oracle.value(best["cell"], c):.2f}' for c in oracle.columns if c != oracle.metric)
    run.log(f'best of {len(history)} queries: {oracle.metric} {best["value"]:.2f}'
            + (f' ({others})' if others else '') + f', found at query {history.index(best) + 1}')
    print(best['cell'])
    return dict(history=history, best=best['cell'], save=args.save)


if __name__ == '__main__':
    utils.cli(main)
