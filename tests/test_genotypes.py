"""Genotypes: the two cell forms, validation, named cells, JSON and Python-literal round trips."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import genotypes
import operations
import proxyless
from genotypes import Genotype

REFERENCE = Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'bayesnas_cells.md'

PAIRS = [('sep_conv_3x3', 0), ('skip_connect', 1), ('max_pool_3x3', 2), ('sep_conv_3x3', 0)]
TRIPLES = [('skip_connect', 1, 3), ('sep_conv_5x5', 0, 2), ('avg_pool_3x3', 0, 2), ('sep_conv_5x5', 0, 2),
           ('max_pool_3x3', 2, 3)]
# TRIPLES repeats an edge, which cell_edges keeps and validate refuses: the valid cell without it.
UNIQUE_TRIPLES = list(dict.fromkeys(TRIPLES))


def small(normal=PAIRS, reduce=UNIQUE_TRIPLES, normal_concat=(2, 3), reduce_concat=(2, 3)):
    return Genotype(normal=list(normal), normal_concat=list(normal_concat),
                    reduce=list(reduce), reduce_concat=list(reduce_concat))


# ----------------------------------------------------------------------------------------------------
# Operation names
# ----------------------------------------------------------------------------------------------------

def test_primitives_and_candidates():
    assert genotypes.PRIMITIVES[0] == 'none' and len(genotypes.PRIMITIVES) == 8
    assert genotypes.CANDIDATES == genotypes.PRIMITIVES[1:]
    # Every name a genotype of any space may use has an operation, and every operation can be named.
    assert set(genotypes.OPERATIONS) | set(genotypes.NB201_OPERATIONS) | set(proxyless.CANDIDATES) == \
        set(operations.OPS)
    assert genotypes.NB201_CANDIDATES == genotypes.NB201_OPERATIONS[1:]


# ----------------------------------------------------------------------------------------------------
# cell_edges
# ----------------------------------------------------------------------------------------------------

def test_cell_edges_of_pairs_feeds_two_pairs_per_node():
    assert genotypes.cell_edges(PAIRS) == [('sep_conv_3x3', 0, 2), ('skip_connect', 1, 2),
                                           ('sep_conv_3x3', 0, 3), ('max_pool_3x3', 2, 3)]


def test_cell_edges_of_triples_sorts_and_keeps_repeats():
    edges = genotypes.cell_edges(TRIPLES)
    assert edges == [('avg_pool_3x3', 0, 2), ('sep_conv_5x5', 0, 2), ('sep_conv_5x5', 0, 2),
                     ('skip_connect', 1, 3), ('max_pool_3x3', 2, 3)]
    assert genotypes.cell_edges([list(e) for e in TRIPLES]) == edges     # JSON gives lists


def test_both_forms_of_the_same_cell_agree():
    triples = [(op, src, dst) for op, src, dst in genotypes.cell_edges(genotypes.DARTS_V2.reduce)]
    assert genotypes.cell_edges(triples) == genotypes.cell_edges(genotypes.DARTS_V2.reduce)


@pytest.mark.parametrize('cell, message', [
    ([('sep_conv_3x3', 0), ('skip_connect', 1, 2)], 'mixes'),
    ([('sep_conv_3x3', 0), ('skip_connect', 1), ('skip_connect', 0)], 'two pairs per node'),
    ([], 'empty'),
    ([('sep_conv_3x3',)], 'malformed'),
    ([('sep_conv_3x3', '0', 2)], 'malformed'),
    ([(3, 0, 2)], 'malformed'),
    ('sep_conv_3x3', 'list'),
])
def test_cell_edges_rejects_malformed_cells(cell, message):
    with pytest.raises(ValueError, match=message):
        genotypes.cell_edges(cell)


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('genotype, message', [
    (small(normal=[('sep_conv_4x4', 0), ('skip_connect', 1), ('max_pool_3x3', 2), ('sep_conv_3x3', 0)]),
     "normal cell: unknown operation 'sep_conv_4x4'"),
    (small(reduce=[('none', 0, 2), ('skip_connect', 1, 3), ('max_pool_3x3', 2, 3)]), "unknown operation 'none'"),
    (small(reduce=[('skip_connect', 2, 2), ('skip_connect', 1, 3)]), 'later'),
    (small(reduce=[('skip_connect', 0, 1), ('skip_connect', 1, 2)], reduce_concat=[2]), 'later'),
    (small(reduce=[('skip_connect', -1, 2)], reduce_concat=[2]), 'later'),
    (small(normal_concat=[2, 3, 4]), 'normal_concat names node 4'),
    (small(normal_concat=[2, 2, 3]), 'distinct'),
    (small(normal_concat=[]), 'non-empty'),
    (small(reduce=[('skip_connect', 0, 2), ('max_pool_3x3', 3, 4)], reduce_concat=[2, 4]),
     'reads node 3, which has no incoming edge'),
    (small(reduce=[('skip_connect', 0, 2), ('skip_connect', 1, 3)], reduce_concat=[3]), 'node 2 is neither'),
    (small(normal=[]), 'normal cell: empty'),
])
def test_validate_rejects_with_a_clear_message(genotype, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        genotypes.validate(genotype)


def test_validate_accepts_pairs_with_none_and_gaps_between_nodes():
    # 'none' is a DARTS primitive, so DARTS pairs may name it; a node may be left out (node 3 here).
    genotypes.validate(small(normal=[('none', 0), ('skip_connect', 1)], normal_concat=[2],
                             reduce=[('skip_connect', 0, 2), ('sep_conv_3x3', 2, 4)], reduce_concat=[4]))


# ----------------------------------------------------------------------------------------------------
# Named genotypes
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', genotypes.NAMES)
def test_named_genotypes_are_valid(name):
    genotypes.validate(genotypes.from_name(name))


def test_named_aliases_and_unknown_name():
    assert genotypes.BayesNAS is genotypes.BayesNAS_0_005
    assert genotypes.from_name('DARTS_V2') is genotypes.DARTS_V2
    with pytest.raises(ValueError, match='DARTS_V1, DARTS_V2.*BayesNAS_0_01'):
        genotypes.from_name('NASNet')


def test_a_pasted_genotype_is_a_name(tmp_path):
    # What a user does with search.py's last line: paste it at the end of genotypes.py.
    import importlib.util
    line = genotypes.to_literal(small(), name='Searched')
    copy = tmp_path / 'genotypes.py'
    copy.write_text(Path(genotypes.__file__).read_text() + '\n' + line + '\n')
    spec = importlib.util.spec_from_file_location('pasted_genotypes', copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NAMES == genotypes.NAMES + ['Searched']
    assert module.from_name('Searched') == small()
    assert genotypes.NAMES[:3] == ['DARTS_V1', 'DARTS_V2', 'DARTS'] and 'Searched' not in genotypes.NAMES


def test_a_repeated_edge_is_refused_in_triples_and_kept_in_pairs(tmp_path):
    with pytest.raises(ValueError, match=re.escape("reduce cell: edge ('sep_conv_5x5', 0, 2) is listed twice")):
        genotypes.validate(small(reduce=TRIPLES))
    # DARTS pairs: a node's two inputs are two ops; NASNet repeats one (two avg pools of node 0).
    genotypes.validate(small(normal=[('avg_pool_3x3', 0), ('avg_pool_3x3', 0), ('skip_connect', 2),
                                     ('sep_conv_3x3', 1)]))
    # As train.py sees such a file: one line, exit code 2.
    path = tmp_path / 'genotype.json'
    path.write_text(json.dumps({**small()._asdict(), 'reduce': TRIPLES}))
    proc = subprocess.run([sys.executable, 'train.py', '--genotype', str(path), '--data', str(tmp_path)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
    assert proc.stderr.startswith('error: genotype file') and 'is listed twice' in proc.stderr


def _reference_cells(text):
    """{lambda string: {'normal': edges, 'reduce': edges}} parsed from the reference notes."""
    cells, current, which = {}, None, None
    for line in text.splitlines():
        heading = re.match(r'### λ = ([0-9.]+)', line)
        if heading:
            current = cells.setdefault(heading.group(1), {})
        elif current is not None and line.strip() in ('normal:', 'reduce:'):
            which = line.strip()[:-1]
            current[which] = []
        elif line.startswith('#'):
            current = which = None
        elif which and line.startswith('  ('):
            current[which] += [(op, int(a), int(b)) for op, a, b in re.findall(r'\((\w+), (\d+), (\d+)\)', line)]
    return cells


def test_bayesnas_cells_match_the_released_cells():
    if not REFERENCE.exists():
        pytest.skip(f'reference notes not found at {REFERENCE}')
    cells = _reference_cells(REFERENCE.read_text())
    assert set(cells) == {'0.01', '0.007', '0.005'}
    for lam, cell in cells.items():
        g = genotypes.from_name('BayesNAS_' + lam.replace('.', '_'))
        assert sorted(g.normal) == sorted(cell['normal']) and len(cell['normal']) >= 10
        assert sorted(g.reduce) == sorted(cell['reduce']) and len(cell['reduce']) >= 10
        assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5]


# ----------------------------------------------------------------------------------------------------
# JSON and literals
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('genotype', [genotypes.DARTS_V1, genotypes.BayesNAS_0_007, small()])
def test_json_round_trip(genotype, tmp_path):
    path = tmp_path / 'genotype.json'
    genotypes.save_json(genotype, path)
    loaded = genotypes.load_json(path)
    assert loaded == genotype
    assert all(isinstance(e, tuple) for e in loaded.normal + loaded.reduce)


def test_json_round_trip_turns_a_range_concat_into_a_list(tmp_path):
    g = genotypes.DARTS_V2._replace(normal_concat=range(2, 6))
    genotypes.save_json(g, tmp_path / 'g.json')
    assert genotypes.load_json(tmp_path / 'g.json') == genotypes.DARTS_V2


@pytest.mark.parametrize('content, message', [
    ('{"normal": [', 'not valid JSON'),
    ('[1, 2]', 'exactly the keys'),
    ('{"normal": [["skip_connect", 0]], "normal_concat": [2], "reduce": [["skip_connect", 0]]}', 'exactly the keys'),
    ('{"normal": [["skip_connect", 0], ["skip_connect", 1]], "normal_concat": [2], '
     '"reduce": [["skip_connect", 0, 2]], "reduce_concat": [3]}', 'reduce_concat names node 3'),
    ('{"normal": "skip_connect", "normal_concat": [2], "reduce": [["skip_connect", 0, 2]], "reduce_concat": [2]}',
     'normal cell'),
])
def test_load_json_rejects_malformed_files(content, message, tmp_path):
    path = tmp_path / 'bad.json'
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        genotypes.load_json(path)
    assert str(path) in str(err.value)


def test_load_json_of_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match='cannot read genotype file'):
        genotypes.load_json(tmp_path / 'missing.json')


def test_load_json_of_a_binary_file(tmp_path):
    path = tmp_path / 'bin.json'
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match='not valid JSON'):
        genotypes.load_json(path)


def test_saved_json_is_plain_lists(tmp_path):
    genotypes.save_json(small(), tmp_path / 'g.json')
    data = json.loads((tmp_path / 'g.json').read_text())
    assert data['reduce'][0] == list(TRIPLES[0]) and data['normal_concat'] == [2, 3]


@pytest.mark.parametrize('name', ['DARTS_V2', 'BayesNAS_0_01'])
def test_literal_pastes_back_into_genotypes(name):
    line = genotypes.to_literal(genotypes.from_name(name), name='Pasted')
    assert '\n' not in line and line.startswith('Pasted = Genotype(normal=[')
    namespace = {'Genotype': Genotype}
    exec(line, namespace)
    assert namespace['Pasted'] == genotypes.from_name(name)


def test_literal_rejects_bad_names_and_genotypes():
    with pytest.raises(ValueError, match='not a valid Python name'):
        genotypes.to_literal(genotypes.DARTS_V2, name='my cell')
    with pytest.raises(ValueError, match='not a valid Python name'):
        genotypes.to_literal(genotypes.DARTS_V2, name='class')
    with pytest.raises(ValueError, match='unknown operation'):
        genotypes.to_literal(small(reduce=[('conv_9x9', 0, 2)], reduce_concat=[2]))
