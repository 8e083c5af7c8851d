"""derive.py on hand-made gamma tables: the two rules, the dependency structure, the output files."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import derive
import genotypes
import spaces
from genotypes import CANDIDATES
from model_search import NetworkCIFAR

DARTS = spaces.get('darts')

ROOT = Path(__file__).resolve().parents[1]
EDGES = [(i, j) for j in range(2, 6) for i in range(j)]


LAST = 3          # the last iteration of the hand-made searches


def table(ops, edges=None, cell_types=('normal', 'reduce'), pruned_below=None, history=True):
    """gamma.json rows for a tied supernet: every edge and op of both cells, gamma 0 (pruned) except
    ops = {(cell_type, src, dst, op): gamma}; an edge's gamma is the largest of its ops unless
    edges = {(cell_type, src, dst): gamma} says otherwise. pruned_below marks low rows pruned.
    history: give every row gamma_at_prune and pruned_at as search.py does, pruned rows pruned in
    the first iteration (so no re-derivation revives them); False writes rows of older searches."""
    edges = edges or {}
    rows = []

    def row(key, gamma):
        pruned = gamma == 0 or (pruned_below is not None and gamma < pruned_below)
        extra = dict(gamma_at_prune=gamma, pruned_at=1 if pruned else None) if history else {}
        rows.append(dict(key=key, gamma=gamma, pruned=pruned, **extra))

    for cell_type in cell_types:
        for src, dst in EDGES:
            op_gammas = {op: ops.get((cell_type, src, dst, op), 0.0) for op in CANDIDATES}
            row(f'{cell_type}/{src}->{dst}', edges.get((cell_type, src, dst), max(op_gammas.values())))
            for op, g in op_gammas.items():
                row(f'{cell_type}/{src}->{dst}/{op}', g)
    return rows


def both(cell):
    """The same ops in the normal and the reduction cell."""
    return {(t,) + k: g for t in ('normal', 'reduce') for k, g in cell.items()}


def builds(genotype):
    net = NetworkCIFAR(4, 10, 3, False, genotype)
    return net


# ----------------------------------------------------------------------------------------------------
# The threshold rule
# ----------------------------------------------------------------------------------------------------

def test_threshold_keeps_every_op_above_it_any_number_per_edge():
    cell = {(0, 2, 'sep_conv_3x3'): 0.9, (0, 2, 'skip_connect'): 0.5, (0, 2, 'max_pool_3x3'): 0.05,
            (1, 3, 'avg_pool_3x3'): 0.3, (2, 3, 'dil_conv_5x5'): 0.2, (0, 4, 'sep_conv_5x5'): 0.7,
            (3, 5, 'skip_connect'): 0.4, (1, 5, 'max_pool_3x3'): 0.09}
    g = derive.derive_from_table(table(both(cell)), threshold=0.1, space=DARTS)
    want = sorted([('sep_conv_3x3', 0, 2), ('skip_connect', 0, 2), ('avg_pool_3x3', 1, 3),
                   ('dil_conv_5x5', 2, 3), ('sep_conv_5x5', 0, 4), ('skip_connect', 3, 5)],
                  key=lambda e: (e[2], e[1], e[0]))
    assert g.normal == want and g.reduce == want
    assert g.normal_concat == [2, 3, 4, 5]
    genotypes.validate(g)
    builds(g)
    # A lower threshold takes in the weaker ops too.
    g = derive.derive_from_table(table(both(cell)), threshold=0.01, space=DARTS)
    assert ('max_pool_3x3', 0, 2) in g.normal and ('max_pool_3x3', 1, 5) in g.normal


def test_an_edge_below_the_threshold_takes_its_ops_with_it():
    cell = {(0, 2, 'sep_conv_3x3'): 0.9, (1, 2, 'skip_connect'): 0.8, (1, 3, 'sep_conv_3x3'): 0.5}
    edges = {(t, 1, 2): 0.05 for t in ('normal', 'reduce')}        # strong op, weak edge
    g = derive.derive_from_table(table(both(cell), edges=edges), threshold=0.1, space=DARTS)
    assert g.normal == [('sep_conv_3x3', 0, 2), ('sep_conv_3x3', 1, 3)]


def test_a_dead_node_loses_its_outgoing_edges_and_leaves_the_concat():
    # Node 3 has only a weak input; its strong outgoing edges 3->4 and 3->5 must go with it.
    cell = {(0, 2, 'sep_conv_3x3'): 0.9, (1, 3, 'skip_connect'): 0.01, (3, 4, 'sep_conv_5x5'): 0.9,
            (3, 5, 'max_pool_3x3'): 0.9, (2, 5, 'avg_pool_3x3'): 0.4}
    g = derive.derive_from_table(table(both(cell)), threshold=0.1, space=DARTS)
    assert g.normal == [('sep_conv_3x3', 0, 2), ('avg_pool_3x3', 2, 5)]
    assert g.normal_concat == [2, 5]
    net = builds(g)
    assert net.cells[0].multiplier == 2
    # Every kept op lies on a path from an input to the output: its source is an input or live.
    for op, src, dst in g.normal:
        assert src in (0, 1) or src in g.normal_concat
        assert dst in g.normal_concat


def test_pruned_rows_never_survive_whatever_their_gamma():
    rows = table(both({(0, 2, 'sep_conv_3x3'): 0.9, (1, 2, 'skip_connect'): 0.8}))
    for row in rows:
        if row['key'] == 'normal/1->2/skip_connect':
            row['pruned'] = True
    g = derive.derive_from_table(rows, threshold=0.1, space=DARTS)
    assert g.normal == [('sep_conv_3x3', 0, 2)] and len(g.reduce) == 2


def test_an_empty_cell_is_an_error_not_a_genotype():
    rows = table({('normal', 0, 2, 'sep_conv_3x3'): 0.9, ('reduce', 0, 2, 'sep_conv_3x3'): 0.05})
    with pytest.raises(derive.utils.UserError, match='reduce cell is empty under threshold 0.1'):
        derive.derive_from_table(rows, threshold=0.1, space=DARTS)


# ----------------------------------------------------------------------------------------------------
# The top-k rule
# ----------------------------------------------------------------------------------------------------

def test_topk_2_gives_darts_pairs_with_the_strongest_op_per_edge():
    cell = {}
    for j in range(2, 6):
        for i in range(j):
            for k, op in enumerate(CANDIDATES):
                cell[(i, j, op)] = 0.01 * (1 + ((i * 7 + j * 3 + k * 5) % 11))
    # Make sure node 4's two strongest inputs are 3 (sep_conv_5x5) and 1 (skip_connect).
    cell[(3, 4, 'sep_conv_5x5')] = 0.99
    cell[(1, 4, 'skip_connect')] = 0.98
    g = derive.derive_from_table(table(both(cell)), topk=2, space=DARTS)
    assert genotypes.cell_form(g.normal) == 'pairs' and len(g.normal) == 8
    assert g.normal[4:6] == [('sep_conv_5x5', 3), ('skip_connect', 1)]        # strongest first
    assert g.normal_concat == [2, 3, 4, 5]
    for n, (op, src) in enumerate(g.normal):
        dst = 2 + n // 2
        assert op == max(CANDIDATES, key=lambda o: cell[(src, dst, o)])
    for dst in range(2, 6):
        strength = {i: max(cell[(i, dst, o)] for o in CANDIDATES) for i in range(dst)}
        top2 = sorted(strength, key=lambda i: -strength[i])[:2]
        assert sorted(src for n, (_, src) in enumerate(g.normal) if 2 + n // 2 == dst) == sorted(top2)
    genotypes.validate(g)
    builds(g)


def test_topk_with_too_few_live_edges_falls_back_to_triples():
    cell = {(0, 2, 'sep_conv_3x3'): 0.9, (1, 2, 'skip_connect'): 0.8, (2, 3, 'max_pool_3x3'): 0.5}
    g = derive.derive_from_table(table(both(cell)), topk=2, space=DARTS)
    assert genotypes.cell_form(g.normal) == 'triples'
    assert g.normal == [('sep_conv_3x3', 0, 2), ('skip_connect', 1, 2), ('max_pool_3x3', 2, 3)]
    assert g.normal_concat == [2, 3]


# ----------------------------------------------------------------------------------------------------
# Tables of untied searches, bad tables
# ----------------------------------------------------------------------------------------------------

def test_untied_rows_are_averaged_over_cells_and_pruned_only_when_pruned_everywhere():
    rows = []
    for cell, gamma in (('cell0', 0.3), ('cell2', 0.0)):
        for row in table(both({(0, 2, 'sep_conv_3x3'): gamma, (1, 3, 'skip_connect'): 0.5}),
                         cell_types=('normal',)):
            rows.append(dict(row, key=row['key'].replace('normal', cell), cell_type='normal'))
    rows += table(both({(0, 2, 'avg_pool_3x3'): 0.5}), cell_types=('reduce',))
    tables = derive.cell_tables(rows, DARTS)
    assert tables['normal'][(0, 2)]['ops']['sep_conv_3x3'] == dict(gamma=0.15, pruned=False)
    g = derive.derive_from_table(rows, threshold=0.1, space=DARTS)
    assert g.normal == [('sep_conv_3x3', 0, 2), ('skip_connect', 1, 3)]


@pytest.mark.parametrize('rows, message', [
    ([dict(key='normal/0->2', gamma=float('nan'), pruned=False)], 'gamma is nan'),
    ([dict(key='normal/0->2/conv_9x9', gamma=0.5, pruned=False)], "unknown operation 'conv_9x9'"),
    ([dict(key='normal/zero', gamma=0.5, pruned=False)], 'no "from->to" edge'),
    ([dict(key='normal/0->2', pruned=False)], '\'normal/0->2\': "gamma" is missing'),
    ([dict(key='normal/0->2', gamma='abc', pruned=False)], "'normal/0->2': gamma 'abc' is not a number"),
    ([dict(key='normal/0->2', gamma=-0.5, pruned=False)], "'normal/0->2': gamma is -0.5, not a finite"),
    ([dict(key='normal/0->2', gamma=float('inf'), pruned=False)], 'gamma is inf'),
    ([dict(key='normal/0->2', gamma=True, pruned=False)], 'gamma True is not a number'),
    ([dict(key='normal/0->2', gamma=0.5)], '\'normal/0->2\': "pruned" is missing'),
    ([dict(key='normal/0->2', gamma=0.5, pruned='no')], "pruned 'no' is not true or false"),
    ([dict(gamma=0.5, pruned=False)], 'row 0 is not an object with a "key"'),
    ([['normal/0->2', 0.5, False]], 'row 0 is not an object'),
    (table({}, cell_types=('normal',)), 'no rows for the reduce cell'),
])
def test_malformed_tables_are_rejected(rows, message):
    with pytest.raises(ValueError, match=message):
        derive.derive_from_table(rows, threshold=0.1, space=DARTS)


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------

def write_run(tmp_path, rows, threshold=0.1, iteration=LAST):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'gamma.json').write_text(json.dumps(dict(threshold=threshold, iteration=iteration, groups=rows)))
    return run


def test_main_writes_genotype_files_and_pictures(tmp_path, capsys):
    cell = {(0, 2, 'sep_conv_3x3'): 0.9, (1, 2, 'skip_connect'): 0.5, (2, 3, 'max_pool_3x3'): 0.4,
            (0, 4, 'dil_conv_3x3'): 0.6, (4, 5, 'avg_pool_3x3'): 0.3, (1, 5, 'sep_conv_5x5'): 0.05}
    run = write_run(tmp_path, table(both(cell)), threshold=0.1)
    g = derive.main([str(run)])
    printed = capsys.readouterr().out.strip()
    assert printed.startswith('Searched = Genotype(')
    namespace = {'Genotype': genotypes.Genotype}
    exec(printed, namespace)                                  # the literal pastes into genotypes.py
    assert namespace['Searched'] == g
    assert genotypes.load_json(run / 'genotype.json') == g
    assert (run / 'genotype.py').read_text().splitlines()[1] == printed.splitlines()[0]
    for name in ('cell_normal.png', 'cell_reduce.png'):
        assert (run / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert ('sep_conv_5x5', 1, 5) not in g.normal            # 0.05 < the search's threshold 0.1
    # Another threshold, another output folder; the run's own files stay.
    g2 = derive.main([str(run), '--threshold', '0.01', '--out', str(tmp_path / 'low')])
    assert ('sep_conv_5x5', 1, 5) in g2.normal
    assert genotypes.load_json(run / 'genotype.json') == g
    g3 = derive.main([str(run), '--topk', '1', '--out', str(tmp_path / 'top1')])
    assert all(sum(1 for e in genotypes.cell_edges(g3.normal) if e[2] == n) == 1 for n in g3.normal_concat)


def test_plot_gamma_draws_a_heat_map(tmp_path):
    rows = table(both({(0, 2, 'sep_conv_3x3'): 0.9, (1, 3, 'skip_connect'): 0.01}))
    derive.plot_gamma(rows, tmp_path / 'gamma.png', threshold=0.1, space=DARTS)
    assert (tmp_path / 'gamma.png').stat().st_size > 10_000


@pytest.mark.parametrize('setup, message', [
    (lambda p: None, 'is not a directory'),
    (lambda p: p.mkdir(), 'gamma.json is missing'),
    (lambda p: (p.mkdir(), (p / 'gamma.json').write_text('{not json')), 'not JSON'),
    (lambda p: (p.mkdir(), (p / 'gamma.json').write_text('[1, 2]')), 'no "groups" list'),
])
def test_command_line_errors_are_one_line(tmp_path, setup, message):
    run = tmp_path / 'run'
    setup(run)
    result = subprocess.run([sys.executable, str(ROOT / 'derive.py'), str(run)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr


def run_cli(*args):
    """`python derive.py ARGS` from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / 'derive.py'), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def assert_one_line_error(result, message):
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr


