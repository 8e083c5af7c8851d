"""search.py end to end on real CIFAR-10 images: the run directory, pruning, exact resumption, errors."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bayesnas
import derive
import genotypes
import search
import utils
from model_search import NetworkCIFAR

ROOT = Path(__file__).resolve().parents[1]

# A small supernet on 120 training images (24 warm-up, 96 switch-training): a few seconds a run.
TINY = ['--layers', '3', '--init_channels', '4', '--batch_size', '8', '--warmup_portion', '0.2',
        '--hessian_batches', '2', '--report_freq', '4', '--seed', '3']


def run_search(data, save, *extra):
    return search.main(['--data', str(data), '--save', str(save)] + TINY + [str(a) for a in extra])


def op_rows(doc):
    return [r for r in doc['groups'] if r['op'] is not None]


@pytest.fixture
def data(small_cifar):
    return small_cifar(24, 20)


# ----------------------------------------------------------------------------------------------------
# A whole search
# ----------------------------------------------------------------------------------------------------

def test_search_writes_its_run_directory_and_a_valid_cell(data, tmp_path):
    save = tmp_path / 'run'
    result = run_search(data, save, '--threshold', '0', '--update', 'reweight')
    for name in ('log.txt', 'args.json', 'metrics.jsonl', 'checkpoint.pt', 'gamma.json', 'genotype.json',
                 'genotype.py'):
        assert (save / name).is_file(), name
    for name in ('gamma.png', 'curves.png', 'cell_normal.png', 'cell_reduce.png'):
        assert (save / name).read_bytes()[:4] == b'\x89PNG', name
    args = json.loads((save / 'args.json').read_text())
    assert args['lam'] == 0.01 and args['switch_lr'] == 0.002 and args['hessian'] == 'fisher' and args['update'] == 'reweight'
    assert args['layers'] == 3
    metrics = [json.loads(line) for line in (save / 'metrics.jsonl').read_text().splitlines()]
    assert {m['phase'] for m in metrics} == {'warmup', 'search', 'update'}
    assert all(math.isfinite(m['train_loss']) for m in metrics if 'train_loss' in m)

    doc = json.loads((save / 'gamma.json').read_text())
    assert len(doc['groups']) == 2 * 14 * 8                     # tied: per cell type, edge and op
    row = next(r for r in doc['groups'] if r['key'] == 'reduce/1->4/sep_conv_5x5')
    assert (row['cell_type'], row['src'], row['dst'], row['op']) == ('reduce', 1, 4, 'sep_conv_5x5')
    assert len(row['values']) == len(row['members']) == 2    # cells 1 and 2 of 3 are reduction cells
    for r in doc['groups']:
        assert r['gamma'] >= 0 and r['omega'] > 0 and r['curvature'] >= 0 and r['cov'] >= 0
        assert math.isclose(r['norm'], math.hypot(*r['values']), rel_tol=1e-6, abs_tol=1e-12)
    assert any(r['curvature'] > 0 for r in op_rows(doc))

    # The re-weighting rule at threshold 0 prunes exactly the groups whose switches the penalty drove
    # to exactly 0 (gamma 0).
    assert all(r['pruned'] == (r['gamma_at_prune'] == 0) for r in doc['groups'])
    assert all(r['norm'] > 0 for r in doc['groups'] if not r['pruned'])
    genotype = genotypes.load_json(save / 'genotype.json')
    assert genotype == result['genotype']
    alive = {(r['cell_type'], r['src'], r['dst'], r['op']) for r in op_rows(doc) if r['gamma'] > 0}
    kept = {(t, src, dst, op) for t in ('normal', 'reduce')
            for op, src, dst in genotypes.cell_edges(getattr(genotype, t))}
    assert kept <= alive and len(kept) >= 0.8 * 2 * 14 * 7
    log = (save / 'log.txt').read_text()
    assert 'derived genotype' in log and genotypes.to_literal(genotype) in log
    state = torch.load(save / 'checkpoint.pt', weights_only=False)
    assert state['phase'] == 2 and state['step'] == 0           # warm-up and one search phase done


def test_pruning_below_the_threshold_takes_ops_out_of_the_search(data, tmp_path):
    """The same seeded search twice: without pruning, to read its gammas, then with a threshold at
    their median. The first iteration is identical, so exactly the groups below the median go, their
    switches are zero and masked, and the derived cell holds only surviving ops."""
    first = run_search(data, tmp_path / 'a', '--threshold', '0', '--update', 'reweight')
    doc = derive.load_gamma(tmp_path / 'a')
    gammas = sorted(r['gamma'] for r in op_rows(doc))
    threshold = gammas[len(gammas) // 2]
    low = {r['key'] for r in doc['groups'] if r['gamma'] < threshold}
    assert 0 < len(low) < len(doc['groups'])

    run_search(data, tmp_path / 'b', '--threshold', threshold, '--iterations', '2', '--update', 'reweight')
    doc_b = derive.load_gamma(tmp_path / 'b')
    pruned = {r['key'] for r in doc_b['groups'] if r['pruned']}
    assert low <= pruned                                        # iteration 1 pruned them, for good
    for r in doc_b['groups']:
        if r['pruned']:
            assert r['gamma'] == 0 and all(v == 0 for v in r['values']), r['key']
    state = torch.load(tmp_path / 'b' / 'checkpoint.pt', weights_only=False)
    masks = {k: v for k, v in state['model'].items() if k.endswith('.mask')}
    assert sum(int(m.item() == 0) for m in masks.values()) >= len(low)

    genotype = genotypes.load_json(tmp_path / 'b' / 'genotype.json')
    alive = {(r['cell_type'], r['src'], r['dst'], r['op']) for r in op_rows(doc_b) if not r['pruned']}
    for cell_type in ('normal', 'reduce'):
        kept = genotypes.cell_edges(getattr(genotype, cell_type))
        assert kept and all((cell_type, src, dst, op) in alive for op, src, dst in kept)
        assert len(kept) < len(genotypes.cell_edges(getattr(first['genotype'], cell_type)))
    net = NetworkCIFAR(4, 10, 3, False, genotype)
    assert net(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)


# ----------------------------------------------------------------------------------------------------
# Resumption and NaN
# ----------------------------------------------------------------------------------------------------

class Interrupt(Exception):
    pass


def stop_after(monkeypatch, calls, action):
    """Make Search.train_step run `action(search)` once it has been called `calls` times."""
    original = search.Search.train_step
    count = [0]

    def patched(self, x, y, in_search):
        count[0] += 1
        if count[0] == calls:
            action(self)
        return original(self, x, y, in_search)

    monkeypatch.setattr(search.Search, 'train_step', patched)


def raise_interrupt(s):
    raise Interrupt


def test_resume_after_an_interruption_ends_in_the_same_state(data, tmp_path, monkeypatch):
    extra = ['--checkpoint_freq', '5', '--threshold', '0.5']
    run_search(data, tmp_path / 'whole', *extra)

    # 3 warm-up steps, then the 9th switch step: the last checkpoint is the one after switch step 5,
    # and the report of step 8 was logged after it.
    stop_after(monkeypatch, 3 + 9, raise_interrupt)
    with pytest.raises(Interrupt):
        run_search(data, tmp_path / 'cut', *extra)
    state = torch.load(tmp_path / 'cut' / 'checkpoint.pt', weights_only=False)
    assert (state['phase'], state['step']) == (1, 5)
    monkeypatch.undo()
    # Without --resume the directory is refused; with it the search continues.
    with pytest.raises(utils.UserError, match='--resume'):
        run_search(data, tmp_path / 'cut', *extra)
    # What a kill during a checkpoint write leaves behind: removed when the run is opened again.
    stale = tmp_path / 'cut' / '.checkpoint.pt.k1ll3d.tmp'
    stale.write_bytes(b'half a checkpoint')
    # Only the run directory: --data, --report_freq and --checkpoint_freq are the run's own.
    search.main(['--save', str(tmp_path / 'cut'), '--resume'])
    assert not stale.exists()

    whole = torch.load(tmp_path / 'whole' / 'checkpoint.pt', weights_only=False)
    cut = torch.load(tmp_path / 'cut' / 'checkpoint.pt', weights_only=False)
    for k, v in whole['model'].items():
        assert torch.equal(v, cut['model'][k]), k
    for k, v in whole['prior'].items():
        assert (torch.equal(v, cut['prior'][k]) if torch.is_tensor(v) else v == cut['prior'][k]), k
    assert derive.load_gamma(tmp_path / 'whole')['groups'] == derive.load_gamma(tmp_path / 'cut')['groups']
    assert (tmp_path / 'whole' / 'genotype.json').read_text() == (tmp_path / 'cut' / 'genotype.json').read_text()
    assert 'resumed in search iteration 1 at step 5/12' in (tmp_path / 'cut' / 'log.txt').read_text()
    # The steps between the last checkpoint and the interruption are logged once, as in the whole run.
    assert step_records(tmp_path / 'cut') == step_records(tmp_path / 'whole')
    assert step_lines(tmp_path / 'cut') == step_lines(tmp_path / 'whole')
    resumed_with = next(line for line in (tmp_path / 'cut' / 'log.txt').read_text().splitlines()
                        if 'resumed with args' in line)
    args = json.loads(resumed_with.split('resumed with args: ', 1)[1])
    assert (args['data'], args['report_freq'], args['checkpoint_freq']) == (str(data), 4, 5)


def test_switch_steps_run_through_consecutive_passes_and_resume_exactly(data, tmp_path, monkeypatch):
    # 12 batches a pass: iteration 1 reads pass 0 and half of pass 1, iteration 2 the rest of pass 1
    # and pass 2. Interrupted in iteration 2, inside pass 1, after its checkpoint at step 4.
    extra = ['--switch_steps', '18', '--iterations', '2', '--checkpoint_freq', '4', '--lambda', '0.01']
    run_search(data, tmp_path / 'whole', *extra)
    log = (tmp_path / 'whole' / 'log.txt').read_text()
    assert 'batch 8, 18 switch steps per iteration' in log
    assert 'search iteration 2  step 18/18' in log
    stop_after(monkeypatch, 3 + 18 + 5, raise_interrupt)
    with pytest.raises(Interrupt):
        run_search(data, tmp_path / 'cut', *extra)
    monkeypatch.undo()
    search.main(['--save', str(tmp_path / 'cut'), '--resume'])
    assert 'resumed in search iteration 2 at step 4/18' in (tmp_path / 'cut' / 'log.txt').read_text()
    whole = torch.load(tmp_path / 'whole' / 'checkpoint.pt', weights_only=False)
    cut = torch.load(tmp_path / 'cut' / 'checkpoint.pt', weights_only=False)
    for k, v in whole['model'].items():
        assert torch.equal(v, cut['model'][k]), k
    assert step_records(tmp_path / 'cut') == step_records(tmp_path / 'whole')


def test_passes_continue_the_sequence_of_epochs():
    batches = utils.Batches(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2),
                            torch.arange(10), 3, drop_last=True, seed=5)
    sequence = []
    for epoch in range(4):
        batches.set_epoch(epoch)
        sequence += [y.tolist() for _, y in batches]
    assert len(sequence) == 12
    for first, n in ((0, 3), (3, 3), (2, 7), (5, 1), (4, 8)):
        assert [y.tolist() for _, y in search.passes(batches, first, n)] == sequence[first:first + n]


def step_records(run):
    """metrics.jsonl without what depends on the clock."""
    records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ('time', 'images_per_s', 'curvature_s')} for r in records]


def step_lines(run):
    """The step lines of log.txt, without the time stamp and the speed."""
    lines = [line.split(' ', 2)[2] for line in (run / 'log.txt').read_text().splitlines() if '  step ' in line]
    return [line.split('  ', 3)[:3] for line in lines]


def test_a_nan_stops_the_search_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    def poison(s):
        with torch.no_grad():
            s.weights[0].fill_(float('nan'))
    stop_after(monkeypatch, 3 + 6, poison)
    with pytest.raises(utils.UserError, match='NaN'):
        run_search(data, tmp_path / 'run', '--checkpoint_freq', '5')
    state = torch.load(tmp_path / 'run' / 'checkpoint.pt', weights_only=False)
    assert (state['phase'], state['step']) == (1, 5)
    assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())
    assert not (tmp_path / 'run' / 'gamma.json').exists()


# ----------------------------------------------------------------------------------------------------
# User mistakes
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('argv, message', [
    (['--lambda', '0'], '--lambda must be a positive number, got 0.0'),
    (['--lambda_child', '-0.01'], '--lambda_child must be a positive number'),
    (['--lambda_origin', 'nan'], '--lambda_origin must be a positive number'),
    (['--warmup_portion', '1'], '--warmup_portion must be in [0, 1)'),
    (['--switch_steps', '0'], '--switch_steps must be at least 1, got 0'),
    (['--hessian', 'exact'], "invalid choice: 'exact'"),
    (['--batch_size', '100000'], 'too small for --batch_size 100000'),
    (['--warmup_portion', '0'], '--warmup_portion 0 leaves the warm-up without images, but --warmup_epochs is 1'),
    (['--warmup_portion', '0.01'], 'the warm-up part holds 1 images'),
])
def test_bad_flags_are_user_errors(data, tmp_path, argv, message):
    with pytest.raises(utils.UserError, match=message.replace('[', r'\[').replace(')', r'\)')):
        search.main(['--data', str(data), '--save', str(tmp_path / 'run')] + argv)


def test_resume_errors(data, tmp_path):
    with pytest.raises(utils.UserError, match='--resume needs --save'):
        search.main(['--resume', '--data', str(data)])
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'checkpoint.pt').write_bytes(b'not a checkpoint at all')
    with pytest.raises(utils.UserError, match='corrupt or not a checkpoint'):
        search.main(['--resume', '--save', str(run), '--data', str(data)])
    torch.save({'model': {}}, run / 'checkpoint.pt')
    with pytest.raises(utils.UserError, match='not a checkpoint of search.py'):
        search.main(['--resume', '--save', str(run), '--data', str(data)])


def test_missing_data_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / 'search.py'), '--data', str(tmp_path / 'nowhere'),
                             '--save', str(tmp_path / 'run')], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith('error: CIFAR-10 not found')
    assert len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr


def run_cli(*args):
    return subprocess.run([sys.executable, 'search.py', *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def one_line_error(proc):
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith('error: '), proc.stderr
    return proc.stderr


def test_warmup_portion_0_with_warmup_epochs_0_is_a_search_without_warm_up(data, tmp_path):
    args, _ = search.configure(['--warmup_portion', '0', '--warmup_epochs', '0'])
    assert bayesnas.phases(args) == [('search', 0)]
    line = one_line_error(run_cli('--data', data, '--save', tmp_path / 'r', '--warmup_portion', '0'))
    assert 'warm-up without images' in line and not (tmp_path / 'r').exists()


def test_resume_refuses_other_scripts_checkpoints_and_names_flags_as_written(tmp_path):
    run = tmp_path / 'run'
    utils.save_checkpoint({'kind': 'train', 'args': {'batch_size': 96}, 'config': {}, 'model': {}},
                          run / 'checkpoint.pt')
    line = one_line_error(run_cli('--save', run, '--resume'))
    assert 'is a checkpoint of train.py, not of search.py' in line
    # A search checkpoint (its arguments are all that is read before the flags are compared).
    utils.save_checkpoint({'kind': 'search', 'args': vars(search.space_defaults(search.build_parser().parse_args([])))},
                          run / 'checkpoint.pt')
    line = one_line_error(run_cli('--save', run, '--resume', '--lambda', '0.03'))
    assert line.startswith("error: --lambda 0.03 differs from the resumed run's 0.01")
    line = one_line_error(run_cli('--save', run, '--resume', '--lam', '0.01'))
    assert 'unrecognized arguments: --lam' in line


def test_deterministic_flag(data, tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    def stop(args, device):
        raise Stop
    monkeypatch.setattr(search, 'make_data', stop)
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        with pytest.raises(Stop):
            search.main(['--data', str(data), '--save', str(tmp_path / 'r'), '--deterministic'])
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert search.configure([])[0].deterministic is False


# ----------------------------------------------------------------------------------------------------
# The evidence rule: the curvature decides
# ----------------------------------------------------------------------------------------------------

def kept_ops(doc):
    return {r['key'] for r in op_rows(doc) if not r['pruned']}


def test_the_curvature_decides_what_is_pruned(data, tmp_path):
    """The same seeded search with each switch's own curvature and with their mean in its place:
    training is identical (the curvature is measured after it), so any difference in the pruned set
    is the curvature's doing - and there is one."""
    run_search(data, tmp_path / 'own')
    run_search(data, tmp_path / 'constant', '--hessian', 'constant')
    own, constant = derive.load_gamma(tmp_path / 'own'), derive.load_gamma(tmp_path / 'constant')
    assert 0 < len(kept_ops(own)) < len(op_rows(own)) and 0 < len(kept_ops(constant)) < len(op_rows(constant))
    assert kept_ops(own) != kept_ops(constant)
    assert len({c for r in op_rows(constant) for c in r['curvatures'] if c > 0}) == 1
    # One-member groups (the single normal cell of a 3-cell supernet) follow the closed form: kept
    # exactly when h w^2 > lambda, that is relevance > 1, before the couplings.
    normal = [r for r in op_rows(own) if r['cell_type'] == 'normal' and abs(r['relevance'] - 1) > 1e-6]
    assert normal and all((r['gamma_raw'] > 0) == (r['relevance'] > 1) for r in normal)


