"""The whole device measurement in one command: the benchmarks first, then short searches and short
retrainings, each printed as it goes, everything under one folder.

    python measure.py --data DATA --gpu 0                # the GPU figures of docs/results.md's Performance
    python measure.py --data DATA --quick                # the same steps at toy sizes on the CPU

Steps, in order (a step that fails is reported and the next one still runs):
    bench            bench.py: every section, supernet batches 64 and 128 (--compile: also the
                     torch.compile variants), the curvature on a supernet warmed up on DATA
    search           search.py, the default DARTS-space search on DATA
    search-proxyless search.py --space proxyless, the full-size supernet on DATA
    train            train.py, two epochs of the BayesNAS cell with DARTS's recipe on DATA
    train-proxyless  train.py --space proxyless, one epoch of ProxylessNAS_G on DATA
--quick runs each at the sizes of the tests (tiny networks, a few steps) on the CPU, to check that the
whole measurement runs end to end; its figures predict nothing. Writes OUT/summary.json (each step's
status, wall time and headline figures) and each step's own outputs under OUT/STEP.
"""
import json
import sys
import time
import traceback
from pathlib import Path

import bench
import search
import train
import utils

TINY_SEARCH = ['--layers', '3', '--init_channels', '4', '--batch_size', '8', '--hessian_batches', '2',
               '--warmup_portion', '0.2', '--report_freq', '10']
TINY_PROXYLESS = ['--layers', '1', '--alpha', '4', '--init_channels', '4', '--batch_size', '8',
                  '--hessian_batches', '2', '--warmup_portion', '0.2', '--report_freq', '10']
TINY_TRAIN = ['--init_channels', '4', '--layers', '3', '--batch_size', '16', '--epochs', '1']


def steps(a, out):
    """(name, function returning its headline figures) for every step, in order."""
    data, device = ['--data', str(a.data)], ([] if a.quick else ['--gpu', str(a.gpu)])
    tiny = a.quick

    def run_bench():
        argv = ['--quick'] if tiny else ['--gpu', str(a.gpu), '--batch_sizes', '64', '128', '--data', str(a.data)]
        report = bench.main(argv + (['--compile'] if a.compile else []) + ['--out', str(out / 'bench' / 'bench.json')])
        return dict(projection=report['projection'], device=report['device'])

    def run_search(space, flags):
        result = search.main(data + device + ['--space', space, '--save', str(out / f'search-{space}')]
                             + (flags if tiny else []))
        return dict(seconds=result['seconds'], log=str(out / f'search-{space}' / 'log.txt'))

    def run_train(argv, name):
        result = train.main(data + device + argv + ['--save', str(out / name)])
        return {k: result[k] for k in ('params', 'test_acc') if k in result} | dict(log=str(out / name / 'log.txt'))

    proxyless_net = (['--genotype', str(out / 'search-proxyless' / 'genotype.json')] if tiny
                     else ['--arch', 'ProxylessNAS_G'])
    return [
        ('bench', run_bench),
        ('search', lambda: run_search('darts', TINY_SEARCH)),
        ('search-proxyless', lambda: run_search('proxyless', TINY_PROXYLESS)),
        ('train', lambda: run_train(['--arch', 'BayesNAS'] + (TINY_TRAIN if tiny else ['--epochs', '2']), 'train')),
        ('train-proxyless', lambda: run_train(['--space', 'proxyless', '--epochs', '1', '--batch_size',
                                               '16' if tiny else '64'] + proxyless_net, 'train-proxyless')),
    ]


def build_parser():
    p = utils.Parser('measure.py', description='The whole device measurement in one command.')
    p.add_argument('--data', required=True, help='folder holding cifar-10-batches-py (the shared subset will do)')
    p.add_argument('--gpu', type=int, default=0, help='CUDA device index (0)')
    p.add_argument('--quick', action='store_true', help='toy sizes on the CPU: checks that every step runs')
    p.add_argument('--compile', action='store_true', help='also the torch.compile variants of bench.py')
    p.add_argument('--only', nargs='+', default=None, help='run only these steps')
    p.add_argument('--out', default=None, help='output folder (default: runs/measure-TIME)')
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    if not ((Path(a.data) / 'cifar-10-batches-py').is_dir() or (Path(a.data) / 'data_batch_1').is_file()):
        raise utils.UserError(f'--data {a.data} holds no cifar-10-batches-py folder and is not one')
    out = Path(a.out or f'runs/measure-{time.strftime("%Y%m%d-%H%M%S")}')
    plan = steps(a, out)
    names = [name for name, _ in plan]
    unknown = sorted(set(a.only or ()) - set(names))
    if unknown:
        raise utils.UserError(f'--only: unknown step {unknown[0]!r}; steps: {", ".join(names)}')
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, run in plan:
        if a.only and name not in a.only:
            continue
        print(f'\n=== {name} ===', flush=True)
        t0 = time.perf_counter()
        try:
            summary[name] = dict(status='ok', **run())
        except Exception as e:      # one failing step must not cost the figures of the others
            if isinstance(e, utils.UserError):
                print(f'{name}: {e}', file=sys.stderr)
            else:
                traceback.print_exc()
            summary[name] = dict(status='failed', error=f'{type(e).__name__}: {e}'.splitlines()[0])
        summary[name]['wall_s'] = time.perf_counter() - t0
        print(f'=== {name}: {summary[name]["status"]} in {summary[name]["wall_s"]:.0f} s ===', flush=True)
        utils.write_text_atomic(out / 'summary.json', json.dumps(summary, indent=1) + '\n')
    failed = [name for name, s in summary.items() if s['status'] != 'ok']
    print(f'\n{len(summary) - len(failed)}/{len(summary)} steps ok; summary in {out / "summary.json"}', flush=True)
    if failed:
        raise utils.UserError(f'steps failed: {", ".join(failed)} (see {out / "summary.json"})')
    return summary


if __name__ == '__main__':
    utils.cli(main)
