"""bench.py --quick: the CI smoke run of the benchmark (no timing is asserted, only that every
section measures something real and the JSON report is complete)."""
import json
import math

import pytest

import bench
import utils


def test_quick_benchmark_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    report = bench.main(['--quick', '--out', str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report['quick'] and report['device'].startswith('CPU')
    assert [r['variant'] for r in report['search_step']] == ['fp32']
    for step in report['search_step']:
        assert step['batch_size'] == 8 and step['images_per_s'] > 0 and step['peak_mib'] > 0
    c = report['curvature']
    for method in ('ggn', 'fisher', 'recursive'):
        assert c[method]['seconds'] > 0 and c[method]['ratio_to_train_step'] > 0
    for name, rho in c['spearman_vs_ggn'].items():
        assert -1 <= rho <= 1, name
    # The Fisher average of several draws ranks switches like the exact GGN diagonal, on its scale.
    assert c['spearman_vs_ggn']['fisher, mean of 4'] > 0.9
    assert 0.5 < c['median_ratio_to_ggn']['fisher, mean of 4'] < 2
    assert c['median_ratio_to_ggn']['recursive'] > 0
    assert [r['pruned_share'] for r in report['pruned']] == [0.0, 0.25, 0.5, 0.75]
    assert {r['arch'] for r in report['eval_train']} == {'DARTS_V2', 'BayesNAS'}
    assert all(math.isfinite(r['images_per_s']) for r in report['eval_train'])
    # --quick projects too (from its toy sizes, and says so), as the full run does.
    p = report['projection']
    assert p['search_minutes'] > 0 and p['retrain_600_epochs_hours_DARTS_V2'] > 0
    printed = capsys.readouterr().out
    assert 'Spearman rank correlation with ggn' in printed and f'wrote {out}' in printed
    assert 'projection from the --quick sizes' in printed and 'projected full CIFAR-10 search' in printed
    # The proxyless space: its supernet step, the memory it saves per image, ProxylessNAS-G's ops retrained.
    supernet, retrain = report['proxyless']
    assert supernet['images_per_s'] > 0 and supernet['saved_mib_per_image'] > 0 and supernet['fisher_s'] > 0
    assert supernet['switches'] == 6 * 6 * 8 and supernet['batch_fits_80gb'] > 0
    assert retrain['images_per_s'] > 0 and retrain['params_M'] > 0 and retrain['macs_M'] > 0
    assert p['proxyless_search_minutes'] > 0 and p['proxyless_retrain_300_epochs_hours'] > 0
    assert 'projected proxyless search' in printed


def test_bad_flags_are_one_line(tmp_path):
    with pytest.raises(utils.UserError, match='--quick runs on the CPU'):
        bench.main(['--quick', '--gpu', '0', '--out', str(tmp_path / 'b.json')])
    with pytest.raises(utils.UserError, match='--batch_sizes must be at least 2'):
        bench.main(['--quick', '--batch_sizes', '8', '1', '--out', str(tmp_path / 'b.json')])
    assert not (tmp_path / 'b.json').exists()