def test_a_search_that_would_empty_a_cell_ends_with_its_most_relevant_op(data, tmp_path):
    save = tmp_path / 'run'
    result = run_search(data, save, '--lambda', '50')
    log = (save / 'log.txt').read_text()
    assert 'would be empty' in log and 'most relevant operation' in log
    doc = derive.load_gamma(save)
    for cell_type in ('normal', 'reduce'):
        kept = genotypes.cell_edges(getattr(result['genotype'], cell_type))
        assert kept, cell_type
        rescued = [r for r in op_rows(doc) if r.get('rescued') and r['cell_type'] == cell_type]
        if rescued:              # the one op kept is the most relevant of those the update pruned
            (row,) = rescued
            assert kept == [(row['op'], row['src'], row['dst'])]
            rivals = [r for r in op_rows(doc) if r['cell_type'] == cell_type and r['src'] < 2 and r['pruned']]
            assert all(r['relevance'] <= row['relevance'] for r in rivals)
    # derive.py at the search's own rule gives the same cell back.
    assert derive.derive(doc) == result['genotype']


def test_a_compiled_supernet_trains_like_the_eager_one(data, tmp_path):
    # The NAS-Bench-201 supernet, one cell per stage, without warm-up: one compilation, a minute or two.
    flags = ['--space', 'nb201', '--layers', '1', '--init_channels', '4', '--batch_size', '8',
             '--warmup_epochs', '0', '--warmup_portion', '0', '--hessian_batches', '2', '--report_freq', '1']
    eager = search.main(['--data', str(data), '--save', str(tmp_path / 'eager')] + flags)
    compiled = search.main(['--data', str(data), '--save', str(tmp_path / 'compiled'), '--compile'] + flags)
    steps = [[r for r in step_records(tmp_path / run) if r.get('phase') == 'search' and 'train_loss' in r]
             for run in ('eager', 'compiled')]
    assert len(steps[0]) == len(steps[1]) == 15
    for a, b in zip(*steps):
        assert b['train_loss'] == pytest.approx(a['train_loss'], rel=1e-4)
    penalties = [[line.split('penalty ')[1].split()[0] for line in (tmp_path / run / 'log.txt').read_text().splitlines()
                  if 'penalty' in line] for run in ('eager', 'compiled')]
    assert len(penalties[0]) == 15 and penalties[0] == penalties[1]         # to the 4 decimals logged
    norms = [{r['key']: r['norm_at_update'] for r in json.loads((tmp_path / run / 'gamma.json').read_text())['groups']}
             for run in ('eager', 'compiled')]
    assert norms[1] == pytest.approx(norms[0], rel=1e-4, abs=1e-6)      # the switches trained alike
    assert 'search iteration 1: first step' in (tmp_path / 'compiled' / 'log.txt').read_text()
    assert eager['history'][0]['groups'] == compiled['history'][0]['groups']
