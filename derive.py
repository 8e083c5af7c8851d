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

import genotypes
import spaces
import utils



def outputs(space):
    """The files a derivation writes in the space."""
    literal = ('genotype.py',) if space.name == 'darts' else ()
    return ('genotype.json',) + literal + tuple(file for file, _, _ in space.pictures)


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
# Outputs: genotype files and pictures
# ----------------------------------------------------------------------------------------------------

def _written(path, write):
    """write(path); an OSError (disk full, no permission, a folder in the way) becomes one line."""
    try:
        write(path)
    except OSError as e:
        raise utils.UserError(f'cannot write {path}: {e.strerror or e}') from e


def output_dir(out_dir):
    """out_dir as a Path, created if needed; UserError when it is a file or cannot be created."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise utils.UserError(f'output directory {out_dir} exists and is not a directory')
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise utils.UserError(f'cannot create output directory {out_dir}: {e.strerror or e}') from e
    return out_dir


def write_genotype(genotype, out_dir, note):
    """genotype.json and, for a DARTS genotype, genotype.py (a comment line, then the literal), each
    written atomically; returns the line that names the genotype (spaces.describe)."""
    out_dir = output_dir(out_dir)
    space = spaces.space_of(genotype)
    line, text = space.describe(genotype), space.text(genotype)
    _written(out_dir / 'genotype.json', lambda p: utils.write_text_atomic(p, text))
    if space.name == 'darts':
        _written(out_dir / 'genotype.py', lambda p: utils.write_text_atomic(p, f'# {note}\n{line}\n'))
    return line


def save_figure(fig, path, dpi):
    """The figure as a PNG, atomically, so a reader never finds a torn picture."""
    _written(Path(path), lambda p: utils.save_figure_atomic(fig, p, dpi=dpi))


def _figure(width, height):
    # A bare Figure renders through the Agg canvas on savefig: no pyplot state, no display needed.
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height))


# A cell picture is an arc diagram: every node on one line in genotype order (0 c_{k-2}, 1 c_{k-1},
# 2, 3, ..., then c_{k}), so an edge's arc spans exactly the nodes between its ends and never runs
# through a node. Edges into intermediate nodes arc above the line, one arrow per edge labelled with
# all of its operations; the dashed arcs into the output run below it, unlabelled.
ARC_RAD, OUT_RAD = -0.6, 0.35       # matplotlib arc3 bends: negative bends a rightward arc upwards
LABEL_FONT, NODE_FONT, TITLE_FONT = 8, 10, 11
LABEL_PAD, NODE_PAD = 0.25, 0.35    # box padding, in units of the font size (matplotlib's convention)
DPI = 110
SPOTS = (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78)  # where along its arc a label may sit, best first
TITLE_INCHES = 0.45
START_SCALE = 1.2                   # inches between neighbouring nodes in the smallest picture
GROWTH, TRIES = 1.15, 16            # the figure grows until every label finds a clear spot


def short_name(op):
    """'sep_conv_3x3' -> 'sep 3x3', 'max_pool_3x3' -> 'max 3x3', 'skip_connect' -> 'skip': short
    enough to stack seven of them in one label."""
    if op == 'skip_connect':
        return 'skip'
    words = op.split('_')
    return ' '.join(words[:1] + [w for w in words[1:] if w not in ('conv', 'pool')])


def _edge_labels(edges):
    """{(src, dst): label}: the edge's operations, one short name per line, repeats counted."""
    by_edge = defaultdict(list)
    for op, src, dst in edges:
        by_edge[(src, dst)].append(op)
    order = {op: i for i, op in enumerate(genotypes.OPERATIONS)}
    labels = {}
    for edge, ops in by_edge.items():
        counts = {op: ops.count(op) for op in sorted(set(ops), key=lambda o: (order.get(o, len(order)), o))}
        labels[edge] = '\n'.join(short_name(op) + (f' x{n}' if n > 1 else '') for op, n in counts.items())
    return labels


def _arc_point(a, b, rad, t):
    """The point at parameter t of matplotlib's arc3 curve from a to b: a quadratic Bezier whose
    control point lies rad * |ab| to the right of the chord's midpoint. Valid in data coordinates
    because the cell figure scales x and y alike."""
    (x0, y0), (x1, y1) = a, b
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
    u = 1 - t
    return u * u * x0 + 2 * u * t * cx + t * t * x1, u * u * y0 + 2 * u * t * cy + t * t * y1


