"""Cell genotypes: the DARTS format, the BayesNAS cells, validation and (de)serialisation.

A Genotype holds a normal and a reduction cell, each with the list of intermediate nodes whose
concatenation is the cell's output. Nodes 0 and 1 are the cell's inputs (outputs of the cell before
the previous one and of the previous one), nodes 2, 3, ... are intermediate nodes. A cell is written
in one of two forms:

    DARTS pairs     [(op, input), ...]        two per intermediate node, in node order: pair i feeds
                                              node 2 + i // 2 (DARTS genotypes paste in unchanged)
    edge triples    [(op, from, to), ...]     any number of ops per edge and any in-degree per node;
                                              ops on the same edge are summed; an op appears at most
                                              once per edge

`cell_edges` turns either form into a list of (op, from, to).

A NAS-Bench-201 cell is the benchmark's own architecture string, |op~0|+|op~0|op~1|+|op~0|op~1|op~2|:
node j (1..3) is the sum of one op on each edge from every earlier node, node 0 is the cell's input and
node 3 its output. Its genotype.json is {"space": "nb201", "arch": "|...|"}; a DARTS genotype.json has
no "space" key. Self-contained: no project imports.
"""
import json
import keyword
import os
import tempfile
from collections import namedtuple

Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')

# DARTS's search primitives, in DARTS's order.
PRIMITIVES = [
    'none',
    'max_pool_3x3',
    'avg_pool_3x3',
    'skip_connect',
    'sep_conv_3x3',
    'sep_conv_5x5',
    'dil_conv_3x3',
    'dil_conv_5x5',
]

# BayesNAS's candidates: an edge becomes 'none' when its edge switch is pruned, so 'none' is no op.
CANDIDATES = [p for p in PRIMITIVES if p != 'none']

# Every operation a genotype may name (the keys of operations.OPS): the primitives plus DARTS's two
# further ops, so published NASNet/AmoebaNet-style genotypes load too.
OPERATIONS = PRIMITIVES + ['sep_conv_7x7', 'conv_7x1_1x7']


# NAS-Bench-201's operations, in the benchmark's order; again 'none' is what a pruned edge becomes.
NB201_OPERATIONS = ['none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3']
NB201_CANDIDATES = [p for p in NB201_OPERATIONS if p != 'none']
NB201_NODES = 4
NB201_EXAMPLE = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|'


# ----------------------------------------------------------------------------------------------------
# Named genotypes
# ----------------------------------------------------------------------------------------------------

# DARTS's published cells (first- and second-order search).
DARTS_V1 = Genotype(
    normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1),
            ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)],
    reduce_concat=[2, 3, 4, 5])

DARTS_V2 = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
            ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)],
    reduce_concat=[2, 3, 4, 5])

DARTS = DARTS_V2

