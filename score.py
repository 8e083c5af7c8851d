"""Score a searched cell without the test set: a short retraining on one part of the training set,
scored on the other part, next to random cells of the same size trained the same way.

    python score.py runs/search-x                         # the search's cell and 3 random cells
    python score.py runs/search-x --random 5 --seeds 0 1 2 --epochs 10 --jobs 8 --gpu 0

A search is only worth its cost if its cell beats cells drawn at random from the same space. For each
cell type the random cells keep as many operations as the searched one, drawn uniformly from the
(op, from, to) positions of the DARTS cell among the draws that are connected cells (derive.py's
dependency rule leaves all of their operations in place) and whose network has about the same number
of weights (--param_tolerance). Every cell is trained with the same seeds, budget and data.

The training set is split by a fixed seeded shuffle (--split_seed) into a training part and a held-out
part (--valid_portion); the test set is never read. The held-out images were seen by the search's
supernet, so the score ranks cells against each other; it does not estimate their test error.

The trainings are independent, so --jobs N runs N of them at once in worker processes: on a GPU they
share it and the comparison takes minutes; on a CPU each process takes one thread.

Writes SAVE/score.json (default SAVE: RUN_DIR/score): per cell its genotype, weights and held-out
accuracy per seed, and prints a table ordered by mean held-out accuracy.
"""
import concurrent.futures
import json
import multiprocessing
import random
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import genotypes
import utils
from model_search import NetworkCIFAR

NODES = range(2, 6)
SLOTS = [(op, src, dst) for dst in NODES for src in range(dst) for op in genotypes.CANDIDATES]


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------

def build_parser():
    p = utils.Parser('score.py', description='Score a searched cell against random cells of the same '
                     'size (see the module docstring).')
    p.add_argument('run_dir', nargs='?', help='search run directory (its genotype.json is scored)')
    p.add_argument('--genotype', help='genotype JSON file to score instead of RUN_DIR/genotype.json')
    p.add_argument('--data', default='data', help='folder holding cifar-10-batches-py (default: data)')
    p.add_argument('--random', type=int, default=3, help='random cells to compare with (3)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1], help='training seeds, the same for '
                   'every cell (0 1)')
    p.add_argument('--epochs', type=int, default=10, help='training epochs (10)')
    p.add_argument('--batch_size', type=int, default=96, help='batch size (96)')
    p.add_argument('--learning_rate', type=float, default=0.05, help='SGD learning rate, cosine to 0 (0.05)')
    p.add_argument('--weight_decay', type=float, default=3e-4, help='weight decay (3e-4)')
    p.add_argument('--init_channels', type=int, default=16, help='channels of the first cells (16)')
    p.add_argument('--layers', type=int, default=8, help='cells (8)')
    p.add_argument('--valid_portion', type=float, default=0.2, help='held-out share of the training '
                   'set (0.2)')
    p.add_argument('--split_seed', type=int, default=0, help='seed of the training/held-out split and of '
                   'the random cells (0)')
    p.add_argument('--param_tolerance', type=float, default=0.2, help='random networks have weights '
                   'within this relative distance of the searched one where such cells exist (0.2)')
    p.add_argument('--jobs', type=int, default=1, help='trainings run at once, in worker processes (1)')
    p.add_argument('--gpu', type=int, default=None, help='CUDA device (default: cuda:0 if present)')
    p.add_argument('--save', default=None, help='output directory (default: RUN_DIR/score)')
    return p


