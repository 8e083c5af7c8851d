"""Derive a cell genotype from a BayesNAS search's switch variances (gamma.json).

    python derive.py RUN_DIR                   # the search's own rule: rewrites RUN_DIR's genotype
    python derive.py RUN_DIR --threshold 0.05  # another threshold -> RUN_DIR/derived-threshold-0.05/
    python derive.py RUN_DIR --topk 2          # DARTS-comparable cell -> RUN_DIR/derived-topk-2/
    python derive.py RUN_DIR --topk 2 --out DIR

Two rules, both applied to the effective (coupled) gamma of every switch group:

    threshold   keep every operation whose gamma, and whose edge's gamma, is at least T: any number
                of operations per edge and any number of incoming edges per node (the paper's rule).
    topk K      per intermediate node keep the K strongest incoming edges (an edge's strength is the
                gamma of its strongest operation) with that strongest operation only; pruned
                operations are never chosen. With K = 2 and two edges for every node the cell is
                written as DARTS (op, input) pairs, otherwise as (op, from, to) triples.

In the NAS-Bench-201 space (gamma.json's "space": "nb201") a cell has one op per edge: the threshold
rule keeps the strongest surviving op of each edge, an edge with none is 'none', and the derived cell
is printed as the benchmark's architecture string; --topk does not apply there, and --benchmark FILE
prints the cell's accuracies from a table of the benchmark the user has. The proxyless space derives
each block's two half trees the same way (its cells are named by the network: b5h1 is half 1 of
block 5, s2h0 half 0 of stage 2 when tied) and writes the whole network as a PyramidTreeNet config;
a half may end up empty.

Both rules respect the cell's dependency structure: nodes are visited in order, an edge is only
kept when its source node is alive (an input, or an intermediate node with a kept incoming edge),
and dead nodes leave the concatenation. Every live node is in the concatenation (NAS-Bench-201: ops into
a node that does not reach the output node are dropped), so every kept operation lies on a path from
an input to the cell's output. A cell with no live node is an error.

A threshold above the search's keeps a subset of what the search kept. One below it can only
revive groups pruned in the search's last iteration: they count with the gamma they were pruned at
(gamma.json's gamma_at_prune and pruned_at), under the same dependency rules; groups pruned earlier
stay pruned, because their switches were not trained after that. Tables without those fields (older
searches) are refused below the search's threshold rather than read as if nothing had been pruned.

Writes genotype.json, genotype.py (a line that pastes into genotypes.py) and cell_normal.png,
cell_reduce.png (NAS-Bench-201: genotype.json and cell.png; proxyless: genotype.json and the
cell_s*h*.png of the first block of each stage), each atomically, and prints the literal (proxyless:
the network's size) and where the files went. The search's own
rule (no flag, or --threshold equal to the search's) writes into RUN_DIR, as search.py did; any other
rule writes into a folder of its own, RUN_DIR/derived-threshold-T or RUN_DIR/derived-topk-K, so that
the search's genotype is never overwritten; --out DIR overrides either.
"""
import json
import math
from collections import defaultdict
from pathlib import Path

import benchmark
import genotypes
import spaces
import utils
import visualize



# ----------------------------------------------------------------------------------------------------
# Reading a gamma table
# ----------------------------------------------------------------------------------------------------

def load_gamma(run_dir):
    """The gamma.json document a search wrote into run_dir; UserError when missing or malformed."""
    path = Path(run_dir) / 'gamma.json'
    if not Path(run_dir).is_dir():
        raise utils.UserError(f'{run_dir} is not a directory')
    if not path.is_file():
        raise utils.UserError(f'{run_dir} holds no search output: {path.name} is missing (search.py '
                              f'writes it after its first switch update)')
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise utils.UserError(f'{path} is unreadable or not JSON: {e}') from e
    if not isinstance(doc, dict) or not isinstance(doc.get('groups'), list):
        raise utils.UserError(f'{path} is not a search gamma table: no "groups" list')
    space_of(doc)
    return doc


def space_of(doc):
    """The Space a gamma.json was searched in (tables written before spaces existed: darts)."""
    try:
        return spaces.get(doc.get('space', 'darts'))
    except ValueError as e:
        raise utils.UserError(f'gamma.json: {e}') from e


