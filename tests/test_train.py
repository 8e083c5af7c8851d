"""Tests of train.py: learning on real CIFAR-10, exact resumption, two-process data parallelism,
the ImageNet network on a tiny image folder, --eval_only, and one-line errors for user mistakes.

Networks are tiny (3-4 cells, 4-8 channels) and data sets small, written into tmp folders in the
CIFAR-10 pickle format, so that the file runs in a few minutes on a two-core CPU.
"""
import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import genotypes
import train
import utils
from model_search import NetworkImageNet

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'cifar10-subset'
needs_cifar = pytest.mark.skipif(not (SHARED_CIFAR / 'cifar-10-batches-py').is_dir(),
                                 reason=f'real CIFAR-10 images are needed and the shared subset is '
                                        f'not at {SHARED_CIFAR}')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # One thread, as in the torchrun processes (OMP_NUM_THREADS=1), since the thread count changes
    # the rounding of reductions and the two-process test compares to rounding; and two OpenMP
    # threads per process on a busy two-core machine spin against each other, several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Data and helpers
# ---------------------------------------------------------------------------------------------

def write_cifar(root, n_train, n_test, seed=0):
    """CIFAR-10 pickles under root/cifar-10-batches-py: the first records of the shared subset's
    batches when seed is None, else random images and labels. Returns root."""
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
    for name, n in zip(names, [n_train // 5] * 5 + [n_test]):
        if seed is None:
            with open(SHARED_CIFAR / 'cifar-10-batches-py' / name, 'rb') as f:
                batch = pickle.load(f, encoding='latin1')
            data, labels = batch['data'][:n], batch['labels'][:n]
        else:
            data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()
        with open(folder / name, 'wb') as f:
            pickle.dump({'batch_label': name, 'data': data, 'labels': labels,
                         'filenames': [f'{i}.png' for i in range(n)]}, f)
    return root


@pytest.fixture(scope='module')
def tiny_cifar(tmp_path_factory):
    """160 random training images and 64 test images."""
    return write_cifar(tmp_path_factory.mktemp('tiny-cifar'), 160, 64)


def tiny_args(data, save, *more):
    """A 3-cell, 4-channel network with the CIFAR-10 recipe's auxiliary head and cutout."""
    return ['--data', str(data), '--save', str(save), '--layers', '3', '--init_channels', '4',
            '--report_freq', '1000', *map(str, more)]


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines()]


def weights(path):
    return torch.load(path, map_location='cpu', weights_only=False)['model']


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def user_error(argv, capsys):
    """The one stderr line of `python train.py ARGV`, run in this process through utils.cli,
    after checking that it exits with code 2."""
    with pytest.raises(SystemExit) as exit_:
        utils.cli(lambda: train.main(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith('error: '), err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Learning, and --eval_only of the result
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def learned(tmp_path_factory):
    """4 epochs of a 4-cell, 8-channel DARTS_V2 network on 1000 real training images, about half a
    minute on two CPU cores. Seeds 0, 1, 2 reached 37.0, 39.2 and 35.8 % on the 500 test images."""
    root = tmp_path_factory.mktemp('learn')
    data = write_cifar(root / 'data', 1000, 500, seed=None)
    result = train.main(['--data', str(data), '--save', str(root / 'run'), '--arch', 'DARTS_V2',
                         '--layers', '4', '--init_channels', '8', '--batch_size', '32',
                         '--learning_rate', '0.05', '--epochs', '4', '--no-auxiliary', '--no-cutout',
                         '--drop_path_prob', '0', '--report_freq', '1000'])
    return data, root / 'run', result


@needs_cifar
def test_short_training_on_real_images_learns(learned):
    _, run, result = learned
    lines = metrics(run)
    assert [m['epoch'] for m in lines] == [1, 2, 3, 4]
    # Chance is 10 %; 30 % on 500 test images is 15 standard deviations above it.
    assert result['test_acc'] > 30, lines
    assert lines[-1]['test_acc'] == result['test_acc']
    assert lines[-1]['train_loss'] < lines[0]['train_loss'] - 0.1
    # The cosine schedule anneals from the given rate.
    assert lines[0]['lr'] == 0.05 and lines[-1]['lr'] < lines[1]['lr'] < 0.05
    for name in ('args.json', 'log.txt', 'checkpoint.pt', 'model.pt', 'curves.png'):
        assert (run / name).is_file(), name


@needs_cifar
def test_eval_only_reports_the_runs_test_accuracy(learned, capsys):
    data, run, result = learned
    capsys.readouterr()
    # Another batch size: in eval mode every image is classified on its own.
    evaluated = train.main(['--eval_only', str(run / 'model.pt'), '--data', str(data),
                            '--batch_size', '100'])
    assert evaluated['test_acc'] == result['test_acc']
    assert evaluated['test_loss'] == pytest.approx(result['test_loss'], rel=1e-5)
    assert f'test accuracy {result["test_acc"]:.2f}%' in capsys.readouterr().out
    stored = torch.load(run / 'model.pt', weights_only=False)
    assert stored['test_acc'] == result['test_acc'] and stored['epochs'] == 4


@needs_cifar
def test_eval_only_takes_the_runs_data_and_reads_only_the_test_batch(learned, tmp_path, capsys):
    data, run, result = learned
    # No --data: the network was trained on `data`, saved with it.
    assert train.main(['--eval_only', str(run / 'model.pt')])['test_acc'] == result['test_acc']
    # A folder with the test batch alone is enough.
    only_test = tmp_path / 'test-only' / 'cifar-10-batches-py'
    only_test.mkdir(parents=True)
    (only_test / 'test_batch').write_bytes((data / 'cifar-10-batches-py' / 'test_batch').read_bytes())
    evaluated = train.main(['--eval_only', str(run / 'model.pt'), '--data', str(only_test.parent)])
    assert evaluated['test_acc'] == result['test_acc']
    # A network saved without its run's arguments, and no data at the default place: one clear line.
    state = torch.load(run / 'model.pt', weights_only=False)
    del state['args']
    utils.save_checkpoint(state, tmp_path / 'model.pt')
    if (REPO / 'data').exists():
        pytest.skip('a data folder in the repository stands where the default should be missing')
    proc = subprocess.run([sys.executable, 'train.py', '--eval_only', str(tmp_path / 'model.pt')], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
    assert 'test_batch is missing' in proc.stderr and '--data data is the default; pass --data' in proc.stderr


# ---------------------------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------------------------

class Interrupted(Exception):
    pass


def test_a_compiled_network_trains_like_the_eager_one(tiny_cifar, tmp_path):
    # Two epochs, so that drop-path masks (drawn inside the compiled graph, with a probability that
    # changes between epochs without a new compilation), cutout and the auxiliary head all take part.
    flags = ['--epochs', 2, '--batch_size', 32, '--drop_path_prob', 0.3, '--seed', 3, '--report_freq', 1]
    eager = train.main(tiny_args(tiny_cifar, tmp_path / 'eager', *flags))
    compiled = train.main(tiny_args(tiny_cifar, tmp_path / 'compiled', *flags, '--compile'))

    def step_losses(run):
        return [float(line.split('loss ')[1].split()[0]) for line in (run / 'log.txt').read_text().splitlines()
                if '  step ' in line and 'first step' not in line]
    a, b = step_losses(tmp_path / 'eager'), step_losses(tmp_path / 'compiled')
    assert len(a) == len(b) == 10 and a == pytest.approx(b, abs=2e-3)
    for m, n in zip(metrics(tmp_path / 'eager'), metrics(tmp_path / 'compiled')):
        assert (m['drop_path_prob'], m['lr']) == (n['drop_path_prob'], n['lr'])
        assert n['train_loss'] == pytest.approx(m['train_loss'], rel=1e-3)
        assert n['test_loss'] == pytest.approx(m['test_loss'], rel=1e-3)
    assert compiled['test_loss'] == pytest.approx(eager['test_loss'], rel=1e-3)
    assert 'compilation included' in (tmp_path / 'compiled' / 'log.txt').read_text()


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tiny_cifar, tmp_path, monkeypatch):
    # Drop-path (random masks from the 2nd epoch on), cutout and the auxiliary head all take part.
    flags = ['--epochs', 3, '--batch_size', 16, '--drop_path_prob', 0.3, '--seed', 3]
    whole = train.main(tiny_args(tiny_cifar, tmp_path / 'whole', *flags))

    # Killed after the 3rd epoch's metrics line is written but before its checkpoint replaces the
    # 2nd epoch's: the worst moment, as the run directory then says more than the checkpoint. (After
    # the 2nd epoch, not the 1st, whose drop-path probability is 0: only then does the resumed run
    # need the random state that the masks of the 2nd epoch left.)
    save = utils.save_checkpoint

    def save_or_die(state, path):
        if state.get('epoch') == 3:
            raise Interrupted
        save(state, path)

    monkeypatch.setattr(utils, 'save_checkpoint', save_or_die)
    with pytest.raises(Interrupted):
        train.main(tiny_args(tiny_cifar, tmp_path / 'resumed', *flags))
    monkeypatch.setattr(utils, 'save_checkpoint', save)
    assert torch.load(tmp_path / 'resumed' / 'checkpoint.pt', weights_only=False)['epoch'] == 2
    assert [m['epoch'] for m in metrics(tmp_path / 'resumed')] == [1, 2, 3]

    # Only the run directory: every other setting comes from the checkpoint.
    resumed = train.main(['--save', str(tmp_path / 'resumed'), '--resume'])
    assert 'resumed after epoch 2' in (tmp_path / 'resumed' / 'log.txt').read_text()
    assert max_difference(weights(tmp_path / 'whole' / 'model.pt'),
                          weights(tmp_path / 'resumed' / 'model.pt')) == 0
    assert resumed['test_loss'] == whole['test_loss'] and resumed['test_acc'] == whole['test_acc']
    same = ['epoch', 'lr', 'drop_path_prob', 'train_loss', 'train_acc', 'test_loss', 'test_acc']
    assert ([{k: m[k] for k in same} for m in metrics(tmp_path / 'resumed')] ==
            [{k: m[k] for k in same} for m in metrics(tmp_path / 'whole')])
    assert metrics(tmp_path / 'whole')[2]['drop_path_prob'] == pytest.approx(0.2)
    # The 3rd epoch, logged before the interruption and trained again, is logged once.
    assert (tmp_path / 'resumed' / 'log.txt').read_text().count('epoch 3/3') == 1


def test_resume_keeps_the_runs_configuration(tiny_cifar, tmp_path, capsys):
    train.main(tiny_args(tiny_cifar, tmp_path / 'run', '--epochs', 1, '--batch_size', 16))
    stored = json.loads((tmp_path / 'run' / 'args.json').read_text())
    assert stored['arch'] == 'BayesNAS' and stored['amp'] is False and stored['cutout'] is True
    line = user_error(['--save', str(tmp_path / 'run'), '--resume', '--learning_rate', '0.1'], capsys)
    assert '--learning_rate' in line and 'resumed run' in line
    # A finished run resumed: nothing left to train, its network is evaluated again.
    first = metrics(tmp_path / 'run')
    again = train.main(['--save', str(tmp_path / 'run'), '--resume'])
    assert again['test_acc'] == first[-1]['test_acc'] and metrics(tmp_path / 'run') == first
    # A new run does not overwrite a finished one.
    line = user_error(tiny_args(tiny_cifar, tmp_path / 'run', '--epochs', 1, '--batch_size', 16), capsys)
    assert 'already holds a run' in line


# ---------------------------------------------------------------------------------------------
# Two processes (torchrun, gloo on the CPU)
# ---------------------------------------------------------------------------------------------

def train_as(world, argv):
    """Train as `world` data-parallel processes do, in this process: each global batch is cut into
    `world` contiguous slices, each slice's forward pass normalises with its own BatchNorm statistics,
    the gradients are averaged, and the running statistics kept are those of slice 0 (rank 0's).
    With world=1 this is plain training, which the test checks against train.py itself.
    Returns the state dict and the test summary."""
    args = argparse.Namespace(**train.fresh_args(vars(train.build_parser().parse_args(argv))))
    assert args.drop_path_prob == 0      # drop-path masks come from each process's own generator
    single, cpu = train.Job(), torch.device('cpu')
    utils.set_seed(args.seed)
    genotype, _ = train.load_genotype(args)
    batches, test, classes = train.cifar_data(args, cpu, single)     # the global batches
    _, net = train.build_network(train.network_config(args, genotype, classes))
    optimizer = torch.optim.SGD(net.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = train.make_scheduler(optimizer, args)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        net.train()
        batches.set_epoch(epoch)
        for x, y in batches:
            x, y = train.to_device(x, y, cpu, args)
            optimizer.zero_grad()
            for rank, (xs, ys) in enumerate(zip(x.chunk(world), y.chunk(world))):
                logits, logits_aux = net(xs)
                loss = criterion(logits, ys) + args.auxiliary_weight * criterion(logits_aux, ys)
                (loss / world).backward()
                if rank == 0:
                    rank0_buffers = [b.clone() for b in net.buffers()]
            with torch.no_grad():
                for b, b0 in zip(net.buffers(), rank0_buffers):
                    b.copy_(b0)
            nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
            optimizer.step()
        scheduler.step()
    return net.state_dict(), train.evaluate(net, test, args, cpu, single)


def test_two_processes_train_like_one_process_with_batchnorm_per_slice(tiny_cifar, tmp_path):
    # Batch 32: 5 steps of 16 images per process and epoch.
    flags = ['--epochs', 2, '--batch_size', 32, '--drop_path_prob', 0, '--seed', 5]
    argv = tiny_args(tiny_cifar, tmp_path / 'two', *flags)
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                           '--standalone', 'train.py', *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '2 process(es) on cpu, global batch 32' in proc.stdout
    two = metrics(tmp_path / 'two')
    assert [m['epoch'] for m in two] == [1, 2]

    one = train.main(tiny_args(tiny_cifar, tmp_path / 'one', *flags))
    one_weights = weights(tmp_path / 'one' / 'model.pt')
    two_weights = weights(tmp_path / 'two' / 'model.pt')

    # The reference reproduces train.py's single-process run ...
    ref1, test1 = train_as(1, argv)
    assert max_difference(ref1, one_weights) < 1e-6
    assert test1['loss'] == pytest.approx(one['test_loss'], abs=1e-6)
    # ... and the two processes are that same training with BatchNorm statistics per slice: the
    # same images and augmentation, averaged gradients, rank 0's running statistics, the test set
    # split between the processes and summed.
    # (Equal to rounding: the all-reduce may add the two gradients in another order.)
    ref2, test2 = train_as(2, argv)
    assert max_difference(ref2, two_weights) < 1e-5
    assert test2['loss'] == pytest.approx(two[-1]['test_loss'], abs=1e-5)
    assert test2['acc'] == two[-1]['test_acc']
    # Per-slice BatchNorm makes a difference far above that tolerance (0.09 in the running
    # statistics, 0.01 in the weights), so the comparison can tell the two apart.
    assert max_difference(ref1, two_weights) > 1e-3


# Normal cells that read only their second input (node 1): they build no preprocessing for node 0.
ONE_INPUT = genotypes.Genotype(
    normal=[('sep_conv_3x3', 1, 2), ('skip_connect', 1, 3), ('max_pool_3x3', 2, 3)], normal_concat=[2, 3],
    reduce=genotypes.DARTS_V2.reduce, reduce_concat=genotypes.DARTS_V2.reduce_concat)


def test_two_processes_train_a_cell_that_reads_one_input(tiny_cifar, tmp_path):
    # DDP without unused-parameter detection fails in the second step if some parameter gets no
    # gradient, as an unread input's preprocessing would not.
    path = tmp_path / 'one_input.json'
    genotypes.save_json(ONE_INPUT, path)
    argv = tiny_args(tiny_cifar, tmp_path / 'run', '--genotype', path, '--epochs', 1, '--batch_size', 32,
                     '--drop_path_prob', 0)
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                           '--standalone', 'train.py', *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [m['epoch'] for m in metrics(tmp_path / 'run')] == [1]


# ---------------------------------------------------------------------------------------------
# ImageNet
# ---------------------------------------------------------------------------------------------

def write_image_folder(root, classes, per_class, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / c / f'{i}.png')


def test_imagenet_network_trains_on_an_image_folder(tmp_path, capsys):
    data = tmp_path / 'imagenet'
    write_image_folder(data / 'train', ['n01', 'n02', 'n03'], 4)
    write_image_folder(data / 'val', ['n01', 'n02', 'n03'], 2, seed=1)
    result = train.main(['--dataset', 'imagenet', '--data', str(data), '--save', str(tmp_path / 'run'),
                         '--layers', '3', '--init_channels', '4', '--batch_size', '4', '--epochs', '2',
                         '--workers', '0', '--report_freq', '1000'])
    # DARTS's ImageNet network (two stride-2 stems, 224 x 224 inputs) for the 3 classes found.
    net = NetworkImageNet(4, 3, 3, True, genotypes.BayesNAS)
    assert result['params'] == utils.count_params(net)
    assert result['macs'] == utils.count_macs(net, (3, 224, 224))
    net.load_state_dict(weights(tmp_path / 'run' / 'model.pt'))
    # ImageNet's recipe: step schedule (x 0.97 per epoch), label smoothing, no cutout or drop-path.
    lines = metrics(tmp_path / 'run')
    assert [m['lr'] for m in lines] == pytest.approx([0.1, 0.097])
    assert all(m['drop_path_prob'] == 0 for m in lines)
    stored = json.loads((tmp_path / 'run' / 'args.json').read_text())
    assert stored['label_smooth'] == 0.1 and stored['cutout'] is False and stored['amp'] is True
    assert 'imagenet: 3 cells, 4 channels' in capsys.readouterr().out
    assert result['test_top5'] == 100          # 3 classes: every image is in its top 5
    evaluated = train.main(['--eval_only', str(tmp_path / 'run' / 'model.pt'), '--data', str(data),
                            '--workers', '0'])
    assert evaluated['test_acc'] == result['test_acc']
    assert evaluated['test_loss'] == pytest.approx(result['test_loss'], rel=1e-5)

    # A class folder missing from val/ would shift the labels of the classes after it.
    (data / 'val' / 'n02').rename(tmp_path / 'elsewhere')
    line = user_error(['--eval_only', str(tmp_path / 'run' / 'model.pt'), '--data', str(data),
                       '--workers', '0'], capsys)
    assert "'n02'" in line and 'same class folders' in line


# ---------------------------------------------------------------------------------------------
# User mistakes: one line on stderr, exit code 2, no traceback
# ---------------------------------------------------------------------------------------------

def test_unknown_arch_is_one_line_without_traceback(tiny_cifar, tmp_path):
    proc = subprocess.run([sys.executable, 'train.py', '--arch', 'NoSuchCell', '--data', str(tiny_cifar),
                           '--save', str(tmp_path / 'run')], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count('\n') == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.startswith('error: ') and "'NoSuchCell'" in proc.stderr
    assert 'BayesNAS_0_01' in proc.stderr             # the known names are listed
    assert not (tmp_path / 'run').exists()            # nothing was written


@pytest.mark.parametrize('flag, value, words', [
    ('--epochs', '0', '--epochs must be at least 1'),
    ('--learning_rate', 'fast', "invalid float value: 'fast'"),
    ('--learning_rate', 'inf', 'positive and finite'),
    ('--drop_path_prob', '1', 'in [0, 1)'),
    ('--batch_size', '1', 'fewer than 2 images'),
    ('--init_channels', '5', 'even'),
    ('--dataset', 'mnist', "invalid choice: 'mnist'"),
])
def test_bad_flag_values(tiny_cifar, tmp_path, capsys, flag, value, words):
    line = user_error(tiny_args(tiny_cifar, tmp_path / 'run', flag, value), capsys)
    assert words in line
    assert not (tmp_path / 'run').exists()


def test_malformed_genotype_files(tiny_cifar, tmp_path, capsys):
    bad = tmp_path / 'genotype.json'
    bad.write_text('{"normal": [["sep_conv_3x3", 0, 2]]')
    assert 'not valid JSON' in user_error(tiny_args(tiny_cifar, tmp_path / 'r', '--genotype', bad), capsys)
    g = genotypes.BayesNAS._asdict()
    bad.write_text(json.dumps({**g, 'normal': [['conv_9x9', 0, 2]] + g['normal']}))
    assert "unknown operation 'conv_9x9'" in user_error(
        tiny_args(tiny_cifar, tmp_path / 'r', '--genotype', bad), capsys)
    line = user_error(tiny_args(tiny_cifar, tmp_path / 'r', '--genotype', tmp_path / 'missing.json'), capsys)
    assert 'missing.json' in line
    line = user_error(tiny_args(tiny_cifar, tmp_path / 'r', '--genotype', bad, '--arch', 'DARTS_V2'), capsys)
    assert 'not both' in line


def test_missing_and_corrupt_data(tiny_cifar, tmp_path, capsys):
    line = user_error(tiny_args(tmp_path / 'nowhere', tmp_path / 'r'), capsys)
    assert 'CIFAR-10 not found' in line
    corrupt = write_cifar(tmp_path / 'corrupt', 10, 4)
    (corrupt / 'cifar-10-batches-py' / 'data_batch_3').write_bytes(b'not a pickle')
    assert 'data_batch_3 is corrupt' in user_error(tiny_args(corrupt, tmp_path / 'r'), capsys)
    line = user_error(tiny_args(tiny_cifar, tmp_path / 'r', '--batch_size', 512), capsys)
    assert 'fewer images than one batch' in line
    line = user_error(['--dataset', 'imagenet', '--data', str(tmp_path / 'nowhere')], capsys)
    assert 'ImageNet folder' in line and 'missing' in line


def test_corrupt_or_foreign_checkpoints(tiny_cifar, tmp_path, capsys):
    run = tmp_path / 'run'
    line = user_error(['--save', str(run), '--resume'], capsys)
    assert 'checkpoint.pt is missing' in line
    run.mkdir()
    (run / 'checkpoint.pt').write_bytes(b'\x00' * 100)
    assert 'corrupt' in user_error(['--save', str(run), '--resume'], capsys)
    assert 'corrupt' in user_error(['--eval_only', str(run / 'checkpoint.pt')], capsys)
    # A checkpoint of another program, a configuration without the network's sizes, and a network
    # without training state where a checkpoint to resume should be.
    torch.save({'model': {}}, run / 'checkpoint.pt')
    assert 'not a checkpoint of train.py' in user_error(['--save', str(run), '--resume'], capsys)
    torch.save({'model': {}, 'config': {'dataset': 'cifar10'}}, run / 'model.pt')
    assert 'cannot build the network' in user_error(['--eval_only', str(run / 'model.pt')], capsys)
    torch.save({'model': {}, 'config': {'dataset': 'cifar10'}}, run / 'checkpoint.pt')
    assert 'holds no training state' in user_error(['--save', str(run), '--resume'], capsys)
    # --eval_only takes everything but where and how from the checkpoint.
    line = user_error(['--eval_only', str(run / 'model.pt'), '--layers', '8'], capsys)
    assert '--layers does not apply to --eval_only' in line
    # A checkpoint of search.py is named as such.
    utils.save_checkpoint({'kind': 'search', 'args': {}, 'model': {}}, run / 'checkpoint.pt')
    assert 'is a checkpoint of search.py, not of train.py' in user_error(['--save', str(run), '--resume'], capsys)


def test_deterministic_flag(tiny_cifar, tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    def stop(args, device, job):
        raise Stop
    monkeypatch.setattr(train, 'load_data', stop)
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        with pytest.raises(Stop):
            train.main(tiny_args(tiny_cifar, tmp_path / 'run', '--deterministic'))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert train.fresh_args({})['deterministic'] is False