def _draw_nodes(ax, pos, fed, inputs):
    """One boxed name per node, numbered as in the genotype; a node without operations into it
    (dead) is dashed and grey."""
    names = {0: '0  $c_{k-2}$', 1: '1  $c_{k-1}$'} if len(inputs) == 2 else {0: '0  $c_{k-1}$'}
    names['out'] = '$c_{k}$'
    texts = []
    for n, (x, y) in pos.items():
        dead = n not in fed and n not in ('out',) + tuple(inputs)
        face = 'lightblue' if n in inputs else 'palegoldenrod' if n == 'out' else 'white' if dead else 'lightgray'
        name = f'{n}\n(dead)' if dead else names.get(n, str(n))
        texts.append(ax.text(x, y, name, ha='center', va='center', fontsize=NODE_FONT - 2 * dead, zorder=3,
                             color='0.5' if dead else 'k', bbox=dict(
                                 boxstyle=f'round,pad={NODE_PAD}', fc=face, ec='0.5' if dead else 'k',
                                 ls='--' if dead else '-')))
    return texts


def _draw_arcs(ax, pos, labels, concat):
    """The arrows, coloured by source node so that a label's box matches its arc; returns the label
    artists (placed later) with the points along their arcs where they may go."""
    from matplotlib import colormaps
    from matplotlib.patches import FancyArrowPatch
    colors = colormaps['tab10']
    items = []
    for (src, dst), label in labels.items():
        color = colors(src % 10)
        ax.add_patch(FancyArrowPatch(pos[src], pos[dst], connectionstyle=f'arc3,rad={ARC_RAD}', zorder=1,
                                     arrowstyle='-|>', mutation_scale=13, color=color, lw=1.5,
                                     shrinkA=11, shrinkB=11))
        text = ax.text(0, 0, label, fontsize=LABEL_FONT, ha='center', va='center', zorder=4, linespacing=1.15,
                       bbox=dict(boxstyle=f'round,pad={LABEL_PAD}', fc='white', ec=color, lw=1.0))
        items.append((text, [_arc_point(pos[src], pos[dst], ARC_RAD, t) for t in SPOTS]))
    for n in concat:
        ax.add_patch(FancyArrowPatch(pos[n], pos['out'], connectionstyle=f'arc3,rad={OUT_RAD}', zorder=1,
                                     arrowstyle='-|>', mutation_scale=11, color='0.55', ls='--', lw=1.1,
                                     shrinkA=11, shrinkB=11))
    # The tallest labels first: they need the roomiest spots.
    return sorted(items, key=lambda item: -item[0].get_text().count('\n'))


def _padded(text, renderer, pad):
    """The display box of a text's (rounded) box: its extent grown by pad font sizes and a pixel."""
    grow = pad * text.get_fontsize() * text.figure.dpi / 72 + 1
    return text.get_window_extent(renderer).padded(grow)


def _clash(box, others, bounds):
    """How badly box sits: the area it shares with others plus the area outside bounds (pixels)."""
    from matplotlib.transforms import Bbox
    shared = sum(max(0, min(box.x1, o.x1) - max(box.x0, o.x0)) * max(0, min(box.y1, o.y1) - max(box.y0, o.y0))
                 for o in others)
    inside = Bbox.intersection(box, bounds)
    return shared + box.width * box.height - (inside.width * inside.height if inside else 0)


def _place_labels(ax, renderer, items, obstacles):
    """Move every label to its first spot clear of the obstacles and of the labels placed before it
    (else to its least bad spot); True when every label found a clear one."""
    placed, clear = list(obstacles), True
    for text, spots in items:
        best = None
        for spot in spots:
            text.set_position(spot)
            box = _padded(text, renderer, LABEL_PAD)
            cost = _clash(box, placed, ax.bbox)
            if best is None or cost < best[0]:
                best = (cost, spot, box)
            if cost == 0:
                break
        text.set_position(best[1])
        placed.append(best[2])
        clear = clear and best[0] == 0
    return clear