def row_key(index, row):
    """The key of the index-th table row; ValueError when the row is no object with a string key."""
    if not isinstance(row, dict) or not isinstance(row.get('key'), str):
        raise ValueError(f'gamma table row {index} is not an object with a "key" string')
    return row['key']


def row_number(row, field, signed=False):
    """row[field] as a float; ValueError naming the row's key and the bad value (not the whole row,
    which holds long member lists). Gammas are variances: NaN, infinite and (unless signed, as a
    measured loss difference may be) negative are refused."""
    key = row['key']
    if field not in row:
        raise ValueError(f'gamma table row {key!r}: "{field}" is missing')
    value = row[field]
    # bool is an int to Python, but true/false in a gamma column is a broken table, not 1 and 0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'gamma table row {key!r}: {field} {value!r} is not a number')
    if not math.isfinite(value) or value < 0 and not signed:
        raise ValueError(f'gamma table row {key!r}: {field} is {value}, not a finite number'
                         f'{"" if signed else " >= 0"}')
    return float(value)


def _row_flag(row, field):
    """row[field], which must be true or false; ValueError naming the row's key otherwise."""
    key = row['key']
    if field not in row:
        raise ValueError(f'gamma table row {key!r}: "{field}" is missing')
    if not isinstance(row[field], bool):
        raise ValueError(f'gamma table row {key!r}: {field} {row[field]!r} is not true or false')
    return row[field]


def _position(row, space):
    """(cell_type, src, dst, op) of a table row; op is None for an edge switch.

    Rows written by search.py carry these fields; bare HardPrior.table() rows of a tied supernet are
    read from their keys ('normal/0->2' for an edge, 'normal/0->2/sep_conv_3x3' for an operation)."""
    key = row['key']
    parts = key.split('/')
    cell_type = row.get('cell_type', parts[0])
    try:
        src, dst = (int(v) for v in parts[1].split('->'))
    except (IndexError, ValueError):
        raise ValueError(f'gamma table row {key!r}: no "from->to" edge in its key') from None
    op = row['op'] if 'op' in row else (parts[2] if len(parts) > 2 else None)
    if space.cell_types is not None and cell_type not in space.cell_types:
        raise ValueError(f'gamma table row {key!r}: unknown cell type {cell_type!r}')
    if op is not None and op not in space.candidates:
        raise ValueError(f'gamma table row {key!r}: unknown operation {op!r}')
    return cell_type, src, dst, op


def cell_types(rows, space):
    """The space's cell types, or where the network names its cells (proxyless), those of the rows in
    their order."""
    if space.cell_types is not None:
        return space.cell_types
    return tuple(dict.fromkeys(row.get('cell_type', str(row.get('key')).split('/')[0]) for row in rows))


def cell_tables(rows, space):
    """{cell_type: {(src, dst): {'gamma': g, 'pruned': p, 'ops': {op: {'gamma': g, 'pruned': p}}}}}, each
    entry with the row's 'relevance' and 'removal' too where the table records them.

    Untied searches have one row per cell for the same position: their numbers are averaged, and a
    position counts as pruned only when it is pruned in every cell."""
    collected = defaultdict(list)
    for index, row in enumerate(rows):
        row_key(index, row)
        scores = {k: row_number(row, k, signed=k == 'removal') for k in MEASURED if k in row}
        collected[_position(row, space)].append((row_number(row, 'gamma'), _row_flag(row, 'pruned'), scores))
    tables = {t: {} for t in cell_types(rows, space)}
    for (cell_type, src, dst, op), values in collected.items():
        entry = dict(gamma=sum(g for g, _, _ in values) / len(values), pruned=all(p for _, p, _ in values))
        for k in MEASURED:                  # tables of search.py; bare prior tables have none
            if all(k in s for _, _, s in values):
                entry[k] = sum(s[k] for _, _, s in values) / len(values)
        edge = tables[cell_type].setdefault((src, dst), dict(gamma=math.inf, pruned=False, ops={}))
        if op is None:
            edge.update(entry)
        else:
            edge['ops'][op] = entry
    for cell_type, edges in tables.items():
        if not edges:
            raise ValueError(f'gamma table has no rows for the {cell_type} cell')
    return tables