# The cells released by the BayesNAS authors for CIFAR-10, one per lambda (edge triples).
BayesNAS_0_01 = Genotype(
    normal=[('sep_conv_5x5', 1, 2), ('sep_conv_5x5', 0, 2), ('max_pool_3x3', 0, 2), ('avg_pool_3x3', 0, 2),
            ('skip_connect', 0, 2),
            ('max_pool_3x3', 1, 3), ('skip_connect', 1, 3),
            ('skip_connect', 1, 4), ('max_pool_3x3', 0, 4),
            ('avg_pool_3x3', 2, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('skip_connect', 1, 2), ('sep_conv_3x3', 0, 2), ('avg_pool_3x3', 0, 2), ('max_pool_3x3', 0, 2),
            ('sep_conv_5x5', 0, 2),
            ('max_pool_3x3', 0, 3), ('avg_pool_3x3', 0, 3),
            ('sep_conv_3x3', 0, 4), ('avg_pool_3x3', 0, 4),
            ('sep_conv_5x5', 2, 5)],
    reduce_concat=[2, 3, 4, 5])

BayesNAS_0_007 = Genotype(
    normal=[('sep_conv_3x3', 0, 2), ('skip_connect', 0, 2),
            ('sep_conv_3x3', 1, 3), ('skip_connect', 1, 3),
            ('skip_connect', 1, 4), ('sep_conv_3x3', 0, 4),
            ('sep_conv_5x5', 0, 5), ('max_pool_3x3', 0, 5), ('avg_pool_3x3', 0, 5), ('skip_connect', 2, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('sep_conv_5x5', 1, 2), ('avg_pool_3x3', 1, 2), ('avg_pool_3x3', 0, 2), ('max_pool_3x3', 0, 2),
            ('skip_connect', 0, 2), ('sep_conv_5x5', 0, 2),
            ('avg_pool_3x3', 0, 3), ('skip_connect', 2, 3),
            ('avg_pool_3x3', 0, 4), ('sep_conv_5x5', 2, 4), ('skip_connect', 2, 4),
            ('avg_pool_3x3', 2, 5), ('max_pool_3x3', 2, 5)],
    reduce_concat=[2, 3, 4, 5])

BayesNAS_0_005 = Genotype(
    normal=[('max_pool_3x3', 0, 2), ('avg_pool_3x3', 0, 2), ('skip_connect', 0, 2),
            ('skip_connect', 1, 3), ('sep_conv_5x5', 0, 3),
            ('avg_pool_3x3', 1, 4), ('skip_connect', 0, 4), ('max_pool_3x3', 0, 4),
            ('sep_conv_5x5', 0, 5), ('max_pool_3x3', 2, 5)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('sep_conv_3x3', 1, 2), ('sep_conv_5x5', 1, 2), ('max_pool_3x3', 1, 2), ('avg_pool_3x3', 0, 2),
            ('max_pool_3x3', 0, 2),
            ('max_pool_3x3', 2, 3), ('avg_pool_3x3', 2, 3), ('skip_connect', 2, 3),
            ('skip_connect', 0, 4), ('max_pool_3x3', 0, 4),
            ('sep_conv_3x3', 0, 5), ('max_pool_3x3', 0, 5), ('max_pool_3x3', 2, 5)],
    reduce_concat=[2, 3, 4, 5])

BayesNAS = BayesNAS_0_005



def names():
    """Every Genotype defined at module level, in the order of definition: a `Name = Genotype(...)`
    line pasted anywhere into this file is a name for --arch, with no list to keep up to date."""
    return [name for name, value in globals().items()
            if isinstance(value, Genotype) and not name.startswith('_')]


def __getattr__(attr):
    # NAMES is computed when it is read, so that it includes genotypes defined below this point.
    if attr == 'NAMES':
        return names()
    raise AttributeError(f'module {__name__!r} has no attribute {attr!r}')


def from_name(name):
    """The named genotype `name` (one of NAMES)."""
    known = names()
    if name not in known:
        raise ValueError(f"unknown genotype {name!r}; known genotypes: {', '.join(known)}")
    return globals()[name]


# ----------------------------------------------------------------------------------------------------
# Normalising and validating cells
# ----------------------------------------------------------------------------------------------------

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def cell_form(cell):
    """'pairs' or 'triples'; ValueError for an empty cell, mixed forms or malformed entries."""
    if not isinstance(cell, (list, tuple)):
        raise ValueError(f'a cell must be a list of (op, input) or (op, from, to) entries, got {cell!r}')
    if not cell:
        raise ValueError('empty cell: it has no operations')
    sizes = set()
    for entry in cell:
        if (not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3)
                or not isinstance(entry[0], str) or not all(_is_int(v) for v in entry[1:])):
            raise ValueError(f'malformed cell entry {entry!r}: expected (op, input) or (op, from, to) '
                             f'with an op name and integer nodes')
        sizes.add(len(entry))
    if len(sizes) > 1:
        raise ValueError('a cell mixes (op, input) pairs and (op, from, to) triples; use one form')
    return 'pairs' if sizes == {2} else 'triples'


def cell_edges(cell):
    """The cell as a list of (op, from, to), sorted by destination node, source node, then op name.

    Repeated entries are kept (validate() accepts them only in the pairs form, where DARTS's two
    inputs of a node are two separate ops, and NASNet repeats one)."""
    if cell_form(cell) == 'pairs':
        if len(cell) % 2:
            raise ValueError(f'a cell of (op, input) pairs needs two pairs per node, got {len(cell)} pairs')
        edges = [(op, src, 2 + i // 2) for i, (op, src) in enumerate(cell)]
    else:
        edges = [tuple(entry) for entry in cell]
    return sorted(edges, key=lambda e: (e[2], e[1], e[0]))


def _validate_cell(cell, concat, which):
    try:
        form = cell_form(cell)
        edges = cell_edges(cell)
    except ValueError as e:
        raise ValueError(f'{which} cell: {e}') from None
    for op, src, dst in edges:
        if op not in OPERATIONS or (op == 'none' and form == 'triples'):
            known = [o for o in OPERATIONS if form == 'pairs' or o != 'none']
            raise ValueError(f'{which} cell: unknown operation {op!r}; known: {", ".join(known)}')
        if not 0 <= src < dst or dst < 2:
            raise ValueError(f'{which} cell: edge ({op!r}, {src}, {dst}) must go from a node to a later '
                             f'intermediate node (0 <= from < to, to >= 2)')
    if form == 'triples':
        # Each triple is the one op of that kind on its edge (a derivation keeps or drops it); a
        # repeat is a mistake in the file, not a second op.
        repeated = next((e for e, f in zip(edges, edges[1:]) if e == f), None)
        if repeated is not None:
            raise ValueError(f'{which} cell: edge {repeated!r} is listed twice')
    fed = {dst for _, _, dst in edges}
    for op, src, dst in edges:
        if src >= 2 and src not in fed:
            raise ValueError(f'{which} cell: edge ({op!r}, {src}, {dst}) reads node {src}, which has no '
                             f'incoming edge')
    if isinstance(concat, (str, bytes)) or not hasattr(concat, '__iter__'):
        raise ValueError(f'{which}_concat must be a list of node numbers, got {concat!r}')
    concat = list(concat)
    if not concat or not all(_is_int(c) for c in concat) or len(set(concat)) != len(concat):
        raise ValueError(f'{which}_concat must be a non-empty list of distinct node numbers, got {concat!r}')
    for c in concat:
        if c not in fed:
            raise ValueError(f'{which}_concat names node {c}, which is not an intermediate node with an '
                             f'incoming edge')
    # Every computed node must reach the output, or its ops are wasted.
    useful = set(concat)
    for _, src, dst in sorted(edges, key=lambda e: -e[2]):
        if dst in useful:
            useful.add(src)
    unused = sorted(fed - useful)
    if unused:
        raise ValueError(f'{which} cell: node {unused[0]} is neither in {which}_concat nor read by a node '
                         f'that reaches the output')


def validate(genotype):
    """Raise ValueError with a clear message unless `genotype` describes two buildable cells."""
    if not isinstance(genotype, tuple) or len(genotype) != 4:
        raise ValueError(f'not a Genotype(normal, normal_concat, reduce, reduce_concat): {genotype!r}')
    genotype = Genotype(*genotype)
    _validate_cell(genotype.normal, genotype.normal_concat, 'normal')
    _validate_cell(genotype.reduce, genotype.reduce_concat, 'reduce')


def canonical(genotype):
    """The genotype with tuples for entries and plain lists for cells and concats (what JSON and
    to_literal give back), after validation."""
    validate(genotype)
    g = Genotype(*genotype)
    return Genotype(normal=[tuple(e) for e in g.normal], normal_concat=list(g.normal_concat),
                    reduce=[tuple(e) for e in g.reduce], reduce_concat=list(g.reduce_concat))


# ----------------------------------------------------------------------------------------------------
# NAS-Bench-201 architecture strings
# ----------------------------------------------------------------------------------------------------

def nb201_edges(arch):
    """The six (op, from, to) of a NAS-Bench-201 string, 'none' included, in the string's order;
    ValueError naming what is wrong."""
    form = f'expected {NB201_NODES - 1} groups |op~0|+|op~0|op~1|+|op~0|op~1|op~2|'
    if not isinstance(arch, str):
        raise ValueError(f'a NAS-Bench-201 architecture is a string, got {arch!r}')
    nodes = arch.split('+')
    if len(nodes) != NB201_NODES - 1:
        raise ValueError(f'malformed NAS-Bench-201 architecture {arch!r}: {form}')
    edges = []
    for dst, node in enumerate(nodes, 1):
        if len(node) < 2 or node[0] != '|' or node[-1] != '|':
            raise ValueError(f'malformed NAS-Bench-201 architecture {arch!r}: node {dst} is {node!r}; {form}')
        entries = node[1:-1].split('|')
        if len(entries) != dst:
            raise ValueError(f'malformed NAS-Bench-201 architecture {arch!r}: node {dst} needs {dst} '
                             f'op~input entries, got {len(entries)}')
        for src, entry in enumerate(entries):
            op, sep, source = entry.rpartition('~')
            if not sep or source != str(src):
                raise ValueError(f'malformed NAS-Bench-201 architecture {arch!r}: entry {entry!r} of node '
                                 f'{dst} must be op~{src}')
            if op not in NB201_OPERATIONS:
                raise ValueError(f'NAS-Bench-201 architecture {arch!r}: unknown operation {op!r}; known: '
                                 f'{", ".join(NB201_OPERATIONS)}')
            edges.append((op, src, dst))
    return edges


def nb201_cell(arch):
    """The (op, from, to) a network computes for the string: its edges without the 'none' ones."""
    return [e for e in nb201_edges(arch) if e[0] != 'none']


def nb201_string(edges):
    """The string of a cell given as (op, from, to) with at most one op per edge; an edge missing
    from the list is 'none'."""
    ops = {}
    for op, src, dst in edges:
        if not (0 <= src < dst < NB201_NODES) or op not in NB201_OPERATIONS or (src, dst) in ops:
            raise ValueError(f'({op!r}, {src}, {dst}) is not one op on an edge of a NAS-Bench-201 cell')
        ops[(src, dst)] = op
    return '+'.join('|' + '|'.join(f'{ops.get((i, j), "none")}~{i}' for i in range(j)) + '|'
                    for j in range(1, NB201_NODES))


# ----------------------------------------------------------------------------------------------------
# JSON and Python literals
# ----------------------------------------------------------------------------------------------------

def json_text(genotype):
    """The genotype.json text: {"normal": [[op, ...], ...], "normal_concat": [...], ...} for a Genotype,
    {"space": "nb201", "arch": "|...|"} for a NAS-Bench-201 string."""
    if isinstance(genotype, str):
        nb201_edges(genotype)
        return json.dumps({'space': 'nb201', 'arch': genotype}, indent=1) + '\n'
    g = canonical(genotype)
    return json.dumps({field: getattr(g, field) for field in Genotype._fields}, indent=1) + '\n'


def save_json(genotype, path):
    """Write json_text(genotype) to path."""
    text = json_text(genotype)
    # Atomically, as a later train.py reads it: a temporary file beside it, renamed over it.
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)    # mkstemp's 0600 would hide it from other users
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_json(path):
    """Read a DARTS-space genotype file (json_text's format: derive.py's genotype.json, save_json's
    files); ValueError naming the file if it is missing, malformed or of another space."""
    space, genotype = load_file(path)
    if space != 'darts':
        raise ValueError(f'genotype file {path} holds a cell of the {space} space, not a DARTS genotype')
    return genotype


def read_json(path, what='genotype file'):
    """The JSON value in a file; ValueError in one line naming `what` and the file otherwise."""
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise ValueError(f'cannot read {what} {path}: {e.strerror}') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{what} {path} is not valid JSON: {e}') from None


def load_file(path):
    """(space, genotype) from a genotype file: ('darts', Genotype), ('nb201', string), or
    ('proxyless', dict) for a PyramidTreeNet config, returned unchecked (proxyless.py checks those)."""
    data = read_json(path)
    if isinstance(data, dict) and data.get('name') == 'PyramidTreeNet':
        return 'proxyless', data
    if isinstance(data, dict) and 'space' in data:
        if data.get('space') != 'nb201' or set(data) != {'space', 'arch'}:
            raise ValueError(f'genotype file {path}: a file with a "space" must be {{"space": "nb201", '
                             f'"arch": "|...|"}}')
        try:
            nb201_edges(data['arch'])
        except ValueError as e:
            raise ValueError(f'genotype file {path}: {e}') from None
        return 'nb201', data['arch']
    if not isinstance(data, dict) or set(data) != set(Genotype._fields):
        raise ValueError(f'genotype file {path} must hold a JSON object with exactly the keys '
                         f'{", ".join(Genotype._fields)}')
    try:
        return 'darts', canonical(Genotype(**data))
    except ValueError as e:
        raise ValueError(f'genotype file {path}: {e}') from None


def to_literal(genotype, name='Searched'):
    """One line of Python, `Name = Genotype(...)`, that pastes into this file."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f'{name!r} is not a valid Python name for a genotype')
    g = canonical(genotype)
    return (f'{name} = Genotype(normal={g.normal!r}, normal_concat={g.normal_concat!r}, '
            f'reduce={g.reduce!r}, reduce_concat={g.reduce_concat!r})')
