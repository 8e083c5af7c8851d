"""score.py: random cells of the same size, the held-out split, concurrent trainings, errors."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import genotypes
import score

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--layers', '3', '--init_channels', '4', '--epochs', '1', '--batch_size', '16', '--random', '1',
        '--seeds', '0', '1']


def test_random_cells_have_the_searched_size_and_are_connected():
    rng = random.Random(0)
    for n in (1, 2, 5, 13, 40):
        for _ in range(20):
            cell, concat = score.random_cell(n, rng)
            edges = genotypes.cell_edges(cell)
            assert len(edges) == n == len(set(edges))
            assert score.connected(edges) and concat == sorted({d for _, _, d in edges})
    # A cell whose node 3 reads node 2, which nothing feeds, is not connected.
    assert not score.connected([('skip_connect', 2, 3), ('sep_conv_3x3', 0, 4)])


def test_random_genotypes_match_op_counts_and_weights():
    args = score.build_parser().parse_args(['x', '--layers', '5', '--init_channels', '8', '--random', '3'])
    searched = genotypes.from_name('BayesNAS')
    target = score.count_weights(searched, args)
    found = score.random_genotypes(searched, args)
    assert len(found) == 3 and len(set(map(str, found))) == 3
    for g in found:
        for t in ('normal', 'reduce'):
            assert len(genotypes.cell_edges(getattr(g, t))) == len(genotypes.cell_edges(getattr(searched, t)))
        assert abs(score.count_weights(g, args) / target - 1) <= args.param_tolerance
    assert [str(g) for g in score.random_genotypes(searched, args)] == [str(g) for g in found]   # seeded


def test_score_trains_every_cell_and_concurrent_jobs_agree(small_cifar, tmp_path):
    data = small_cifar(40, 10)
    gfile = tmp_path / 'genotype.json'
    genotypes.save_json(genotypes.from_name('DARTS_V2'), gfile)
    one = score.main(['--genotype', str(gfile), '--data', str(data), '--save', str(tmp_path / 'a')] + TINY)
    doc = json.loads((tmp_path / 'a' / 'score.json').read_text())
    assert [c['name'] for c in doc['cells']] == ['searched', 'random 1']
    for cell in doc['cells']:
        assert len(cell['valid_acc']) == 2 and all(0 <= a <= 100 for a in cell['valid_acc'])
        assert cell['ops'] == {'normal': 8, 'reduce': 8}
    two = score.main(['--genotype', str(gfile), '--data', str(data), '--save', str(tmp_path / 'b'),
                      '--jobs', '2'] + TINY)
    assert [c['valid_acc'] for c in two['cells']] == [c['valid_acc'] for c in one['cells']]


@pytest.mark.parametrize('argv, message', [
    ([], 'give a search run directory or --genotype FILE'),
    (['nowhere'], 'genotype.json is missing'),
    (['--genotype', 'x.json', '--random', '0'], '--random must be at least 1'),
    (['--genotype', 'x.json', '--seeds', '1', '1'], '--seeds repeats a seed'),
    (['--genotype', 'x.json', '--rand', '2'], 'unrecognized arguments: --rand'),
])
def test_mistakes_are_one_line(tmp_path, argv, message):
    result = subprocess.run([sys.executable, str(ROOT / 'score.py')] + argv, capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