# ----------------------------------------------------------------------------------------------------
# Derivation rules
# ----------------------------------------------------------------------------------------------------

SELECT = ('gamma', 'relevance', 'removal')
MEASURED = ('relevance', 'removal')     # what a search measures of each group beside gamma


def _strength(v, select):
    """How an op (or edge) ranks: by gamma (the paper), by relevance or by removal, gamma breaking
    the ties of the other two and relevance those of gamma. Relevance, the loss (to second order)
    that removing the op would cost, and removal, that loss as measured, are the op's own evidence:
    gamma is capped at its edge's gamma by the HARD coupling, so the ops of a shrunken edge can share
    one gamma, and their order would otherwise be that of the op list."""
    if select == 'gamma':
        return v['gamma'], v.get('relevance', 0.0)
    return v.get(select, 0.0), v['gamma']


def _alive_ops(edge, space, select='gamma'):
    """The edge's unpruned operations with gamma > 0 as (op, gamma), strongest first by `select`."""
    if edge['pruned']:
        return []
    ops = [(op, v) for op, v in edge['ops'].items() if not v['pruned'] and v['gamma'] > 0]
    ops.sort(key=lambda o: _strength(o[1], select), reverse=True)
    return [(op, v['gamma']) for op, v in ops]


def _threshold_choice(candidates, threshold, space, select):
    """Every (src, op) whose gamma and edge gamma clear the threshold; in a space of one op per edge,
    the strongest of them."""
    chosen = []
    for src, edge in candidates:
        ops = ([op for op, gamma in _alive_ops(edge, space, select) if gamma >= threshold]
               if edge['gamma'] >= threshold else [])
        chosen += [(src, op) for op in ops[:1 if space.one_op_per_edge else None]]
    return chosen


def _topk_choice(candidates, k, space, select):
    """The strongest operation of each of the k strongest edges (an edge as strong as its best op)."""
    strongest = [(_strength(edge['ops'][ops[0][0]], select), src, ops[0][0])
                 for src, edge in candidates for ops in [_alive_ops(edge, space, select)] if ops]
    strongest.sort(key=lambda s: (tuple(-v for v in s[0]), s[1]))
    return [(src, op) for _, src, op in strongest[:k]]


def derive_cell(edges, cell_type, threshold=None, topk=None, *, space, select='gamma'):
    """Kept (op, src, dst) edges and the concat of one cell, visiting nodes in order so that only
    edges out of live nodes are considered, then keeping only what reaches the cell's output nodes;
    ops compete by `select` (_strength). UserError when no output node survives."""
    nodes = sorted({dst for _, dst in edges})
    live, kept = set(space.inputs), []
    for dst in nodes:
        candidates = [(src, edges[(src, d)]) for src, d in sorted(edges) if d == dst and src in live]
        chosen = (_threshold_choice(candidates, threshold, space, select) if topk is None
                  else _topk_choice(candidates, topk, space, select))
        if chosen:
            live.add(dst)
            kept += [(op, src, dst) for src, op in chosen]
    concat = sorted(n for n in live - set(space.inputs) if space.outputs is None or n in space.outputs)
    useful = set(concat)
    for _, src, dst in sorted(kept, key=lambda e: -e[2]):
        if dst in useful:
            useful.add(src)
    kept = [e for e in kept if e[2] in useful]
    if not concat and not space.may_be_empty:
        rule = f'threshold {threshold:g}' if topk is None else f'topk {topk}'
        raise utils.UserError(f'the {cell_type} cell is empty under {rule}: no operation into any '
                              f'{"output" if space.outputs else "intermediate"} node survives (lower '
                              f'the threshold, or search with a smaller lambda)')
    return kept, concat


def _short_nodes(kept, nodes, want=2):
    """{node: number of kept inputs} for the nodes that keep fewer than `want`."""
    degree = {dst: sum(1 for _, _, d in kept if d == dst) for dst in nodes}
    return {dst: n for dst, n in degree.items() if n < want}


