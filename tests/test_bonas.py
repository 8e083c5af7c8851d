"""Sample-based search in tabular mode: BONAS's encodings, regression and acquisition, the baselines,
and tabular.py / compare.py end to end (runs, exact resume, one-line errors)."""
import itertools
import json
import math
import random
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmark
import bonas
import compare
import genotypes
import rea
import tabular
import utils

SHARED_TABLE = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'nb201' / 'nb201_cifar100_imagenet16.csv'
ROOT = Path(__file__).resolve().parents[1]


def synthetic_value(cell):
    """A made-up accuracy that a surrogate can learn: convolutions help, plus a fixed per-cell jitter."""
    ops = [op for op, _, _ in genotypes.nb201_edges(cell)]
    jitter = zlib.crc32(cell.encode()) % 1000 / 1000
    return 30 + 6 * ops.count('nor_conv_3x3') + 3 * ops.count('nor_conv_1x1') + ops.count('skip_connect') + jitter


def write_table(path, cells):
    lines = ['arch,cifar100_test_acc,imagenet16_120_test_acc']
    lines += [f'{c},{synthetic_value(c):.4f},{synthetic_value(c) / 2:.4f}' for c in cells]
    path.write_text('\n'.join(lines) + '\n')
    return path


@pytest.fixture(scope='module')
def table(tmp_path_factory):
    """A CSV with every NAS-Bench-201 cell and synthetic accuracies."""
    return write_table(tmp_path_factory.mktemp('table') / 'table.csv', tabular.NB201().cells())