@pytest.mark.parametrize('flags, message', [
    (['--top', '2'], 'unrecognized arguments: --top 2'),             # no abbreviation of --topk
    (['--thr', '0.2'], 'unrecognized arguments: --thr 0.2'),
    (['--threshold', '0.1', '--topk', '2'], 'not allowed with argument'),
    (['--topk', 'two'], "invalid int value: 'two'"),
    (['--threshold', 'abc'], "invalid float value: 'abc'"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path, flags, message):
    run = write_run(tmp_path, table(both({(0, 2, 'sep_conv_3x3'): 0.9})))
    result = run_cli(run, *flags)
    assert_one_line_error(result, message)
    assert '(see python derive.py --help)' in result.stderr
    assert not (run / 'genotype.json').exists()


def test_a_missing_run_dir_argument_is_one_line():
    assert_one_line_error(run_cli(), 'the following arguments are required: run_dir')


@pytest.mark.parametrize('gamma, message', [
    ('abc', "gamma 'abc' is not a number"),
    (-0.25, 'gamma is -0.25'),
    (None, 'gamma None is not a number'),
    ('missing', '"gamma" is missing'),
])
def test_a_bad_gamma_is_one_line_naming_the_row_and_the_value(tmp_path, gamma, message):
    rows = table(both({(0, 2, 'sep_conv_3x3'): 0.9}))
    bad = next(r for r in rows if r['key'] == 'normal/0->2/sep_conv_3x3')
    bad['members'] = [['cells.0.switch', 3]] * 50          # long fields that must not reach the user
    if gamma == 'missing':
        del bad['gamma']
    else:
        bad['gamma'] = gamma
    result = run_cli(write_run(tmp_path, rows))
    assert_one_line_error(result, f"gamma table row 'normal/0->2/sep_conv_3x3': {message}")
    assert 'members' not in result.stderr and 'cells.0.switch' not in result.stderr
    assert gamma == 'missing' or 'missing' not in result.stderr


OUTPUTS = ('genotype.json', 'genotype.py', 'cell_normal.png', 'cell_reduce.png')


def test_every_output_is_written_atomically_and_the_json_is_save_jsons(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path, table(both({(0, 2, 'sep_conv_3x3'): 0.9, (1, 3, 'skip_connect'): 0.5})))
    through = []
    write_atomic = derive.utils.write_atomic
    monkeypatch.setattr(derive.utils, 'write_atomic', lambda path, write: (through.append(Path(path).name),
                                                                          write_atomic(path, write)))
    g = derive.main([str(run)])
    assert sorted(through) == sorted(OUTPUTS)
    assert not list(run.glob('.*.tmp'))
    genotypes.save_json(g, tmp_path / 'reference.json')
    assert (run / 'genotype.json').read_text() == (tmp_path / 'reference.json').read_text()


def test_out_naming_a_file_is_one_line(tmp_path):
    run = write_run(tmp_path, table(both({(0, 2, 'sep_conv_3x3'): 0.9})))
    (tmp_path / 'taken').write_text('keep me\n')
    result = run_cli(run, '--out', tmp_path / 'taken')
    assert_one_line_error(result, f'output directory {tmp_path / "taken"} exists and is not a directory')
    assert (tmp_path / 'taken').read_text() == 'keep me\n'


@pytest.mark.parametrize('name', OUTPUTS)
def test_a_write_error_is_one_line_naming_the_file(tmp_path, name):
    # A folder where an output should go makes the final rename fail, even for root.
    run = write_run(tmp_path, table(both({(0, 2, 'sep_conv_3x3'): 0.9})))
    (run / name).mkdir()
    result = run_cli(run)
    assert_one_line_error(result, f'cannot write {run / name}: ')
    assert not list(run.glob('.*.tmp'))


def own_files(run):
    return {name: (run / name).read_bytes() for name in ('genotype.json', 'genotype.py')}


@pytest.mark.parametrize('flags, folder', [
    (['--threshold', '0.05'], 'derived-threshold-0.05'),
    (['--threshold', '0.2'], 'derived-threshold-0.2'),
    (['--threshold', '1e-05'], 'derived-threshold-1e-05'),
    (['--topk', '2'], 'derived-topk-2'),
    (['--topk', '1'], 'derived-topk-1'),
])
def test_another_rule_goes_to_its_own_folder_and_leaves_the_searchs_files(tmp_path, capsys, flags, folder):
    cell = {(0, 2, 'sep_conv_3x3'): 0.9, (1, 2, 'skip_connect'): 0.5, (2, 3, 'max_pool_3x3'): 0.4,
            (0, 3, 'avg_pool_3x3'): 0.3, (1, 4, 'dil_conv_3x3'): 0.6, (3, 4, 'sep_conv_5x5'): 0.3,
            (4, 5, 'avg_pool_3x3'): 0.3, (1, 5, 'sep_conv_5x5'): 0.08}
    run = write_run(tmp_path, table(both(cell)), threshold=0.1)
    derive.main([str(run)])
    before = own_files(run)
    capsys.readouterr()
    g = derive.main([str(run)] + flags)
    assert capsys.readouterr().out.splitlines()[-1] == f'# wrote {", ".join(OUTPUTS)} to {run / folder}'
    assert own_files(run) == before
    assert genotypes.load_json(run / folder / 'genotype.json') == g
    for name in OUTPUTS:
        assert (run / folder / name).stat().st_size > 0


def test_the_searchs_own_rule_rewrites_the_runs_own_files_with_the_same_content(tmp_path, capsys):
    run = write_run(tmp_path, table(both({(0, 2, 'sep_conv_3x3'): 0.9, (1, 3, 'skip_connect'): 0.5})),
                    threshold=0.1)
    derive.main([str(run)])
    first = own_files(run)
    for flags in ([], ['--threshold', '0.1']):               # the search's threshold, given or not
        capsys.readouterr()
        derive.main([str(run)] + flags)
        assert capsys.readouterr().out.splitlines()[-1] == f'# wrote {", ".join(OUTPUTS)} to {run}'
        assert own_files(run) == first
    assert [p.name for p in run.iterdir() if p.is_dir()] == []


def test_out_overrides_the_default_folder(tmp_path, capsys):
    run = write_run(tmp_path, table(both({(0, 2, 'sep_conv_3x3'): 0.9})))
    derive.main([str(run), '--topk', '1', '--out', str(tmp_path / 'mine')])
    assert capsys.readouterr().out.splitlines()[-1].endswith(f' to {tmp_path / "mine"}')
    assert (tmp_path / 'mine' / 'genotype.json').is_file() and not (run / 'derived-topk-1').exists()


def test_topk_2_says_which_nodes_keep_fewer_than_two_inputs(tmp_path, capsys):
    cell = {(0, 2, 'sep_conv_3x3'): 0.9, (1, 2, 'skip_connect'): 0.8, (2, 3, 'max_pool_3x3'): 0.5}
    rows = table({**both(cell), ('reduce', 1, 4, 'avg_pool_3x3'): 0.3})
    notes = []
    derive.derive_from_table(rows, topk=2, notes=notes, space=DARTS)
    assert notes == [
        '--topk 2 wrote the normal cell as (op, from, to) triples, not DARTS (op, input) pairs: '
        'node 3 has 1 input, node 4 has no inputs, node 5 has no inputs',
        '--topk 2 wrote the reduce cell as (op, from, to) triples, not DARTS (op, input) pairs: '
        'node 3 has 1 input, node 4 has 1 input, node 5 has no inputs']
    derive.main([str(write_run(tmp_path, rows)), '--topk', '2'])
    out = capsys.readouterr().out.splitlines()
    assert out[1:3] == [f'# note: {note}' for note in notes]
    assert len(out) == 4


def test_topk_2_with_two_inputs_everywhere_writes_pairs_and_no_note(tmp_path, capsys):
    cell = {(i, j, 'sep_conv_3x3'): 0.1 * (i + 1) for j in range(2, 6) for i in range(j)}
    notes = []
    g = derive.derive_from_table(table(both(cell)), topk=2, notes=notes, space=DARTS)
    assert notes == [] and genotypes.cell_form(g.normal) == 'pairs'
    derive.main([str(write_run(tmp_path, table(both(cell)))), '--topk', '2'])
    assert 'note' not in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# Re-derivation at another threshold, both ways
# ----------------------------------------------------------------------------------------------------

LIVE = {(0, 2, 'sep_conv_3x3'): 0.9, (1, 2, 'skip_connect'): 0.3, (0, 4, 'dil_conv_3x3'): 0.5}
# (src, dst, op or None for the edge switch): (gamma at pruning, iteration pruned in)
PRUNED = {
    (0, 2, 'max_pool_3x3'): (0.08, LAST),
    (1, 2, 'avg_pool_3x3'): (0.02, LAST),                   # pruned last, but below 0.05
    (1, 3, None): (0.07, LAST), (1, 3, 'sep_conv_5x5'): (0.07, LAST),        # node 3's only input
    (3, 5, None): (0.6, LAST), (3, 5, 'skip_connect'): (0.6, LAST),          # died with node 3
    (0, 4, 'avg_pool_3x3'): (0.06, LAST),
    (0, 5, None): (0.09, LAST - 1), (0, 5, 'sep_conv_3x3'): (0.09, LAST - 1),  # pruned earlier
    (1, 4, None): (0.5, LAST - 1), (1, 4, 'max_pool_3x3'): (0.5, LAST - 1),
    (2, 4, None): (0.09, LAST - 1), (2, 4, 'dil_conv_5x5'): (0.7, LAST),      # its edge went earlier
}


def searched_rows():
    """A search's table at threshold 0.1: LIVE alive, PRUNED pruned (gamma 0) with their history."""
    rows = table(both(LIVE))
    for row in rows:
        parts = row['key'].split('/')
        src, dst = map(int, parts[1].split('->'))
        at = PRUNED.get((src, dst, parts[2] if len(parts) > 2 else None))
        if at is not None:
            row.update(gamma=0.0, pruned=True, gamma_at_prune=at[0], pruned_at=at[1])
    return rows


def search_doc(rows):
    return dict(threshold=0.1, iteration=LAST, groups=rows)


def test_a_higher_threshold_keeps_fewer_ops():
    own = derive.derive(search_doc(searched_rows()))
    higher = derive.derive(search_doc(searched_rows()), threshold=0.4)
    assert own.normal == [('sep_conv_3x3', 0, 2), ('skip_connect', 1, 2), ('dil_conv_3x3', 0, 4)]
    assert higher.normal == [('sep_conv_3x3', 0, 2), ('dil_conv_3x3', 0, 4)]
    assert higher.normal_concat == [2, 4]


def test_a_lower_threshold_revives_exactly_the_groups_pruned_in_the_last_iteration():
    rows = searched_rows()
    own = derive.derive(search_doc(rows))
    lower = derive.derive(search_doc(rows), threshold=0.05)
    revived = set(lower.normal) - set(own.normal)
    # Node 3 comes back with its input, and takes its outgoing edge 3->5 back with it; 1->2's
    # avg_pool (0.02 < 0.05), 2->4's op (its edge pruned earlier) and 0->5, 1->4 (pruned earlier,
    # whatever their gamma) stay out.
    assert revived == {('max_pool_3x3', 0, 2), ('sep_conv_5x5', 1, 3), ('skip_connect', 3, 5),
                       ('avg_pool_3x3', 0, 4)}
    assert set(own.normal) <= set(lower.normal)
    assert lower.normal_concat == [2, 3, 4, 5] and lower.reduce == lower.normal
    for op, src, dst in revived:
        gamma_at_prune, pruned_at = PRUNED[(src, dst, op)]
        assert pruned_at == LAST and gamma_at_prune >= 0.05
    genotypes.validate(lower)
    # Just below a revived op's gamma at pruning it is back, just above it is not.
    assert ('avg_pool_3x3', 0, 4) in derive.derive(search_doc(rows), threshold=0.06).normal
    assert ('avg_pool_3x3', 0, 4) not in derive.derive(search_doc(rows), threshold=0.061).normal


def test_a_lower_threshold_on_the_command_line_writes_its_own_folder(tmp_path, capsys):
    run = write_run(tmp_path, searched_rows())
    g = derive.main([str(run), '--threshold', '0.05'])
    assert ('skip_connect', 3, 5) in g.normal
    assert genotypes.load_json(run / 'derived-threshold-0.05' / 'genotype.json') == g


def test_a_lower_threshold_is_refused_for_a_table_without_gammas_of_pruned_groups(tmp_path):
    rows = table(both(LIVE), history=False)
    run = write_run(tmp_path, rows)
    result = run_cli(run, '--threshold', '0.05')
    assert_one_line_error(result, "below the search's own 0.1 cannot be derived from this gamma.json: "
                                  "it does not record the gammas of pruned groups")
    assert not (run / 'derived-threshold-0.05').exists()
    # At or above the search's threshold the same table still derives.
    assert run_cli(run, '--threshold', '0.1').returncode == 0
    assert run_cli(run, '--threshold', '0.4').returncode == 0


@pytest.mark.parametrize('change, message', [
    (lambda doc: doc.update(threshold='abc'), "gamma.json: threshold 'abc' is not a number >= 0"),
    (lambda doc: doc.update(iteration=0), 'gamma.json: iteration 0 is not an iteration number'),
    (lambda doc: doc['groups'][-1].update(pruned_at='last'),
     "row 'reduce/4->5/dil_conv_5x5': pruned_at 'last' is not an iteration number"),
    (lambda doc: doc['groups'][-1].update(gamma_at_prune=float('nan')),
     "row 'reduce/4->5/dil_conv_5x5': gamma_at_prune is nan"),
])
def test_a_bad_history_is_one_line(tmp_path, change, message):
    doc = search_doc(searched_rows())
    change(doc)
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'gamma.json').write_text(json.dumps(doc))
    result = run_cli(tmp_path / 'run', '--threshold', '0.05')
    assert_one_line_error(result, message)


@pytest.mark.parametrize('flags, message', [
    (['--threshold', '-1'], 'threshold must be >= 0, got -1.0'),
    (['--threshold', 'nan'], 'threshold must be >= 0, got nan'),
    (['--topk', '0'], '--topk must be at least 1, got 0'),
])
def test_an_impossible_rule_is_one_line(tmp_path, flags, message):
    result = run_cli(write_run(tmp_path, table(both({(0, 2, 'sep_conv_3x3'): 0.9}))), *flags)
    assert_one_line_error(result, message)
