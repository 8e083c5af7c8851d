"""stability.py on hand-made runs: sizes, edge survival, Jaccard indices, one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import genotypes
import stability

ROOT = Path(__file__).resolve().parents[1]


def make_run(path, normal, reduce):
    path.mkdir()
    g = genotypes.Genotype(normal, sorted({d for _, _, d in normal}), reduce, sorted({d for _, _, d in reduce}))
    genotypes.save_json(g, path / 'genotype.json')
    rows = []
    for i, (op, s, d) in enumerate(normal):
        rows.append(dict(key=f'normal/{s}->{d}/{op}', op=op, pruned=False, gamma_raw=1.0 + i, norm=1.0 + i,
                         curvature=10.0 - i, relevance=2.0 + i, norm_at_update=1.0 + i))
    rows.append(dict(key='normal/4->5/skip_connect', op='skip_connect', pruned=True, gamma_raw=0.0, norm=0.0,
                     curvature=0.0, relevance=0.0))
    (path / 'gamma.json').write_text(json.dumps(dict(groups=rows)))
    return path


def test_stability_counts_survival_and_agreement(tmp_path):
    a = make_run(tmp_path / 'a', [('sep_conv_3x3', 0, 2), ('skip_connect', 2, 3), ('max_pool_3x3', 1, 2)],
                 [('max_pool_3x3', 0, 2)])
    b = make_run(tmp_path / 'b', [('sep_conv_3x3', 0, 2), ('skip_connect', 2, 3)], [('avg_pool_3x3', 1, 2)])
    out = stability.main([str(a), str(b)])
    assert [(r['normal'], r['reduce'], r['pruned'], r['pruned_at_zero_relevance']) for r in out['runs']] == \
        [(3, 1, 1, 1), (2, 1, 1, 1)]
    assert abs(out['runs'][0]['gamma_vs_norm'] - 1) < 1e-9 and abs(out['runs'][0]['gamma_vs_curvature'] + 1) < 1e-9
    assert out['survival']['normal'][(0, 2)] == (2, False) and out['survival']['normal'][(2, 3)] == (2, True)
    assert out['survival']['reduce'][(0, 2)] == (1, False) and out['survival']['normal'][(4, 5)] == (0, False)
    assert [round(v, 9) for v in out['jaccard'].values()] == [round(2 / 5, 9)]         # shared: sep 0->2 and skip 2->3; 5 in all
    template = stability.template()
    assert len(template) == 2 * (4 * 7 + 6)
    assert out['template'][0] == 4 / len(template)          # all four of a's ops are in the template


def test_a_run_without_a_genotype_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, 'stability.py', str(tmp_path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert 'not a gamma table' in result.stderr or 'is missing' in result.stderr


def make_nb201_run(path, arch):
    path.mkdir()
    genotypes.save_json(arch, path / 'genotype.json')
    rows = [dict(key=f'normal/{s}->{d}/{op}', op=op, pruned=False, gamma_raw=1.0, norm=1.0, curvature=1.0,
                 relevance=2.0) for op, s, d in genotypes.nb201_cell(arch)]
    (path / 'gamma.json').write_text(json.dumps(dict(space='nb201', groups=rows)))
    return path


def test_nb201_runs_are_compared_on_their_six_edges(tmp_path):
    a = make_nb201_run(tmp_path / 'a', '|skip_connect~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|')
    b = make_nb201_run(tmp_path / 'b', '|skip_connect~0|+|nor_conv_1x1~0|none~1|+|none~0|none~1|avg_pool_3x3~2|')
    out = stability.main([str(a), str(b)])
    assert [(r['normal'], r['reduce']) for r in out['runs']] == [(3, 0), (3, 0)]
    assert out['survival'] == {'normal': {(0, 1): (2, True), (0, 2): (2, False), (1, 2): (0, False),
                                          (0, 3): (1, True), (1, 3): (0, False), (2, 3): (1, False)}}
    assert abs(list(out['jaccard'].values())[0] - 1 / 5) < 1e-9 and out['template'] == []


def test_runs_of_different_spaces_are_refused(tmp_path):
    a = make_nb201_run(tmp_path / 'a', '|skip_connect~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|')
    b = make_run(tmp_path / 'b', [('sep_conv_3x3', 0, 2)], [('max_pool_3x3', 0, 2)])
    result = subprocess.run([sys.executable, 'stability.py', str(a), str(b)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2 and 'different spaces (darts, nb201)' in result.stderr


def test_a_proxyless_run_and_foreign_gamma_rows_are_one_line(tmp_path):
    proxyless_run = tmp_path / 'p'
    proxyless_run.mkdir()
    (proxyless_run / 'genotype.json').write_text(json.dumps(dict(name='PyramidTreeNet', blocks=[], classifier={})))
    result = subprocess.run([sys.executable, 'stability.py', str(proxyless_run)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert 'is a proxyless search' in result.stderr
    run = make_run(tmp_path / 'a', [('sep_conv_3x3', 0, 2)], [('max_pool_3x3', 0, 2)])
    (run / 'gamma.json').write_text(json.dumps(dict(groups=[dict(op='sep_conv_3x3')])))    # no 'pruned'
    result = subprocess.run([sys.executable, 'stability.py', str(run)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert 'not a gamma table of search.py' in result.stderr