def configure(argv):
    args = build_parser().parse_args(argv)
    if (args.run_dir is None) == (args.genotype is None):
        raise utils.UserError('give a search run directory or --genotype FILE (one of them)')
    rules = [
        (args.random >= 1, f'--random must be at least 1, got {args.random}'),
        (args.epochs >= 1, f'--epochs must be at least 1, got {args.epochs}'),
        (args.batch_size >= 2, f'--batch_size must be at least 2 (BatchNorm), got {args.batch_size}'),
        (args.learning_rate > 0, f'--learning_rate must be positive, got {args.learning_rate}'),
        (args.weight_decay >= 0, f'--weight_decay must be >= 0, got {args.weight_decay}'),
        (args.init_channels >= 2 and args.init_channels % 2 == 0,
         f'--init_channels must be even and positive, got {args.init_channels}'),
        (args.layers >= 3, f'--layers must be at least 3, got {args.layers}'),
        (0 < args.valid_portion < 1, f'--valid_portion must be in (0, 1), got {args.valid_portion}'),
        (args.param_tolerance >= 0, f'--param_tolerance must be >= 0, got {args.param_tolerance}'),
        (args.jobs >= 1, f'--jobs must be at least 1, got {args.jobs}'),
        (len(set(args.seeds)) == len(args.seeds), f'--seeds repeats a seed: {args.seeds}'),
    ]
    utils.check(rules)
    path = Path(args.genotype) if args.genotype else Path(args.run_dir) / 'genotype.json'
    if not path.is_file():
        raise utils.UserError(f'{path} is missing: score a finished search (or pass --genotype FILE)')
    try:
        genotype = genotypes.load_json(path)
    except (ValueError, KeyError, TypeError) as e:
        raise utils.UserError(f'{path} is not a genotype: {e}') from e
    args.save = args.save or str((Path(args.run_dir) if args.run_dir else path.parent) / 'score')
    return args, genotype


# ----------------------------------------------------------------------------------------------------
# Random cells of the same size
# ----------------------------------------------------------------------------------------------------

def connected(edges):
    """True when every edge leaves an input or a node that some edge enters (nothing is dropped by
    the dependency rule) and some intermediate node is fed."""
    fed = {dst for _, _, dst in edges}
    return bool(fed) and all(src < 2 or src in fed for _, src, _ in edges)


def random_cell(n, rng):
    """n distinct (op, from, to) positions drawn uniformly among connected cells."""
    while True:
        edges = rng.sample(SLOTS, n)
        if connected(edges):
            return genotypes.cell_edges(edges), sorted({dst for _, _, dst in edges})


def count_weights(genotype, args):
    return utils.count_params(NetworkCIFAR(args.init_channels, 10, args.layers, False, genotype))


def random_genotypes(searched, args, draws=200):
    """args.random genotypes with the searched cell's operation counts, drawn with a fixed seed; each
    is the first of up to `draws` draws whose weights are within the tolerance, else the closest."""
    rng = random.Random(args.split_seed)
    target = count_weights(searched, args)
    n = {t: len(genotypes.cell_edges(getattr(searched, t))) for t in ('normal', 'reduce')}
    found = []
    for _ in range(args.random):
        best = None
        for _ in range(draws):
            (normal, normal_concat), (reduce, reduce_concat) = (random_cell(n[t], rng) for t in ('normal', 'reduce'))
            g = genotypes.Genotype(normal, normal_concat, reduce, reduce_concat)
            gap = abs(count_weights(g, args) / target - 1)
            if best is None or gap < best[0]:
                best = (gap, g)
            if gap <= args.param_tolerance:
                break
        found.append(best[1])
    return found


# ----------------------------------------------------------------------------------------------------
# One short training (runs in a worker process when --jobs > 1)
# ----------------------------------------------------------------------------------------------------