def _fit(fig, ax, pos, labels, concat, scale):
    """Size the figure at `scale` inches per node spacing, x and y alike (so arcs keep their shape),
    with room above the highest arc for half the tallest label."""
    out_x = pos['out'][0]
    lowest = max([OUT_RAD * (out_x - pos[n][0]) / 2 for n in concat], default=0)
    tallest = max((label.count('\n') + 1 for label in labels.values()), default=1)
    label_half = (tallest * 1.15 * LABEL_FONT + 2 * LABEL_PAD * LABEL_FONT) / 72 / 2 / scale
    top = max((-ARC_RAD * (dst - src) / 2 for src, dst in labels), default=0) + label_half + 0.15
    bottom = -(lowest + 0.3)
    x0, x1 = -0.65, out_x + 0.65
    width, height = (x1 - x0) * scale, (top - bottom) * scale
    fig.set_size_inches(width, height + TITLE_INCHES)
    ax.set_position([0, 0, 1, height / (height + TITLE_INCHES)])
    ax.set_xlim(x0, x1)
    ax.set_ylim(bottom, top)


def plot_cell(cell, concat, path, title, inputs):
    """Draw one cell (DARTS pairs or triples) and save it to path (None: do not save); returns the
    Figure. One arrow per edge, labelled with all of its operations; nodes numbered as in the
    genotype; the figure grows with its labels until none overlaps another or a node."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import ScaledTranslation
    edges = genotypes.cell_edges(cell) if cell else []      # a proxyless half may be empty
    fed = {dst for _, _, dst in edges}
    last = max(fed | set(concat) | set(inputs))
    pos = {**{n: (float(n), 0.0) for n in range(last + 1)}, 'out': (last + 1.0, 0.0)}
    labels = _edge_labels(edges)
    fig = Figure(dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.axis('off')
    below_top = ScaledTranslation(0, -0.08, fig.dpi_scale_trans)
    fig.text(0.5, 1, f'{title}: {len(edges)} operation{"s" * (len(edges) != 1)} on {len(labels)} '
             f'edge{"s" * (len(labels) != 1)}', ha='center', va='top', fontsize=TITLE_FONT,
             transform=fig.transFigure + below_top)
    nodes = _draw_nodes(ax, pos, fed, inputs)
    items = _draw_arcs(ax, pos, labels, concat)
    scale = START_SCALE
    for _ in range(TRIES):
        _fit(fig, ax, pos, labels, concat, scale)
        renderer = fig.canvas.get_renderer()
        if _place_labels(ax, renderer, items, [_padded(t, renderer, NODE_PAD) for t in nodes]):
            break
        scale *= GROWTH
    if path is not None:
        save_figure(fig, path, dpi=DPI)
    return fig


def plot_genotype(genotype, out_dir):
    """The space's cell pictures (DARTS: cell_normal.png and cell_reduce.png; NAS-Bench-201: cell.png;
    proxyless: cell_sShK.png, the trees of each stage's first block) in out_dir; returns their
    Figures by cell type."""
    space = spaces.space_of(genotype)
    figures = {}
    for file, cell_type, title in space.pictures:
        cell = space.cell(genotype, cell_type)
        if cell is not None:        # a proxyless network may have fewer stages
            figures[cell_type] = plot_cell(*cell, Path(out_dir) / file, title, space.inputs)
    return figures


def plot_gamma(rows, path, threshold=None, *, space):
    """Heat map of log10(gamma) per edge (rows) and switch (columns: the edge switch, then each
    operation), one panel per cell type; pruned switches are grey with an x."""
    import numpy as np
    tables = cell_tables(rows, space)
    if len(tables) > 4:
        return _plot_gamma_cells(tables, path, threshold, space)
    columns = ['edge'] + space.candidates
    fig = _figure(6.5 * len(tables), 6.5)
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
    save_figure(fig, path, dpi=100)


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
    fig = _figure(max(8, 0.12 * len(columns)), max(4, 0.16 * len(tables) + 1.5))
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
    save_figure(fig, path, dpi=100)


# ----------------------------------------------------------------------------------------------------
# Looking a NAS-Bench-201 cell up in the benchmark
# ----------------------------------------------------------------------------------------------------

def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _csv_lookup(path, arch):
    """{accuracy column: value} of arch in a CSV table: the architecture column is the one whose
    header names an architecture ('arch...'), the accuracy columns those whose header says 'acc' and
    whose values are numbers; several rows of one architecture (seeds) are averaged."""
    import csv
    try:
        with open(path, newline='') as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise utils.UserError(f'cannot read benchmark table {path}: {getattr(e, "strerror", None) or e}') from e
    if not rows:
        raise utils.UserError(f'benchmark table {path} is empty')
    header = [h.strip() for h in rows[0]]
    arch_cols = [i for i, h in enumerate(header) if h.lower().startswith('arch')]
    if not arch_cols:
        raise utils.UserError(f'benchmark table {path} has no column of architecture strings (a header '
                              f'starting with "arch"); its columns: {", ".join(header)}')
    col = arch_cols[0]
    acc = [i for i, h in enumerate(header) if 'acc' in h.lower() and i != col]
    if not acc:
        raise utils.UserError(f'benchmark table {path} has no accuracy column (a header containing '
                              f'"acc"); its columns: {", ".join(header)}')
    found = [r for r in rows[1:] if len(r) > col and r[col].strip() == arch]
    if not found:
        raise utils.UserError(f'{arch} is not in benchmark table {path} ({len(rows) - 1} rows)')
    values = {}
    for i in acc:
        numbers = [_number(r[i]) if i < len(r) else None for r in found]
        if all(v is not None for v in numbers):
            values[header[i]] = sum(numbers) / len(numbers)
    if not values:
        raise utils.UserError(f'benchmark table {path}: the accuracy columns of {arch} hold no numbers')
    return values, len(found)


def _nats_lookup(path, arch):
    """{'<data set> <metric>': value} of arch from the official NATS-Bench topology file (200 epochs)."""
    try:
        from nats_bench import create
    except ImportError:
        raise utils.UserError(f'{path} is not a .csv table, and reading the NATS-Bench API file needs the '
                              f'nats_bench package (pip install nats_bench)') from None
    try:
        api = create(str(path), 'tss', fast_mode=True, verbose=False)
        index = api.query_index_by_arch(arch)
        infos = [] if index is None or index < 0 else [
            (dataset, api.get_more_info(index, dataset, hp='200', is_random=False))
            for dataset in ('cifar10-valid', 'cifar10')]
    except Exception as e:      # nats_bench fails in its own ways on a file that is not its format
        raise utils.UserError(f'{path} is not a .csv table nor a NATS-Bench topology file nats_bench '
                              f'can read: {type(e).__name__}: {e}') from e
    if not infos:
        raise utils.UserError(f'{arch} is not in the NATS-Bench file {path}')
    values = {f'{dataset} {metric}': float(info[metric]) for dataset, info in infos
              for metric in ('valid-accuracy', 'test-accuracy') if isinstance(info.get(metric), (int, float))}
    return values, 1


def lookup(path, arch):
    """The line that reports arch's accuracies in the benchmark file at path (a .csv table, or the
    NATS-Bench API file when nats_bench is installed)."""
    path = Path(path)
    if not path.exists():
        raise utils.UserError(f'benchmark file {path} does not exist')
    values, rows = (_csv_lookup if path.suffix.lower() == '.csv' else _nats_lookup)(path, arch)
    mean = f' (mean of {rows} rows)' if rows > 1 else ''
    return f'# benchmark {path.name}{mean}: ' + ', '.join(f'{k} {v:.2f}' for k, v in values.items())


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


def check_benchmark(path, space):
    """Before any work: --benchmark only for NAS-Bench-201, and only with a file that is there."""
    if path is None:
        return
    if space.name != 'nb201':
        raise utils.UserError(f'--benchmark looks up NAS-Bench-201 cells; this is a {space.name} search')
    if not Path(path).exists():
        raise utils.UserError(f'benchmark file {path} does not exist')


def main(argv=None):
    args = build_parser().parse_args(argv)
    doc = load_gamma(args.run_dir)
    space = space_of(doc)
    check_benchmark(args.benchmark, space)
    notes = []
    genotype = derive(doc, threshold=args.threshold, topk=args.topk, notes=notes, select=args.select)
    rule_text = (f'topk {args.topk}' if args.topk is not None
                 else f'threshold {args.threshold if args.threshold is not None else doc["threshold"]:g}')
    rule_text += f', ops by {args.select or search_select(doc)}'
    out_dir = output_dir(args.out or default_out(args.run_dir, doc, args.threshold, args.topk, args.select))
    literal = write_genotype(genotype, out_dir, f'derived from {args.run_dir} by {rule_text}')
    plot_genotype(genotype, out_dir)
    # The literal first, then comment lines: the whole of stdout still pastes into genotypes.py.
    print(literal)
    for note in notes:
        print(f'# note: {note}')
    if args.benchmark is not None:
        print(lookup(args.benchmark, genotype))
    print(f'# wrote {", ".join(outputs(space))} to {out_dir}')
    return genotype


if __name__ == '__main__':
    utils.cli(main)
