"""measure.py --quick: the one-command device measurement runs every step end to end on the CPU."""
import json

import pytest

import measure
import utils


def test_quick_measurement_runs_every_step_and_writes_its_summary(small_cifar, tmp_path, capsys):
    data = small_cifar(24, 20)
    out = tmp_path / 'measure'
    summary = measure.main(['--quick', '--data', str(data), '--out', str(out)])
    assert list(summary) == ['bench', 'search', 'search-proxyless', 'train', 'train-proxyless']
    assert all(s['status'] == 'ok' and s['wall_s'] > 0 for s in summary.values())
    assert json.loads((out / 'summary.json').read_text()) == json.loads(json.dumps(summary))
    assert summary['bench']['projection']['proxyless_search_minutes'] > 0
    for step in ('search-darts', 'search-proxyless', 'train', 'train-proxyless'):
        assert (out / step / 'log.txt').is_file()
    assert (out / 'bench' / 'bench.json').is_file() and (out / 'train-proxyless' / 'model.pt').is_file()
    printed = capsys.readouterr().out
    assert printed.index('=== bench ===') < printed.index('=== search ===') < printed.index('=== train ===')


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(utils.UserError, match='holds no cifar-10-batches-py'):
        measure.main(['--quick', '--data', str(tmp_path)])
    (tmp_path / 'cifar-10-batches-py').mkdir()
    with pytest.raises(utils.UserError, match="unknown step 'benchmark'"):
        measure.main(['--quick', '--data', str(tmp_path), '--only', 'benchmark'])


def test_a_failing_step_is_reported_and_the_next_one_still_runs(small_cifar, tmp_path, monkeypatch):
    def broken(argv):
        raise RuntimeError('CUDA out of memory\nmore detail')
    monkeypatch.setattr(measure.search, 'main', broken)
    out = tmp_path / 'measure'
    with pytest.raises(utils.UserError, match='steps failed: search'):
        measure.main(['--quick', '--data', str(small_cifar(24, 20)), '--out', str(out), '--only', 'search', 'train'])
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['search'] == dict(status='failed', error='RuntimeError: CUDA out of memory',
                                     wall_s=summary['search']['wall_s'])
    assert summary['train']['status'] == 'ok' and set(summary) == {'search', 'train'}


def test_a_step_that_fails_on_user_input_says_so_in_one_line(small_cifar, tmp_path, monkeypatch, capsys):
    def refused(argv):
        raise utils.UserError('--batch_size must be at least 2')
    monkeypatch.setattr(measure.search, 'main', refused)
    with pytest.raises(utils.UserError, match='steps failed: search'):
        measure.main(['--quick', '--data', str(small_cifar(24, 20)), '--out', str(tmp_path / 'm'), '--only', 'search'])
    err = capsys.readouterr().err
    assert 'search: --batch_size must be at least 2' in err and 'Traceback' not in err