def train_one(job):
    """Held-out accuracy (%) of one genotype after a short training with one seed."""
    args, genotype, seed = job['args'], job['genotype'], job['seed']
    torch.set_num_threads(job['threads'])
    device = utils.get_device(args['gpu'])
    data = utils.load_cifar10(args['data'], device=device)
    del data['test_x'], data['test_y']                  # never read: decisions need no test set
    n = len(data['train_x'])
    train_idx, valid_idx = (i.to(device) for i in utils.shuffled_split(
        n, n - int(round(args['valid_portion'] * n)), args['split_seed']))
    x, y = data['train_x'], data['train_y']
    train = utils.Batches(x[train_idx], y[train_idx], args['batch_size'], drop_last=True, seed=seed,
                          augment=dict(crop_pad=4, flip=True))
    valid = utils.Batches(x[valid_idx], y[valid_idx], 256, shuffle=False)
    utils.set_seed(seed)
    net = NetworkCIFAR(args['init_channels'], 10, args['layers'], False, genotype).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=args['learning_rate'], momentum=0.9,
                                weight_decay=args['weight_decay'])
    steps = args['epochs'] * len(train)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    tic = time.time()
    net.train()
    for epoch in range(args['epochs']):
        train.set_epoch(epoch)
        for xb, yb in train:
            loss = F.cross_entropy(net(xb)[0], yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            schedule.step()
        utils.check_finite(loss.detach(), f'training loss of seed {seed}')
    net.eval()
    hits = torch.zeros((), device=device)
    with torch.no_grad():
        for xb, yb in valid:
            hits += (net(xb)[0].argmax(1) == yb).sum()
    return dict(valid_acc=100 * hits.item() / len(valid_idx), seconds=time.time() - tic)


def run_jobs(jobs, workers):
    """train_one of every job, in the jobs' order; a line as each training ends."""
    def done(i, result):
        print(f'training {i + 1}/{len(jobs)} ({jobs[i]["name"]}, seed {jobs[i]["seed"]}): held-out '
              f'accuracy {result["valid_acc"]:.2f} % in {utils.format_time(result["seconds"])}', flush=True)
        return result

    if workers == 1:
        return [done(i, train_one(job)) for i, job in enumerate(jobs)]
    # spawn: a fresh interpreter per worker (CUDA cannot be used in a forked child).
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn')) as pool:
        futures = {pool.submit(train_one, job): i for i, job in enumerate(jobs)}
        results = {}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            results[i] = done(i, future.result())
    return [results[i] for i in range(len(jobs))]


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------

def main(argv=None):
    args, searched = configure(argv)
    save = Path(args.save)
    if save.exists() and not save.is_dir():
        raise utils.UserError(f'--save {save} is a file, not a directory')
    utils.load_cifar10(args.data)                       # missing data: one line, before any work
    cells = [('searched', searched)] + [(f'random {i + 1}', g) for i, g in enumerate(random_genotypes(searched, args))]
    config = {k: v for k, v in vars(args).items() if k not in ('run_dir', 'genotype', 'save', 'jobs')}
    threads = 1 if args.jobs > 1 else torch.get_num_threads()
    jobs = [dict(args=config, genotype=g, seed=s, threads=threads, name=name) for name, g in cells for s in args.seeds]
    tic = time.time()
    results = iter(run_jobs(jobs, args.jobs))
    rows = []
    for name, g in cells:
        runs = [next(results) for _ in args.seeds]
        accs = [r['valid_acc'] for r in runs]
        rows.append(dict(name=name, genotype=genotypes.canonical(g)._asdict(), weights=count_weights(g, args),
                         ops={t: len(genotypes.cell_edges(getattr(g, t))) for t in ('normal', 'reduce')},
                         valid_acc=accs, mean=sum(accs) / len(accs),
                         std=(sum((a - sum(accs) / len(accs)) ** 2 for a in accs) / len(accs)) ** 0.5))
    doc = dict(config=config, seconds=time.time() - tic, cells=rows)
    utils.write_text_atomic(save / 'score.json', json.dumps(doc, indent=1, default=list) + '\n')
    print(f'{"cell":10s} {"ops n/r":>8s} {"weights":>9s}  held-out accuracy (%) per seed  mean')
    for r in sorted(rows, key=lambda r: -r['mean']):
        per_seed = ' '.join(f'{a:5.2f}' for a in r['valid_acc'])
        print(f'{r["name"]:10s} {r["ops"]["normal"]:>3d}/{r["ops"]["reduce"]:<4d} {r["weights"]:9d}  '
              f'{per_seed:30s}  {r["mean"]:.2f}')
    rank = 1 + sum(r['mean'] > rows[0]['mean'] for r in rows[1:])
    print(f'searched cell ranks {rank} of {len(rows)}; {len(jobs)} trainings in '
          f'{utils.format_time(doc["seconds"])}; written to {save / "score.json"}')
    return doc


if __name__ == '__main__':
    utils.cli(main)