def _as_pairs(kept, nodes):
    """DARTS (op, input) pairs, two per node in node order, or None when some node has not two."""
    # No node below two and 2 * len(nodes) entries in all: exactly two for every node.
    if _short_nodes(kept, nodes) or len(kept) != 2 * len(nodes):
        return None
    return [(op, src) for dst in nodes for op, src, d in kept if d == dst]


def _triples_note(cell_type, short):
    nodes = ', '.join(f'node {n} has {"no" if k == 0 else k} input{"" if k == 1 else "s"}'
                      for n, k in short.items())
    return (f'--topk 2 wrote the {cell_type} cell as (op, from, to) triples, not DARTS (op, input) '
            f'pairs: {nodes}')


def _check_rule(threshold, topk):
    if (threshold is None) == (topk is None):
        raise ValueError('give exactly one of threshold and topk')
    if threshold is not None and not threshold >= 0:
        raise utils.UserError(f'threshold must be >= 0, got {threshold}')
    if topk is not None and topk < 1:
        raise utils.UserError(f'--topk must be at least 1, got {topk}')


def derive_from_table(rows, threshold=None, topk=None, notes=None, *, space, net=None, select='gamma'):
    """Genotype from gamma-table rows (gamma.json's "groups" or HardPrior.table()): exactly one of
    threshold (the BayesNAS rule) and topk (the DARTS-comparable rule). A list passed as notes
    receives one line per cell that --topk 2 could not write as DARTS pairs. net: the supernet's
    size (gamma.json's "net"), which the proxyless space needs to write its network. select: what ops
    compete by (_strength)."""
    _check_rule(threshold, topk)
    if topk is not None and space.one_op_per_edge:
        raise utils.UserError(f'--topk does not apply to the {space.name} space, whose nodes read every '
                              f'earlier node; its cells keep the strongest surviving op of each edge')
    tables = cell_tables(rows, space)
    cells = {}
    for cell_type in tables:
        kept, concat = derive_cell(tables[cell_type], cell_type, threshold, topk, space=space, select=select)
        nodes = sorted({dst for _, dst in tables[cell_type]})
        pairs = _as_pairs(kept, nodes) if topk == 2 else None
        if topk == 2 and pairs is None and notes is not None:
            notes.append(_triples_note(cell_type, _short_nodes(kept, nodes)))
        # Triples in the order of genotypes.cell_edges (node, source, op name); pairs in node order,
        # strongest input first, as DARTS writes them.
        cells[cell_type] = (pairs, nodes) if pairs else (genotypes.cell_edges(kept) if kept else [], concat)
    if space.cell_types is None and net is None:
        raise ValueError(f'a {space.name} gamma table needs the supernet\'s size (gamma.json\'s "net")')
    return space.genotype(cells, net)


def _doc_field(doc, field, check, what):
    """doc[field] (None when absent); UserError when it is present but not `what`."""
    value = doc.get(field)
    if value is not None and (isinstance(value, bool) or not check(value)):
        raise utils.UserError(f'gamma.json: {field} {value!r} is not {what}')
    return value


def _search_threshold(doc):
    return _doc_field(doc, 'threshold', lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0,
                      'a number >= 0')


def _last_iteration(doc):
    return _doc_field(doc, 'iteration', lambda v: isinstance(v, int) and v >= 1, 'an iteration number')


def _revived(index, row, last, own):
    """The row as a threshold below the search's own sees it: a group pruned in the last iteration
    counts with the gamma it was pruned at; one pruned earlier stays pruned, since its switches were
    not trained after that."""
    key = row_key(index, row)
    if not _row_flag(row, 'pruned'):
        return row
    if last is None or 'gamma_at_prune' not in row or 'pruned_at' not in row:
        raise utils.UserError(
            f'a threshold below the search\'s own {own:g} cannot be derived from this gamma.json: it '
            f'does not record the gammas of pruned groups (no gamma_at_prune and pruned_at, as written '
            f'by older search.py versions); use --threshold >= {own:g} or --topk')
    at, gamma = row['pruned_at'], row_number(row, 'gamma_at_prune')
    if isinstance(at, bool) or not isinstance(at, int) or at < 1:
        raise ValueError(f'gamma table row {key!r}: pruned_at {at!r} is not an iteration number')
    return row if at != last else dict(row, gamma=gamma, pruned=False)


