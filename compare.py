"""Compare sample-based methods in tabular mode: many seeds each, the best value against queries.

    python compare.py --oracle ../shared/data/nb201/nb201_cifar100_imagenet16.csv --seeds 20 \\
        --methods bonas random_search rea --queries 150 --budgets 50 100 150 --out runs/compare

Every (method, seed) runs in this process (tabular.search, no run directory), seeded with utils.set_seed.
Written into --out: curves.png (per method the mean best value over the seeds against the number of
queries, with a band of one standard error of that mean: the standard NAS-Bench figure), table.md
(mean +- standard deviation over the seeds of the best value found within each of --budgets, seconds
per run, and the table's other accuracy columns for the cell each run found best at the largest
budget) and results.json (every run's best-so-far curve and best cell within each budget, rewritten
after each run).
The methods' flags are tabular.py's.
"""
import argparse
import json
import math
import statistics
import time
from pathlib import Path

import tabular
import utils


def build_parser():
    p = utils.Parser('compare.py', description='Compare sample-based methods over seeds (see the module docstring).')
    p.add_argument('--oracle', metavar='FILE', required=True, help="the benchmark table (as tabular.py's --oracle)")
    p.add_argument('--oracle_metric', metavar='COLUMN', default=None,
                   help='the column the searches maximise (default: the first accuracy column)')
    p.add_argument('--methods', nargs='+', choices=tabular.METHODS, default=list(tabular.METHODS),
                   help='the methods to compare')
    p.add_argument('--space', choices=tuple(tabular.SPACES), default='nb201', help='the search space')
    p.add_argument('--seeds', type=int, default=20, help='runs per method, with seeds 0, 1, ...')
    p.add_argument('--queries', type=int, default=150, help='queries per run')
    p.add_argument('--budgets', type=int, nargs='+', default=None,
                   help='numbers of queries at which the table reports the best value (default: --queries)')
    p.add_argument('--out', default=None, help='output folder (default: runs/compare-TIME)')
    tabular.add_method_flags(p)
    return p


def configure(argv):
    parser = build_parser()
    args, given = parser.parse(argv)
    args.budgets = sorted(set(args.budgets or [args.queries]))
    utils.check([
        (args.seeds >= 1, f'--seeds must be at least 1, got {args.seeds}'),
        (all(1 <= b <= args.queries for b in args.budgets),
         f'--budgets must lie between 1 and --queries {args.queries}, got {" ".join(map(str, args.budgets))}'),
    ])
    # Each method's flags are checked as tabular.py checks them; a flag no chosen method has is refused.
    unused = [d for flags in tabular.METHOD_FLAGS.values() for d in flags if d in given
              and not any(d in tabular.METHOD_FLAGS[m] for m in args.methods)]
    if unused:
        raise utils.UserError(f'--{unused[0]} is a flag of none of the methods compared ({", ".join(args.methods)})')
    for method in args.methods:
        own = {d: v for d, v in given.items() if d in tabular.METHOD_FLAGS[method]}
        tabular.check_args(method_args(args, method), own, len(tabular.SPACES[args.space]().cells()))
    args.out = args.out or f'runs/compare-{time.strftime("%Y%m%d-%H%M%S")}'
    return args


def method_args(args, method):
    """The namespace tabular.make_method and tabular.check_args take, for one method."""
    return argparse.Namespace(**{**vars(args), 'method': method})


def run_all(args, oracle, out):
    """{method: [per seed: dict(seed, curve, best, seconds)]}, results.json rewritten after every run."""
    space = tabular.SPACES[args.space]()
    results = {}
    for method in args.methods:
        runs = results[method] = []
        searcher = tabular.make_method(method_args(args, method), space)
        for seed in range(args.seeds):
            utils.set_seed(seed)
            start = time.perf_counter()
            history = tabular.search(searcher, oracle, args.queries)
            seconds = time.perf_counter() - start
            # The best cell within each budget, for the table's other columns.
            best = {str(b): tabular.best_record(history[:b])['cell'] for b in args.budgets}
            runs.append(dict(seed=seed, curve=tabular.best_curve(history), best=best, seconds=seconds))
            print(f'{method} seed {seed}: best {runs[-1]["curve"][-1]:.2f} in {seconds:.1f}s '
                  f'({tabular.best_record(history)["cell"]})', flush=True)
            utils.write_text_atomic(out / 'results.json', json.dumps(results, indent=1) + '\n')
    return results


def mean_std(values):
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table_text(args, oracle, results):
    """table.md: mean +- std of the best value at each budget, seconds per run, other columns."""
    others = [c for c in oracle.columns if c != oracle.metric]
    head = ['method'] + [f'best {oracle.metric} @ {b}' for b in args.budgets] + ['s / run'] + \
           [f'{c} of the best cell @ {args.budgets[-1]}' for c in others]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for method, runs in results.items():
        cells = [f'{m:.2f} ± {s:.2f}' for m, s in (mean_std([r['curve'][b - 1] for r in runs]) for b in args.budgets)]
        cells.append(f'{statistics.fmean(r["seconds"] for r in runs):.2f}')
        found = [r['best'][str(args.budgets[-1])] for r in runs]
        cells += ['{:.2f} ± {:.2f}'.format(*mean_std([oracle.value(cell, c) for cell in found])) for c in others]
        lines.append('| ' + ' | '.join([method] + cells) + ' |')
    note = (f'\n{len(next(iter(results.values())))} seeds per method; mean ± standard deviation over the seeds; '
            f'oracle {Path(args.oracle).name}, column {oracle.metric}.\n')
    return '\n'.join(lines) + '\n' + note


def draw(args, oracle, results, path):
    with utils.figure(path, figsize=(7, 4.5)) as ax:
        for method, runs in results.items():
            curves = list(zip(*(r['curve'] for r in runs)))             # per query: the seeds' values
            mean = [statistics.fmean(v) for v in curves]
            sem = [statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0 for v in curves]
            x = range(1, len(mean) + 1)
            ax.plot(x, mean, label=f'{method} ({len(runs)} seeds)')
            ax.fill_between(x, [m - s for m, s in zip(mean, sem)], [m + s for m, s in zip(mean, sem)], alpha=0.25)
        ax.set_xlabel('queries')
        ax.set_ylabel(f'best {oracle.metric} (mean ± s.e.)')
        ax.grid(alpha=0.3)
        ax.legend()


def main(argv=None):
    args = configure(argv)
    oracle = tabular.Oracle(args.oracle, args.oracle_metric)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_all(args, oracle, out)
    draw(args, oracle, results, out / 'curves.png')
    text = table_text(args, oracle, results)
    utils.write_text_atomic(out / 'table.md', text)
    print(text, end='')
    print(f'wrote curves.png, table.md and results.json to {out}')
    return results


if __name__ == '__main__':
    utils.cli(main)