def fails_in_one_line(argv, capsys, entry=tabular.main):
    """The stderr line utils.cli gives for entry(argv), after checking it exits 2 without a traceback."""
    with pytest.raises(SystemExit) as e:
        utils.cli(lambda: entry(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count('\n') == 1 and err.startswith('error: ') and 'Traceback' not in err
    return err


def history_of(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / 'history.jsonl').read_text().splitlines()]


TINY_BONAS = ['--k', '4', '--warm_start', '4', '--gcn_epochs', '3']


# ----------------------------------------------------------------------------------------------------
# Encodings
# ----------------------------------------------------------------------------------------------------

def test_every_nb201_cell_round_trips_through_its_graph():
    cells = tabular.NB201().cells()
    assert len(cells) == len(set(cells)) == 5 ** 6
    for cell in cells:
        assert bonas.decode_nb201(bonas.encode_nb201(cell)) == cell


def test_nb201_graph_wires_the_ops_as_the_cell_does():
    adj, ops = bonas.encode_nb201(genotypes.NB201_EXAMPLE)
    # input -> the ops on edges 0->1, 0->2, 0->3; the ops on edges into node 3 -> output.
    assert [int(j) for j in np.flatnonzero(adj[0])] == [1, 2, 4]
    assert [int(i) for i in np.flatnonzero(adj[:, 7])] == [4, 5, 6]
    # The op on 1->2 (node 3) reads the op on 0->1 (node 1) and feeds the op on 2->3 (node 6).
    assert np.flatnonzero(adj[:, 3]).tolist() == [1] and np.flatnonzero(adj[3]).tolist() == [6]
    assert ops[1:-1] == [op for op, _, _ in genotypes.nb201_edges(genotypes.NB201_EXAMPLE)]
    broken = bonas.Graph(adj.copy(), ops)
    broken.adj[0, 3] = 1
    with pytest.raises(ValueError):
        bonas.decode_nb201(broken)


def random_darts_genotype(rng):
    def cell():
        return [(rng.choice(genotypes.PRIMITIVES), rng.randrange(2 + i // 2)) for i in range(8)]
    while True:
        g = genotypes.Genotype(cell(), [2, 3, 4, 5], cell(), [2, 3, 4, 5])
        try:
            return genotypes.canonical(g)
        except ValueError:      # a node that reaches nothing: draw again
            continue


@pytest.mark.parametrize('genotype', [genotypes.DARTS_V1, genotypes.DARTS_V2]
                         + [random_darts_genotype(random.Random(s)) for s in range(20)])
def test_darts_genotypes_round_trip_through_their_graphs(genotype):
    graph = bonas.encode_darts(genotype)
    assert len(graph.ops) == 2 * bonas.DARTS_CELL_NODES
    assert bonas.decode_darts(graph) == genotypes.canonical(genotype)


def test_darts_graph_tells_the_normal_cell_from_the_reduction_cell():
    g = genotypes.DARTS_V2
    swapped = genotypes.Genotype(g.reduce, g.reduce_concat, g.normal, g.normal_concat)
    x, adj = bonas.tensors([bonas.encode_darts(g), bonas.encode_darts(swapped)], bonas.DARTS_LABELS)
    torch.manual_seed(0)
    gcn = bonas.GCN(x.shape[-1]).eval()
    out = gcn.embed(x, adj)
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError):
        bonas.encode_darts(genotypes.BayesNAS)      # edge triples, not eight pairs


def test_tensors_add_a_global_node_that_every_node_feeds():
    x, adj = bonas.tensors([bonas.encode_nb201(genotypes.NB201_EXAMPLE)], bonas.NB201_LABELS)
    assert x.shape == (1, 9, len(bonas.NB201_LABELS) + 1) and (x.sum(-1) == 1).all()
    assert (adj[0, -1] == 1).all() and (adj[0].diagonal() == 1).all()
    # Row i sums over the nodes that feed i: the output (node 7) reads the ops of edges 0->3, 1->3, 2->3.
    assert adj[0, 7, :8].nonzero().flatten().tolist() == [4, 5, 6, 7]


# ----------------------------------------------------------------------------------------------------
# Bayesian linear regression and the sigmoid's moments
# ----------------------------------------------------------------------------------------------------

def toy_regression(n=200, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n, 3))
    t = phi @ np.array([1.0, -2.0, 0.5]) + noise * rng.normal(size=n)
    return phi, t


def test_posterior_and_predictive_equal_their_closed_forms():
    phi, t = toy_regression(n=30)
    alpha, beta = 2.0, 50.0
    mean, cov = bonas.posterior(phi, t, alpha, beta)
    # Ridge regression with penalty alpha / beta gives the same mean.
    ridge = np.linalg.solve(phi.T @ phi + alpha / beta * np.eye(3), phi.T @ t)
    np.testing.assert_allclose(mean, ridge, rtol=1e-10)
    np.testing.assert_allclose(np.linalg.inv(cov), alpha * np.eye(3) + beta * phi.T @ phi, rtol=1e-10)
    post = bonas.Posterior(mean, cov, alpha, beta, 0, True)
    x = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
    mu, var = bonas.predictive(post, x)
    np.testing.assert_allclose(mu, x @ ridge, rtol=1e-10)
    np.testing.assert_allclose(var, [1 / beta + v @ cov @ v for v in x], rtol=1e-10)


def test_evidence_iteration_converges_to_the_maximum_of_the_evidence():
    phi, t = toy_regression(noise=0.1)
    post = bonas.evidence_fit(phi, t)
    assert post.converged and post.iterations < 100
    assert 1 / math.sqrt(post.beta) == pytest.approx(0.1, rel=0.15)     # the noise it was made with
    best = bonas.log_evidence(phi, t, post.alpha, post.beta)
    for fa, fb in itertools.product((0.8, 1, 1.25), repeat=2):
        if (fa, fb) != (1, 1):
            assert bonas.log_evidence(phi, t, post.alpha * fa, post.beta * fb) < best
    # At the fixed point, gamma = alpha |m|^2 = N - beta |t - Phi m|^2.
    eig = np.linalg.eigvalsh(phi.T @ phi) * post.beta
    gamma = np.sum(eig / (post.alpha + eig))
    assert post.alpha * post.mean @ post.mean == pytest.approx(gamma, rel=1e-4)
    assert len(t) - post.beta * np.sum((t - phi @ post.mean) ** 2) == pytest.approx(gamma, rel=1e-4)


def test_evidence_fit_survives_more_features_than_points():
    rng = np.random.default_rng(1)
    post = bonas.evidence_fit(rng.random((5, 65)), rng.normal(size=5))
    assert np.isfinite(post.mean).all() and np.isfinite(post.alpha) and np.isfinite(post.beta)


def test_owens_t_matches_its_known_values():
    # T(0, a) = atan(a) / (2 pi); T(h, 1) = Phi(h) (1 - Phi(h)) / 2.
    a = np.linspace(0, 1, 11)
    np.testing.assert_allclose(bonas.owens_t(np.zeros(11), a), np.arctan(a) / (2 * math.pi), atol=1e-12)
    h = np.linspace(-3, 3, 13)
    p = 0.5 * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    np.testing.assert_allclose(bonas.owens_t(h, np.ones(13)), p * (1 - p) / 2, atol=1e-12)


def test_sigmoid_moments_are_within_two_hundredths_of_monte_carlo():
    rng = np.random.default_rng(0)
    for mu in np.linspace(-4, 4, 9):
        for s in (0.01, 0.1, 0.5, 1, 2, 4):
            z = 1 / (1 + np.exp(-rng.normal(mu, s, 100000)))
            mean, var = bonas.sigmoid_moments(mu, s * s)
            assert abs(mean - z.mean()) < 0.02 and abs(math.sqrt(var) - z.std()) < 0.02, (mu, s)


def test_ucb_ranks_by_mean_plus_kappa_deviations_and_skips_seen_cells():
    mean = np.array([0.9, 0.5, 0.6, 0.7, 0.55])
    std = np.array([0.0, 0.5, 0.0, 0.1, 0.2])
    seen = np.array([True, False, False, False, False])
    assert bonas.ucb_top(mean, std, 0.5, seen, 2) == [1, 3]       # 0.75, 0.75 (tie: lower index), ...
    assert bonas.ucb_top(mean, std, 0.0, seen, 2) == [3, 2]
    assert bonas.ucb_top(mean, std, 0.5, np.array([True, True, True, False, True]), 3) == [3]


def test_bonas_never_queries_a_cell_twice_and_records_its_predictions(table):
    utils.set_seed(0)
    method = bonas.BONAS(tabular.NB201(), 6, 4, 0.5, 3)
    history = tabular.search(method, tabular.Oracle(table), 14)
    cells = [r['cell'] for r in history]
    assert len(cells) == len(set(cells)) == 14
    assert all(r['mean'] is None for r in history[:4]) and all(r['mean'] is not None for r in history[4:])
    # The last iteration gets what is left of the budget.
    assert [r['iteration'] for r in history] == [0] * 4 + [1] * 6 + [2] * 4
    assert all(0 < r['mean'] < 100 and r['std'] > 0 for r in history[4:])


# ----------------------------------------------------------------------------------------------------
# Regularised evolution and random search
# ----------------------------------------------------------------------------------------------------

def differ_in_one_edge(a, b):
    return sum(x != y for x, y in zip(genotypes.nb201_edges(a), genotypes.nb201_edges(b))) == 1


def test_rea_draws_its_tournament_from_the_last_population_cells(monkeypatch):
    space = tabular.NB201()
    random.seed(0)
    cells = space.random_unseen(set(), 12)
    # The oldest cell is by far the best: once it has left the population, no tournament sees it.
    history = [dict(cell=c, value=90.0 if i == 0 else float(i)) for i, c in enumerate(cells)]
    method = rea.REA(space, population=5, tournament=3)
    drawn = []
    real_sample = random.sample

    def spy(population, k):
        members = real_sample(population, k)
        drawn.append((list(population), k, members))
        return members

    monkeypatch.setattr(rea.random, 'sample', spy)
    for _ in range(20):
        child = method.propose(history, 1)[0].cell
        population, k, members = drawn[-1]
        assert k == 3 and population == history[-5:]
        assert differ_in_one_edge(child, max(members, key=lambda r: r['value'])['cell'])
    # With the tournament as large as the population, the parent is the population's best.
    method = rea.REA(space, population=5, tournament=5)
    for _ in range(10):
        assert differ_in_one_edge(method.propose(history, 1)[0].cell, cells[-1])


def test_rea_starts_with_a_random_population_and_then_mutates(table):
    utils.set_seed(1)
    history = tabular.search(rea.REA(tabular.NB201(), 8, 2), tabular.Oracle(table), 40)
    for i in range(8, 40):
        window = [r['cell'] for r in history[i - 8:i]]
        assert any(differ_in_one_edge(history[i]['cell'], c) for c in window)
    assert len({r['cell'] for r in history}) == 40


# ----------------------------------------------------------------------------------------------------
# tabular.py end to end
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('method, flags', [('bonas', TINY_BONAS), ('random_search', []),
                                           ('rea', ['--population', '5', '--tournament', '2'])])
def test_a_tiny_run_ends_with_a_valid_cell(method, flags, table, tmp_path, capsys):
    out = tabular.main(['--method', method, '--oracle', str(table), '--queries', '14',
                        '--save', str(tmp_path / 'run'), *flags])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    genotypes.nb201_edges(last)
    history = history_of(tmp_path / 'run')
    assert len(history) == 14 and last == out['best'] == max(history, key=lambda r: r['value'])['cell']
    assert all(r['value'] == pytest.approx(synthetic_value(r['cell']), abs=1e-4) for r in history)
    assert genotypes.load_file(tmp_path / 'run' / 'genotype.json') == ('nb201', last)
    assert (tmp_path / 'run' / 'best.png').stat().st_size > 0


def test_a_run_on_the_shared_table_reads_its_values(tmp_path, capsys):
    if not SHARED_TABLE.is_file():
        pytest.skip(f'the shared NAS-Bench-201 table is not at {SHARED_TABLE} (../shared is absent)')
    out = tabular.main(['--oracle', str(SHARED_TABLE), '--oracle_metric', 'imagenet16_120_test_acc',
                        '--queries', '12', '--save', str(tmp_path / 'run'), *TINY_BONAS])
    assert capsys.readouterr().out.strip().splitlines()[-1] == out['best']
    _, rows, _ = benchmark.read_table(SHARED_TABLE)
    assert len(rows) == 5 ** 6
    for r in history_of(tmp_path / 'run'):
        assert r['value'] == rows[r['cell']]['imagenet16_120_test_acc']


@pytest.mark.parametrize('method, flags', [('bonas', TINY_BONAS), ('rea', ['--population', '4'])])
def test_a_resumed_run_ends_with_the_history_of_an_uninterrupted_one(method, flags, table, tmp_path, monkeypatch):
    argv = ['--method', method, '--oracle', str(table), '--queries', '12', *flags]
    tabular.main(argv + ['--save', str(tmp_path / 'whole')])
    calls = []
    real = tabular.Oracle.__call__

    def interrupted(self, cells):
        calls.append(cells)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, cells)

    monkeypatch.setattr(tabular.Oracle, '__call__', interrupted)
    with pytest.raises(KeyboardInterrupt):
        tabular.main(argv + ['--save', str(tmp_path / 'cut')])
    monkeypatch.setattr(tabular.Oracle, '__call__', real)
    assert len(history_of(tmp_path / 'cut')) < 12
    # Different global random states when it resumes: the checkpoint's must take over.
    utils.set_seed(12345)
    tabular.main(['--save', str(tmp_path / 'cut'), '--resume'])
    assert history_of(tmp_path / 'cut') == history_of(tmp_path / 'whole')


def test_a_resumed_run_keeps_its_configuration(table, tmp_path, capsys):
    tabular.main(['--method', 'random_search', '--oracle', str(table), '--queries', '3', '--save', str(tmp_path / 'r')])
    err = fails_in_one_line(['--save', str(tmp_path / 'r'), '--resume', '--queries', '5'], capsys)
    assert '--queries 5 differs' in err
    err = fails_in_one_line(['--method', 'random_search', '--oracle', str(table), '--save', str(tmp_path / 'r')], capsys)
    assert 'already holds a run' in err


def test_a_table_without_the_cell_asked_for_is_one_line(tmp_path, capsys):
    small = write_table(tmp_path / 'small.csv', tabular.NB201().cells()[:3])
    err = fails_in_one_line(['--method', 'random_search', '--oracle', str(small), '--save', str(tmp_path / 'r')], capsys)
    assert f'is not in oracle table {small} (3 cells)' in err


@pytest.mark.parametrize('flags, words', [
    (['--method', 'bogus'], 'invalid choice'),
    (['--queries', '0'], '--queries must be'),
    (['--queries', str(5 ** 6 + 1)], '--queries must be'),
    (['--method', 'rea', '--k', '3'], '--k is not a flag of --method rea'),
    (['--method', 'bonas', '--population', '3'], '--population is not a flag of --method bonas'),
    (['--method', 'rea', '--population', '4', '--tournament', '5'], '--tournament must be'),
    (['--warm_start', '1'], '--warm_start must be'),
    (['--kappa', '-1'], '--kappa must be'),
    (['--kappa', 'nan'], '--kappa must be'),
    (['--gcn_epochs', '0'], '--gcn_epochs must be'),
    (['--oracle_metric', 'loss'], 'not an accuracy column'),
    (['--space', 'darts'], 'invalid choice'),
    (['--resume'], 'checkpoint.pt is missing'),
    (['--querie', '5'], 'unrecognized arguments'),
])
def test_bad_flags_are_one_line(flags, words, table, tmp_path, capsys):
    argv = ['--oracle', str(table), '--save', str(tmp_path / 'r'), *flags]
    assert words in fails_in_one_line(argv, capsys)
    assert not (tmp_path / 'r' / 'checkpoint.pt').exists()


def test_missing_or_foreign_oracle_files_are_one_line(tmp_path, capsys):
    assert '--oracle FILE is needed' in fails_in_one_line([], capsys)
    assert '--resume needs --save' in fails_in_one_line(['--resume'], capsys)
    assert 'does not exist' in fails_in_one_line(['--oracle', str(tmp_path / 'no.csv')], capsys)
    (tmp_path / 'x.csv').write_text('name,loss\na,1\n')
    assert 'has no column of architecture strings' in fails_in_one_line(['--oracle', str(tmp_path / 'x.csv')], capsys)


def test_the_script_itself_exits_two_with_one_line():
    r = subprocess.run([sys.executable, 'tabular.py', '--method', 'bogus'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and r.stderr.startswith('error: ')


# ----------------------------------------------------------------------------------------------------
# compare.py
# ----------------------------------------------------------------------------------------------------

def test_compare_writes_the_figure_and_the_table(table, tmp_path, capsys):
    results = compare.main(['--oracle', str(table), '--methods', 'random_search', 'rea', '--seeds', '3',
                            '--queries', '12', '--budgets', '6', '12', '--population', '4',
                            '--out', str(tmp_path / 'cmp')])
    text = (tmp_path / 'cmp' / 'table.md').read_text()
    assert '| random_search |' in text and 'best cifar100_test_acc @ 6' in text
    assert (tmp_path / 'cmp' / 'curves.png').stat().st_size > 0
    runs = results['rea']
    assert [r['seed'] for r in runs] == [0, 1, 2]
    mean12 = np.mean([r['curve'][11] for r in runs])
    std12 = np.std([r['curve'][11] for r in runs], ddof=1)
    assert f'{mean12:.2f} ± {std12:.2f}' in text.splitlines()[3]
    assert json.loads((tmp_path / 'cmp' / 'results.json').read_text())['rea'][0]['curve'] == runs[0]['curve']


def test_compare_refuses_bad_flags_in_one_line(table, tmp_path, capsys):
    base = ['--oracle', str(table), '--out', str(tmp_path / 'cmp')]
    assert '--budgets must lie' in fails_in_one_line(base + ['--queries', '10', '--budgets', '20'], capsys, compare.main)
    assert '--k is a flag of none' in fails_in_one_line(base + ['--methods', 'rea', '--k', '2'], capsys, compare.main)
    assert '--tournament must be' in fails_in_one_line(base + ['--tournament', '50'], capsys, compare.main)


# ----------------------------------------------------------------------------------------------------
# search.py --method: the harness hands sample-based methods to tabular.py
# ----------------------------------------------------------------------------------------------------

def test_search_py_runs_a_sample_based_method_and_resumes_it_by_its_run_directory(table, tmp_path, capsys):
    import search
    save = tmp_path / 'run'
    out = search.main(['--method', 'random_search', '--oracle', str(table), '--queries', '6', '--save', str(save)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == out['best']
    assert len(history_of(save)) == 6
    # --resume without --method finds the method in the run directory (a finished run ends again).
    assert search.main(['--save', str(save), '--resume'])['best'] == out['best']
    err = fails_in_one_line(['--method', 'rea', '--queries', '5'], capsys, entry=search.main)
    assert '--oracle FILE is needed' in err and 'tabular mode is the only mode of --method rea' in err