def rows_at(doc, threshold):
    """gamma.json's rows as a derivation at `threshold` sees them.

    At or above the search's threshold the table is used as the search left it: every group it pruned
    fell below that threshold or depended on one that did, so none could be kept at a higher one. Below
    it, groups pruned in the last iteration come back with their gamma at pruning (derive_cell's
    dependency rules still apply to them); this needs the table's gamma_at_prune and pruned_at."""
    own = _search_threshold(doc)
    last = _last_iteration(doc)
    if own is None or threshold >= own:
        return doc['groups']
    return [_revived(index, row, last, own) for index, row in enumerate(doc['groups'])]


def search_select(doc):
    """The rule a search's ops competed by (tables written before --select: gamma)."""
    return _doc_field(doc, 'select', lambda v: v in SELECT, f'one of {", ".join(SELECT)}') or 'gamma'


def _check_select(doc, select):
    """UserError when the table does not record what the ops are to compete by."""
    if select in MEASURED and not any(select in row for row in doc.get('groups', [])):
        raise utils.UserError(f'gamma.json records no {select} of its groups: --select {select} needs a '
                              f'search that measured it' + (' (search.py --select removal)'
                                                            if select == 'removal' else ''))


def derive(doc, threshold=None, topk=None, notes=None, select=None):
    """Genotype from a gamma.json document; threshold defaults to the search's own, and one below it
    revives the groups pruned in the last iteration (rows_at); select defaults to the search's own.
    notes: as for derive_from_table."""
    if topk is None and threshold is None:
        threshold = _search_threshold(doc)
        if threshold is None:
            raise utils.UserError('gamma.json records no threshold: pass --threshold or --topk')
    _check_rule(threshold, topk)
    select = select or search_select(doc)
    _check_select(doc, select)
    try:
        rows = doc['groups'] if topk is not None else rows_at(doc, threshold)
        return derive_from_table(rows, threshold=threshold, topk=topk, notes=notes, space=space_of(doc),
                                 net=doc.get('net'), select=select)
    except ValueError as e:
        raise utils.UserError(str(e)) from e


# ----------------------------------------------------------------------------------------------------
# The gamma heat map
# ----------------------------------------------------------------------------------------------------

def plot_gamma(rows, path, threshold=None, *, space):
    """Heat map of log10(gamma) per edge (rows) and switch (columns: the edge switch, then each
    operation), one panel per cell type; pruned switches are grey with an x."""
    import numpy as np
    tables = cell_tables(rows, space)
    if len(tables) > 4:
        return _plot_gamma_cells(tables, path, threshold, space)
    columns = ['edge'] + space.candidates
    fig = visualize.new_figure(6.5 * len(tables), 6.5)
    for k, cell_type in enumerate(tables):
        edges = sorted(tables[cell_type], key=lambda e: (e[1], e[0]))
        grid = np.full((len(edges), len(columns)), np.nan)
        for i, e in enumerate(edges):
            edge = tables[cell_type][e]
            for j, entry in enumerate([edge] + [edge['ops'].get(op) for op in space.candidates]):
                if entry is not None and not entry['pruned'] and entry['gamma'] > 0:
                    grid[i, j] = math.log10(entry['gamma'])
        ax = fig.add_subplot(1, len(tables), k + 1)
        ax.set_facecolor('0.85')
        image = ax.imshow(grid, cmap='viridis', aspect='auto')
        for i, j in zip(*np.nonzero(np.isnan(grid))):
            ax.text(j, i, 'x', ha='center', va='center', fontsize=8, color='0.4')
        ax.set_xticks(range(len(columns)), columns, rotation=45, ha='right', fontsize=8)
        ax.set_yticks(range(len(edges)), [f'{s}->{d}' for s, d in edges], fontsize=8)
        ax.set_title(f'{cell_type}: log10 gamma' + (f' (threshold {threshold:g})' if threshold else ''))
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    visualize.save_figure(fig, path, dpi=100)


