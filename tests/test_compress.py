"""Tests of compress.py: switches on unit groups, physical pruning, the magnitude baseline, the
proximal switch optimiser, and the compression run on the MNIST subset (resume, errors, outputs)."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import compress  # noqa: E402
import prune  # noqa: E402
import utils  # noqa: E402
from hessian import HardPrior, Switch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / 'shared'
MNIST_SUBSET = SHARED / 'data' / 'mnist-subset'
needs_mnist = pytest.mark.skipif(not (MNIST_SUBSET / 'MNIST' / 'raw').is_dir(),
                                 reason=f'shared MNIST subset not found at {MNIST_SUBSET}')
INPUT = {'lenet300': (1, 28, 28), 'lenet5': (1, 28, 28), 'vgg16': (3, 32, 32)}


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------

def randomise(seq, seed=0, keep=0.6):
    """Random weights, BatchNorm statistics and switch values (some negative), and random masks that
    leave every switch at least one live entry."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in seq.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, Switch):
                m.s.copy_(torch.randn(m.s.shape, generator=g))
                drop = torch.rand(m.s.shape, generator=g) > keep
                drop.view(-1)[torch.randint(drop.numel(), (1,), generator=g)] = False
                m.prune_(drop)
    return seq


def switched(name, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return randomise(compress.build(name).switched.to(dtype), seed)


def outputs(net, x, train):
    net.train(train)
    with torch.no_grad():
        return net(x)


# ----------------------------------------------------------------------------------------------------
# Switches and physical pruning
# ----------------------------------------------------------------------------------------------------

def test_switch_layers_of_each_model():
    labels = {name: [r['label'] for r in prune.switch_layers(compress.build(name).switched)] for name in INPUT}
    assert labels['lenet300'] == ['in', 'fc1', 'fc2']
    assert labels['lenet5'] == ['conv1', 'conv2', 'flat', 'fc1']
    assert labels['vgg16'] == [f'conv{i}' for i in range(1, 14)] + ['fc1']
    units = prune.layer_units(compress.build('lenet5').switched)
    assert prune.units_string(units, 1) == '20-50-800-500'


@pytest.mark.parametrize('name', ['lenet300', 'lenet5', 'vgg16'])
@pytest.mark.parametrize('train', [False, True])
def test_physical_prune_equals_masked_network(name, train):
    seq = switched(name)
    x = torch.randn(4, *INPUT[name], dtype=torch.float64)
    pruned = prune.physical_prune(seq)
    assert not any(isinstance(m, Switch) for m in pruned.modules())
    assert utils.count_params(pruned) < utils.count_params(seq)
    torch.testing.assert_close(outputs(pruned, x, train), outputs(seq, x, train), rtol=1e-9, atol=1e-9)
    # The pruned network really is smaller: its unit layers have exactly the live units.
    live = [u[2] for u in prune.layer_units(seq)]
    rows = [r for r in prune.switch_layers(seq) if r['owner'] is not None]
    widths = [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
              for m in pruned if isinstance(m, (nn.Conv2d, nn.Linear))][:len(rows)]
    assert widths == [n for n, r in zip(live, prune.switch_layers(seq)) if r['owner'] is not None]


@pytest.mark.parametrize('name', ['lenet300', 'lenet5', 'vgg16'])
def test_fold_switches_keeps_the_function(name):
    seq = switched(name, seed=1)
    x = torch.randn(3, *INPUT[name], dtype=torch.float64)
    before = outputs(seq, x, False)
    masks = [r['switch'].mask.clone() for r in prune.switch_layers(seq)]
    prune.fold_switches(seq)
    torch.testing.assert_close(outputs(seq, x, False), before, rtol=1e-9, atol=1e-9)
    for r, mask in zip(prune.switch_layers(seq), masks):
        assert torch.equal(r['switch'].s.detach(), mask)     # 1 where live, 0 where pruned


def small_chain():
    """conv(3->6) BN ReLU conv(6->5) BN ReLU pool Flatten fc(80->7) ReLU fc(7->3), switches on every
    filter and neuron and on the 80 flattened features."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5 * 16, 7), nn.ReLU(), nn.Linear(7, 3))
    return randomise(prune.add_switches(plain, flat_switch=True).double(), keep=1.0)


def test_groups_removed_consistently_across_conv_bn_conv_and_flatten():
    seq = small_chain()
    conv1, bn1, sw1, _, conv2, bn2, sw2, _, _, _, flat, fc1, sw_fc1 = list(seq)[:13]
    orig = {k: v.clone() for k, v in seq.state_dict().items()}
    sw1.prune_(torch.tensor([False, False, True, False, False, False]).view(6, 1, 1))   # filter 2 of conv1
    sw2.prune_(torch.tensor([True, False, False, True, False]).view(5, 1, 1))         # filters 0, 3 of conv2
    dead_feature = 1 * 16 + 5                                                          # in channel 1 of conv2
    flat.prune_(torch.arange(80) == dead_feature)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pruned = prune.physical_prune(seq)
    p_conv1, p_bn1, _, p_conv2, p_bn2, _, _, _, select, p_fc1 = list(pruned)[:10]
    keep1, keep2 = [0, 1, 3, 4, 5], [1, 2, 4]
    # conv1 loses filter 2, its BatchNorm the matching channel, conv2 the matching input channel.
    assert p_conv1.weight.shape == (5, 3, 3, 3) and torch.equal(p_conv1.weight, conv1.weight[keep1])
    assert p_bn1.num_features == 5
    for key in ('running_mean', 'running_var'):
        assert torch.equal(getattr(p_bn1, key), orig[f'1.{key}'][keep1])
    # The switch after a BatchNorm is folded into its affine parameters.
    torch.testing.assert_close(p_bn1.weight, bn1.weight[keep1] * sw1.s.flatten()[keep1])
    assert p_conv2.weight.shape == (3, 5, 3, 3)
    assert torch.equal(p_conv2.weight, conv2.weight[keep2][:, keep1])
    assert p_bn2.num_features == 3 and torch.equal(p_bn2.running_var, orig['5.running_var'][keep2])
    # Flatten: each surviving channel keeps its 16 features; the pruned flat feature goes by a Select.
    features = torch.cat([torch.arange(c * 16, (c + 1) * 16) for c in keep2])
    assert isinstance(select, prune.Select) and len(select.index) == 47
    features = features[features != dead_feature]
    assert p_fc1.weight.shape == (7, 47)
    # The flat switch folds into fc1's columns, fc1's own switch into its rows.
    expected = fc1.weight[:, features] * flat.s[features] * sw_fc1.s[:, None]
    torch.testing.assert_close(p_fc1.weight, expected)
    torch.testing.assert_close(outputs(pruned, x, False), outputs(seq, x, False), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(outputs(pruned, x, True), outputs(seq, x, True), rtol=1e-9, atol=1e-9)
    # alive_units follows the same dependency: the flat features of dead channels are dead too.
    assert [u[2] for u in prune.layer_units(seq)] == [5, 3, 47, 7]


def test_torchvision_style_network_with_chain():
    class Tiny(nn.Module):      # the layout of torchvision's VGG: features, avgpool, classifier
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                          nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(inplace=True))
            self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
            self.classifier = nn.Sequential(nn.Linear(24, 10), nn.ReLU(True), nn.Dropout(), nn.Linear(10, 4))

    torch.manual_seed(0)
    seq = randomise(prune.add_switches(prune.chain(Tiny())).double(), seed=3)
    assert [r['label'] for r in prune.switch_layers(seq)] == ['conv1', 'conv2', 'fc1']
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(outputs(prune.physical_prune(seq), x, False), outputs(seq, x, False))


@pytest.mark.parametrize('name', ['lenet300', 'lenet5'])
def test_load_pruned_round_trip(tmp_path, name):
    seq = switched(name, seed=2, dtype=torch.float32)
    pruned = prune.physical_prune(seq).eval()
    compress.save_pruned(name, seq, pruned, tmp_path / 'pruned.pt')
    loaded = compress.load_pruned(tmp_path / 'pruned.pt')
    assert isinstance(loaded, nn.Sequential) and not loaded.training
    x = torch.randn(5, *INPUT[name])
    assert torch.equal(loaded(x), pruned(x))
    assert [tuple(p.shape) for p in loaded.parameters()] == [tuple(p.shape) for p in pruned.parameters()]


def test_load_pruned_refuses_other_files(tmp_path):
    utils.save_checkpoint(dict(model='lenet300', state_dict={}), tmp_path / 'dense.pt')
    with pytest.raises(utils.UserError, match='not a pruned model'):
        compress.load_pruned(tmp_path / 'dense.pt')
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(utils.UserError, match='corrupt'):
        compress.load_pruned(tmp_path / 'junk.pt')


def test_prune_imports_nothing_of_the_project_but_hessian():
    tree = ast.parse((REPO / 'prune.py').read_text())
    imported = {alias.name.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    project = {path.stem for path in REPO.glob('*.py')}
    assert imported & project == {'hessian'}
    assert imported - project <= {'copy', 'math', 'typing', 'torch'}


# ----------------------------------------------------------------------------------------------------
# The magnitude baseline, the switch optimiser, the last-unit guard
# ----------------------------------------------------------------------------------------------------

def test_magnitude_prune_drops_the_smallest_groups():
    torch.manual_seed(0)
    seq = compress.build('lenet5').switched
    conv1 = seq[0]
    with torch.no_grad():
        conv1.weight.mul_(torch.arange(1, 21, dtype=torch.float32).view(20, 1, 1, 1))  # filter norm grows with index
    prune.magnitude_prune(seq, [12, 30, 300, 100])
    assert [u[2] for u in prune.layer_units(seq)] == [12, 30, 300, 100]
    rows = prune.switch_layers(seq)
    assert torch.equal(rows[0]['switch'].mask.flatten().nonzero().flatten(), torch.arange(8, 20))
    # Features of pruned conv2 filters are dead before the flat layer is pruned, so they count as pruned.
    assert int((rows[2]['switch'].mask != 0).sum()) >= 300


def test_keep_strongest_leaves_each_layer_one_unit():
    model = nn.Sequential(Switch((4,)), Switch((3,)))
    prior = HardPrior(model, 1e-3)
    prior.gamma = torch.tensor([1e-4, 5e-3, 2e-3, 0.0, 0.5, 1e-5, 0.2], dtype=torch.float64)
    compress.keep_strongest(prior, threshold=0.01)
    prior.prune(0.01)
    assert model[0].mask.tolist() == [0, 1, 0, 0]        # the largest gamma of the first switch stays
    assert model[1].mask.tolist() == [1, 0, 1]


# ----------------------------------------------------------------------------------------------------
# Command line: errors
# ----------------------------------------------------------------------------------------------------

def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / 'compress.py'), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_bad_model_name_is_one_line_without_traceback(tmp_path):
    r = run_cli('--model', 'resnet9', '--save', tmp_path / 'run')
    assert r.returncode == 2
    assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'resnet9'" in r.stderr and 'lenet300' in r.stderr


def test_missing_data_is_one_line_without_traceback(tmp_path):
    r = run_cli('--model', 'lenet5', '--data', tmp_path / 'nowhere', '--save', tmp_path / 'run')
    assert r.returncode == 2
    assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert 'MNIST not found' in r.stderr


@pytest.mark.parametrize('argv, message', [
    (['--lambda', '0'], '--lambda must be > 0'),
    (['--lambda', 'nan'], '--lambda must be > 0'),
    (['--switch_lr', '-1'], '--switch_lr must be > 0'),
    (['--threshold', '-0.1'], '--threshold must be >= 0'),
    (['--iterations', '-1'], '--iterations must be >= 0'),
    (['--hessian', 'exact'], "invalid choice: 'exact'"),
    (['--compare', 'random'], "invalid choice: 'random'"),
    (['--resume'], '--resume needs --save'),
])
def test_bad_flag_values(argv, message):
    with pytest.raises(utils.UserError, match=message):
        compress.main(argv)


def test_missing_data_and_missing_pretrained(tmp_path):
    with pytest.raises(utils.UserError, match='MNIST not found'):
        compress.main(['--data', str(tmp_path / 'none'), '--save', str(tmp_path / 'a')])
    with pytest.raises(utils.UserError, match='CIFAR-10'):
        compress.main(['--model', 'vgg16', '--data', str(tmp_path / 'none'), '--save', str(tmp_path / 'b')])


def test_corrupt_or_foreign_checkpoint_on_resume(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'checkpoint.pt').write_bytes(b'\x00garbage')
    with pytest.raises(utils.UserError, match='corrupt'):
        compress.main(['--save', str(run), '--resume'])
    utils.save_checkpoint(dict(epoch=3, args=dict(arch='DARTS')), run / 'checkpoint.pt')
    with pytest.raises(utils.UserError, match='not a checkpoint of a compress.py run'):
        compress.main(['--save', str(run), '--resume'])
    r = run_cli('--save', run, '--resume')
    assert r.returncode == 2 and 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def one_line(r):
    assert r.returncode == 2, r.stderr
    assert 'Traceback' not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    return r.stderr


@needs_mnist
def test_pretrained_files_that_do_not_fit_are_one_short_line_and_leave_no_run(tmp_path):
    # A train.py network (its weights under 'model'), and a dense file of the right name whose
    # weights belong to another model.
    net = nn.Sequential(nn.Linear(784, 300), nn.Linear(300, 10))
    utils.save_checkpoint({'kind': 'train', 'config': {'dataset': 'cifar10'}, 'model': net.state_dict()},
                          tmp_path / 'model.pt')
    line = one_line(run_cli('--model', 'lenet300', '--data', MNIST_SUBSET, '--pretrained', tmp_path / 'model.pt',
                            '--save', tmp_path / 'a'))
    assert 'is not a dense lenet300 model' in line and 'a checkpoint of train.py' in line and len(line) < 300
    utils.save_checkpoint({'model': 'lenet300', 'state_dict': compress.lenet5().state_dict()}, tmp_path / 'd.pt')
    line = one_line(run_cli('--model', 'lenet300', '--data', MNIST_SUBSET, '--pretrained', tmp_path / 'd.pt',
                            '--save', tmp_path / 'b'))
    assert 'does not fit lenet300' in line and 'missing' in line and len(line) < 300
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def test_resume_needs_a_checkpoint_and_keeps_the_runs_flags(tmp_path):
    (tmp_path / 'empty').mkdir()
    line = one_line(run_cli('--save', tmp_path / 'empty', '--resume'))
    assert 'checkpoint.pt is missing' in line
    assert not (tmp_path / 'empty' / 'log.txt').exists()         # nothing was started
    # A compression checkpoint (its arguments are all that is read before the flags are compared).
    args, _ = compress.build_parser().parse([])
    utils.save_checkpoint({'kind': 'compress', 'args': vars(args)}, tmp_path / 'run' / 'checkpoint.pt')
    line = one_line(run_cli('--save', tmp_path / 'run', '--resume', '--lambda', '0.01'))
    assert line.startswith("error: --lambda 0.01 differs from the resumed run's 0.001")


def test_epochs_0_needs_pretrained_weights(tmp_path):
    line = one_line(run_cli('--epochs', 0, '--save', tmp_path / 'run'))
    assert '--epochs 0 would compress an untrained network' in line and '--pretrained' in line
    assert not (tmp_path / 'run').exists()


# ----------------------------------------------------------------------------------------------------
# Compression runs on the MNIST subset
# ----------------------------------------------------------------------------------------------------

RUN_FILES = ('log.txt', 'args.json', 'metrics.jsonl', 'checkpoint.pt', 'dense_model.pt', 'pruned_model.pt',
             'magnitude_model.pt', 'report.json', 'units.png', 'curves.png')


@pytest.fixture(scope='module')
def lenet300_run(tmp_path_factory):
    if not (MNIST_SUBSET / 'MNIST' / 'raw').is_dir():
        pytest.skip(f'shared MNIST subset not found at {MNIST_SUBSET}')
    save = tmp_path_factory.mktemp('lenet300') / 'run'
    report = compress.main(['--model', 'lenet300', '--data', str(MNIST_SUBSET), '--compare', 'magnitude',
                            '--save', str(save), '--report_freq', '0'])
    return save, report


@needs_mnist
def test_compression_run_removes_most_units_at_near_dense_error(lenet300_run):
    save, report = lenet300_run
    units = {k: [int(u) for u in v.split('-')] for k, v in report['units'].items()}
    assert units['dense'] == [784, 300, 100]
    kept = sum(units['bayesnas']) / sum(units['dense'])
    # Measured (fisher curvature): 784-300-100 -> 305-154-66 (44% of the units, 4.6x fewer
    # parameters), test error 6.09% dense, 6.37% BayesNAS, 6.21% magnitude. The bounds leave room
    # for other CPUs' rounding.
    assert kept < 0.6, report['units']                      # a large share of the units is gone ...
    assert all(0 < b < d for b, d in zip(units['bayesnas'], units['dense']))
    assert report['compression']['bayesnas'] > 3 and report['speedup']['bayesnas'] > 3
    e = report['error']
    assert e['dense'] < 8
    assert e['bayesnas'] < e['dense'] + 1.0, e               # ... at an error close to the dense model's
    assert e['bayesnas_pruned'] == e['bayesnas']             # the physical network is the masked one
    assert units['magnitude'] == units['bayesnas'] and e['magnitude'] < e['dense'] + 3
    # The pruning came from gamma: every iteration pruned units, and the report lists them.
    assert [it['pruned'] > 0 for it in report['iterations']] == [True] * 3
    assert report['params']['bayesnas'] == utils.count_params(compress.load_pruned(save / 'pruned_model.pt'))


@needs_mnist
def test_run_directory_holds_every_output(lenet300_run):
    save, report = lenet300_run
    for name in RUN_FILES:
        assert (save / name).is_file() and (save / name).stat().st_size > 0, name
    assert json.loads((save / 'report.json').read_text()) == json.loads(json.dumps(report))
    assert json.loads((save / 'args.json').read_text())['model'] == 'lenet300'
    log = (save / 'log.txt').read_text()
    assert f'{report["units"]["dense"]} -> {report["units"]["bayesnas"]}' in log and 'error %' in log
    records = [json.loads(line) for line in (save / 'metrics.jsonl').read_text().splitlines()]
    assert sum('train_loss' in r for r in records) == 10 + 3 * 2 + 6
    assert sum('baseline_train_loss' in r for r in records) == 3 * 2 + 6
    for png in ('units.png', 'curves.png'):
        assert (save / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # The saved networks load and have the reported sizes; the dense model feeds --pretrained.
    assert utils.count_params(compress.load_pruned(save / 'magnitude_model.pt')) == report['params']['magnitude']
    assert report['file_bytes']['bayesnas'] == (save / 'pruned_model.pt').stat().st_size


class Interrupt(Exception):
    pass


@needs_mnist
def test_resume_continues_exactly(tmp_path, monkeypatch):
    """A run stopped twice (inside a penalised iteration and inside the baseline's fine-tuning) and
    resumed ends where the uninterrupted run ends."""
    argv = ['--model', 'lenet300', '--data', str(MNIST_SUBSET), '--compare', 'magnitude', '--epochs', '2',
            '--iterations', '2', '--epochs_per_iteration', '2', '--finetune_epochs', '1', '--report_freq', '0']
    full = compress.main(argv + ['--save', str(tmp_path / 'full')])

    original = compress.Compression.train_one_epoch
    calls = {'n': 0, 'stop': None}

    def stopping(self, *args):
        calls['n'] += 1
        if calls['n'] == calls['stop']:
            raise Interrupt
        return original(self, *args)

    monkeypatch.setattr(compress.Compression, 'train_one_epoch', stopping)
    parts = ['--save', str(tmp_path / 'parts')]
    calls['stop'] = 4                       # dense 2 epochs, iteration 1 epoch 1, stop in iteration 1 epoch 2
    with pytest.raises(Interrupt):
        compress.main(argv + parts)
    calls.update(n=0, stop=6)               # iteration 1 epoch 2, iteration 2, finetune, baseline epoch 1, stop
    with pytest.raises(Interrupt):
        compress.main(parts + ['--resume'])
    calls.update(n=0, stop=None)
    # A third stop between an epoch's log lines and its checkpoint (baseline epoch 2): the resumed
    # run trains that epoch again and must not log it twice.
    save = compress.Compression.save

    def save_fails(self):
        raise Interrupt
    monkeypatch.setattr(compress.Compression, 'save', save_fails)
    with pytest.raises(Interrupt):
        compress.main(parts + ['--resume'])
    monkeypatch.setattr(compress.Compression, 'save', save)
    assert (tmp_path / 'parts' / 'log.txt').read_text().count('magnitude epoch 2/') == 1
    resumed = compress.main(parts + ['--resume'])

    for key in ('units', 'params', 'macs', 'error', 'iterations', 'layers'):
        assert resumed[key] == full[key], key
    for name in ('pruned_model.pt', 'magnitude_model.pt', 'dense_model.pt'):
        a = torch.load(tmp_path / 'full' / name, weights_only=False)['state_dict']
        b = torch.load(tmp_path / 'parts' / name, weights_only=False)['state_dict']
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert 'resuming at iteration 1, epoch 1' in (tmp_path / 'parts' / 'log.txt').read_text()
    # Each epoch is in the metrics and the log once, as in the uninterrupted run.
    def records(run):
        lines = (tmp_path / run / 'metrics.jsonl').read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != 'time'} for line in lines]
    assert records('parts') == records('full')
    log = (tmp_path / 'parts' / 'log.txt').read_text()
    assert log.count('iteration 1 epoch 1/2 ') == 1 and log.count('magnitude epoch 2/') == 1


@needs_mnist
def test_pretrained_dense_model_skips_dense_training(lenet300_run, tmp_path):
    save, report = lenet300_run
    r = compress.main(['--model', 'lenet300', '--data', str(MNIST_SUBSET), '--pretrained', str(save / 'dense_model.pt'),
                       '--iterations', '1', '--epochs_per_iteration', '1', '--finetune_epochs', '0',
                       '--save', str(tmp_path / 'p'), '--report_freq', '0'])
    assert r['error']['dense'] == report['error']['dense']
    with pytest.raises(utils.UserError, match='not a dense lenet5 model'):
        compress.main(['--model', 'lenet5', '--data', str(MNIST_SUBSET), '--pretrained', str(save / 'dense_model.pt'),
                       '--save', str(tmp_path / 'q')])
