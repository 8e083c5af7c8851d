"""Compare finished searches: cell sizes, which edges survive, agreement between runs, what gamma follows.

    python stability.py runs/s0 runs/s1 runs/s2        # e.g. the same search with three seeds

For each run: the operations of its derived cells (genotype.json), the switch groups it pruned and how
many of them had relevance 0 (their switches at exactly 0, or no curvature: the penalty, not the
update, took them), and Spearman rank correlations over the live op groups of gamma with the switch
norm and with the curvature, and over all op groups with a relevance of the relevance with the
switch norm and with the curvature. Then, per cell type and edge, in how many runs the edge keeps an
operation ("skip" when every run that keeps it keeps only skip_connect); the Jaccard index of the
kept (cell type, op, from, to) sets for every pair of runs; and each run's Jaccard index with a fixed
template that needs no search (every op on the four edges from the inputs into nodes 2 and 3,
skip_connect on every edge between intermediate nodes). NAS-Bench-201 runs (one cell, no template)
are compared the same way; runs of different spaces are not compared.
"""
import itertools
import json
from pathlib import Path

import genotypes
import spaces
import utils

CELL_TYPES = ('normal', 'reduce')


def read_genotype(run):
    """(space, genotype) of a finished search."""
    path = Path(run) / 'genotype.json'
    if not path.is_file():
        raise utils.UserError(f'{path} is missing: {run} is not a finished search')
    try:
        space, genotype = genotypes.load_file(path)
    except ValueError as e:
        raise utils.UserError(str(e)) from e
    space = spaces.get(space)
    if space.cell_types is None:
        raise utils.UserError(f'{run} is a {space.name} search, whose blocks each have their own cells; '
                              f'stability.py compares searches of spaces with one cell per type')
    return space, genotype


def kept_set(run):
    space, g = read_genotype(run)
    return {(t, op, s, d) for t in space.cell_types for op, s, d in space.cell(g, t)[0]}


def template():
    ops = {(t, op, s, d) for t in CELL_TYPES for d in (2, 3) for s in (0, 1) for op in genotypes.CANDIDATES}
    return ops | {(t, 'skip_connect', s, d) for t in CELL_TYPES for d in range(3, 6) for s in range(2, d)}


def jaccard(a, b):
    return len(a & b) / max(1, len(a | b))


def summary(run):
    path = Path(run) / 'gamma.json'
    try:
        rows = json.loads(path.read_text())['groups']
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise utils.UserError(f'{path} is missing or not a gamma table: {e}') from e
    kept = kept_set(run)
    try:
        return _summary(run, rows, kept)
    except (KeyError, TypeError, AttributeError) as e:     # rows that are not search.py's records
        raise utils.UserError(f'{path} is not a gamma table of search.py: {type(e).__name__} {e}') from e


def _summary(run, rows, kept):
    ops = [r for r in rows if r.get('op') is not None]
    live = [r for r in ops if not r['pruned']]
    relevant = [r for r in ops if r.get('relevance', 0) > 0]
    return dict(run=str(run), normal=sum(k[0] == 'normal' for k in kept), reduce=sum(k[0] == 'reduce' for k in kept),
                pruned=sum(r['pruned'] for r in rows),
                pruned_at_zero_relevance=sum(r['pruned'] and r.get('relevance', None) == 0 for r in rows),
                gamma_vs_norm=utils.spearman([r['gamma_raw'] for r in live], [r['norm'] for r in live]),
                gamma_vs_curvature=utils.spearman([r['gamma_raw'] for r in live], [r['curvature'] for r in live]),
                relevance_vs_norm=utils.spearman([r['relevance'] for r in relevant],
                                                 [r.get('norm_at_update', r['norm']) for r in relevant]),
                relevance_vs_curvature=utils.spearman([r['relevance'] for r in relevant], [r['curvature'] for r in relevant]))


def edge_survival(sets, space):
    """{cell type: {(src, dst): (runs keeping the edge, True when all of them keep only skip_connect)}}."""
    out = {}
    for t in space.cell_types:
        out[t] = {}
        for s, d in space.edges(t):
            kept = [{op for (tt, op, ss, dd) in k if (tt, ss, dd) == (t, s, d)} for k in sets]
            used = [k for k in kept if k]
            out[t][(s, d)] = (len(used), bool(used) and all(k == {'skip_connect'} for k in used))
    return out


def main(argv=None):
    p = utils.Parser('stability.py', description='Compare finished searches (see the module docstring).')
    p.add_argument('runs', nargs='+', help='search run directories')
    args = p.parse_args(argv)
    found = {space.name: space for space, _ in map(read_genotype, args.runs)}
    if len(found) > 1:
        raise utils.UserError(f'the runs are searches of different spaces ({", ".join(sorted(found))})')
    space = found.popitem()[1]
    rows = [summary(r) for r in args.runs]
    sets = [kept_set(r) for r in args.runs]
    for r in rows:
        print(f"{r['run']}: ops normal {r['normal']}, reduce {r['reduce']}; pruned groups {r['pruned']}, "
              f"{r['pruned_at_zero_relevance']} of them at relevance 0; Spearman gamma~norm "
              f"{r['gamma_vs_norm']:.2f}, gamma~curvature {r['gamma_vs_curvature']:.2f} (live ops), "
              f"relevance~norm {r['relevance_vs_norm']:.2f}, relevance~curvature {r['relevance_vs_curvature']:.2f}")
    survival = edge_survival(sets, space)
    for t in survival:
        print(f'{t} edges kept in n of {len(sets)} runs: ' + ' '.join(
            f'{s}->{d}:{n}{" skip" if skip else ""}' for (s, d), (n, skip) in survival[t].items()))
    pairs = {f'{a} {b}': jaccard(sets[i], sets[j]) for (i, a), (j, b) in itertools.combinations(enumerate(args.runs), 2)}
    for name, value in pairs.items():
        print(f'Jaccard {name}: {value:.2f}')
    to_template = [jaccard(k, template()) for k in sets] if space.name == 'darts' else []
    if to_template:
        print('Jaccard with the no-search template: ' + ', '.join(f'{v:.2f}' for v in to_template))
    return dict(runs=rows, survival=survival, jaccard=pairs, template=to_template)


if __name__ == '__main__':
    utils.cli(main)