def _plot_gamma_cells(tables, path, threshold, space):
    """Heat map of a network of many cells (proxyless): one row per cell, one column per switch (each
    edge's switch, then its operations)."""
    import numpy as np
    edges = sorted({e for table in tables.values() for e in table}, key=lambda e: (e[1], e[0]))
    columns = [(e, op) for e in edges for op in [None] + space.candidates]
    grid = np.full((len(tables), len(columns)), np.nan)
    for i, table in enumerate(tables.values()):
        for j, (e, op) in enumerate(columns):
            entry = table.get(e)
            entry = entry if entry is None or op is None else entry['ops'].get(op)
            if entry is not None and not entry['pruned'] and entry['gamma'] > 0:
                grid[i, j] = math.log10(entry['gamma'])
    fig = visualize.new_figure(max(8, 0.12 * len(columns)), max(4, 0.16 * len(tables) + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor('0.85')        # pruned: grey
    image = ax.imshow(grid, cmap='viridis', aspect='auto', interpolation='nearest')
    ax.set_xticks([j for j, (_, op) in enumerate(columns) if op is None],
                  [f'{s}->{d}' for s, d in edges], fontsize=8)
    ax.set_yticks(range(len(tables)), list(tables), fontsize=6)
    ax.set_title('log10 gamma: per cell, each edge switch then its ops' +
                 (f' (threshold {threshold:g}); grey: pruned' if threshold else '; grey: pruned'))
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    visualize.save_figure(fig, path, dpi=100)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------

def build_parser():
    # No abbreviations: '--top 2' must not silently mean '--topk 2'.
    parser = utils.Parser('derive.py', description='Derive a genotype from a BayesNAS search run.')
    parser.add_argument('run_dir', help='directory of a search run (holds gamma.json)')
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument('--threshold', type=float, default=None,
                      help="keep ops whose effective gamma >= T (default: the search's threshold)")
    rule.add_argument('--topk', type=int, default=None,
                      help='keep the K strongest incoming edges per node, strongest op per edge')
    parser.add_argument('--select', choices=SELECT, default=None, help="what an edge's ops compete by: "
                        "gamma, relevance or removal (the measured loss of removing the op; a search with "
                        "--select removal records it), as derive._strength says (default: the search's own)")
    parser.add_argument('--out', default=None, help='output directory (default: RUN_DIR)')
    parser.add_argument('--benchmark', metavar='FILE', default=None,
                        help='NAS-Bench-201 searches: print the accuracies of the derived cell in FILE, a CSV '
                             'with a column of architecture strings and accuracy columns, or the NATS-Bench '
                             'API file (needs the nats_bench package)')
    return parser


def default_out(run_dir, doc, threshold, topk, select=None):
    """Where a derivation goes without --out: the search's own rule rewrites the run's own files, any
    other rule gets a folder of its own, so that it never overwrites the search's genotype."""
    other = f'-{select}' if select is not None and select != search_select(doc) else ''
    if topk is not None:
        return Path(run_dir) / f'derived-topk-{topk:g}{other}'
    if threshold is not None and threshold != doc.get('threshold'):
        return Path(run_dir) / f'derived-threshold-{threshold:g}{other}'
    return Path(run_dir) / f'derived-{select}' if other else Path(run_dir)


def main(argv=None):
    args = build_parser().parse_args(argv)
    doc = load_gamma(args.run_dir)
    space = space_of(doc)
    benchmark.check(args.benchmark, space)
    notes = []
    genotype = derive(doc, threshold=args.threshold, topk=args.topk, notes=notes, select=args.select)
    rule_text = (f'topk {args.topk}' if args.topk is not None
                 else f'threshold {args.threshold if args.threshold is not None else doc["threshold"]:g}')
    rule_text += f', ops by {args.select or search_select(doc)}'
    out_dir = visualize.output_dir(args.out or default_out(args.run_dir, doc, args.threshold, args.topk, args.select))
    literal = visualize.write_genotype(genotype, out_dir, f'derived from {args.run_dir} by {rule_text}')
    visualize.plot_genotype(genotype, out_dir)
    # The literal first, then comment lines: the whole of stdout still pastes into genotypes.py.
    print(literal)
    for note in notes:
        print(f'# note: {note}')
    if args.benchmark is not None:
        print(benchmark.lookup(args.benchmark, genotype))
    print(f'# wrote {", ".join(visualize.outputs(space))} to {out_dir}')
    return genotype


if __name__ == '__main__':
    utils.cli(main)
