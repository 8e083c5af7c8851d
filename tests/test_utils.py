"""Tests of utils.py: data loading, augmentation, batching, run directories, checkpoints, statistics."""
import json
import math
import pickle
import random
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import utils  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
CIFAR_SUBSET = DATA / 'cifar10-subset'
MNIST_SUBSET = DATA / 'mnist-subset'
needs_cifar = pytest.mark.skipif(not (CIFAR_SUBSET / 'cifar-10-batches-py').is_dir(),
                                 reason=f'shared CIFAR-10 subset not found at {CIFAR_SUBSET}')
needs_mnist = pytest.mark.skipif(not (MNIST_SUBSET / 'MNIST' / 'raw').is_dir(),
                                 reason=f'shared MNIST subset not found at {MNIST_SUBSET}')


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and MNIST
# ---------------------------------------------------------------------------------------------

def write_cifar(folder, sizes=(3, 2, 2, 2, 2), test_size=4, seed=0):
    """Small CIFAR-10 pickles in the official format; returns the arrays written, in file order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
    for name, n in zip(names, list(sizes) + [test_size]):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, 'wb') as f:
            pickle.dump({'batch_label': name, 'data': data, 'labels': labels,
                         'filenames': [f'{i}.png' for i in range(n)]}, f)
        written.append((data, labels))
    return written


@needs_cifar
def test_cifar_subset_loads():
    d = utils.load_cifar10(CIFAR_SUBSET)
    assert d['train_x'].shape == (5170, 3, 32, 32) and d['train_x'].dtype == torch.uint8
    assert d['test_x'].shape == (1017, 3, 32, 32) and d['test_x'].dtype == torch.uint8
    assert d['train_y'].shape == (5170,) and d['train_y'].dtype == torch.int64
    assert d['test_y'].shape == (1017,) and d['test_y'].dtype == torch.int64
    for y in (d['train_y'], d['test_y']):
        assert set(y.tolist()) == set(range(10))
    # The folder itself is accepted as root too.
    d2 = utils.load_cifar10(CIFAR_SUBSET / 'cifar-10-batches-py')
    assert torch.equal(d2['test_x'], d['test_x'])


def test_cifar_own_pickles_layout(tmp_path):
    written = write_cifar(tmp_path / 'cifar-10-batches-py')
    d = utils.load_cifar10(tmp_path)
    train_data = np.concatenate([w[0] for w in written[:5]])
    train_labels = sum((w[1] for w in written[:5]), [])
    assert d['train_x'].shape == (11, 3, 32, 32)
    assert d['train_y'].tolist() == train_labels
    assert d['test_y'].tolist() == written[5][1]
    # Row layout: 1024 red values, then green, then blue, each a 32x32 image row by row.
    i = 4
    for c in range(3):
        plane = train_data[i, c * 1024:(c + 1) * 1024].reshape(32, 32)
        assert np.array_equal(d['train_x'][i, c].numpy(), plane)
    assert d['train_x'][i, 1, 2, 5].item() == train_data[i, 1024 + 2 * 32 + 5]


def test_cifar_missing_is_user_error(tmp_path):
    with pytest.raises(utils.UserError, match='--download') as e:
        utils.load_cifar10(tmp_path / 'nowhere')
    assert 'nowhere' in str(e.value)
    folder = tmp_path / 'cifar-10-batches-py'
    write_cifar(folder)
    (folder / 'data_batch_3').unlink()
    with pytest.raises(utils.UserError, match='data_batch_3'):
        utils.load_cifar10(tmp_path)


def test_cifar_corrupt_is_user_error(tmp_path):
    folder = tmp_path / 'cifar-10-batches-py'
    write_cifar(folder)
    (folder / 'test_batch').write_bytes(b'\x80\x04this is not a pickle')
    with pytest.raises(utils.UserError, match='test_batch is corrupt'):
        utils.load_cifar10(tmp_path)
    write_cifar(folder)
    with open(folder / 'data_batch_2', 'wb') as f:  # a valid pickle with the wrong shape
        pickle.dump({'data': np.zeros((2, 100), np.uint8), 'labels': [0, 1]}, f)
    with pytest.raises(utils.UserError, match='data_batch_2 is corrupt'):
        utils.load_cifar10(tmp_path)


@needs_mnist
def test_mnist_subset_loads():
    d = utils.load_mnist(MNIST_SUBSET)
    assert d['train_x'].shape == (3678, 1, 28, 28) and d['train_x'].dtype == torch.uint8
    assert d['test_x'].shape == (10000, 1, 28, 28) and d['test_x'].dtype == torch.uint8
    assert d['train_y'].dtype == torch.int64 and d['train_y'].shape == (3678,)
    assert set(d['test_y'].tolist()) == set(range(10))
    assert d['train_x'].max().item() == 255


def test_mnist_missing_is_user_error(tmp_path):
    with pytest.raises(utils.UserError, match='MNIST not found'):
        utils.load_mnist(tmp_path)


def test_cifar_test_set_alone_reads_only_test_batch(tmp_path):
    written = write_cifar(tmp_path / 'cifar-10-batches-py')
    for i in range(1, 6):
        (tmp_path / 'cifar-10-batches-py' / f'data_batch_{i}').unlink()
    d = utils.load_cifar10(tmp_path, train=False)
    assert set(d) == {'test_x', 'test_y'}
    assert d['test_x'].flatten(1).numpy().tolist() == written[-1][0].tolist()
    (tmp_path / 'cifar-10-batches-py' / 'test_batch').unlink()
    with pytest.raises(utils.UserError, match='test_batch is missing .expected test_batch in'):
        utils.load_cifar10(tmp_path, train=False)


@needs_mnist
def test_truncated_mnist_is_reported_as_truncated_not_missing(tmp_path):
    raw = tmp_path / 'MNIST' / 'raw'
    raw.mkdir(parents=True)
    for name in utils.MNIST_FILES:
        (raw / name).write_bytes((MNIST_SUBSET / 'MNIST' / 'raw' / name).read_bytes())
    images = raw / 'train-images-idx3-ubyte'
    images.write_bytes(images.read_bytes()[:100000])
    with pytest.raises(utils.UserError, match='truncated or corrupt') as err:
        utils.load_mnist(tmp_path)
    assert 'not found' not in str(err.value)
    images.unlink()
    with pytest.raises(utils.UserError, match='MNIST not found.*train-images-idx3-ubyte is missing'):
        utils.load_mnist(tmp_path)


def test_imagenet_loaders_read_folders(tmp_path):
    from PIL import Image
    for split in ('train', 'val'):
        for cls in ('a', 'b'):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new('RGB', (40, 30), (i * 100, 50, 200)).save(tmp_path / split / cls / f'{i}.png')
    train, val, sampler = utils.imagenet_loaders(tmp_path, batch_size=2, workers=0, crop=16,
                                                 resize=20, pin_memory=False)
    assert sampler is None
    x, y = next(iter(train))
    assert x.shape == (2, 3, 16, 16) and y.dtype == torch.int64
    assert sum(len(b[1]) for b in val) == 4
    with pytest.raises(utils.UserError, match='val'):
        utils.imagenet_loaders(tmp_path / 'train', batch_size=2, workers=0)


def test_imagenet_epochs_are_a_function_of_seed_and_epoch(tmp_path):
    """With worker processes too: a loader that jumps to epoch 1 (a resumed run) gives exactly the
    images, order and random crops of one that went through epoch 0 first."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for cls in ('a', 'b', 'c'):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / split / cls / f'{i}.png')

    def epoch(loader, sampler, seed, e):
        utils.set_loader_epoch(loader, sampler, seed, e)
        return [(x.clone(), y.clone()) for x, y in loader]

    def loaders(seed):
        train, _, sampler = utils.imagenet_loaders(tmp_path, batch_size=4, workers=2, crop=16, resize=20,
                                                   pin_memory=False, seed=seed)
        return train, sampler

    a, b, other = loaders(5), loaders(5), loaders(6)
    first = epoch(*a, 5, 0)
    second = epoch(*a, 5, 1)
    resumed = epoch(*b, 5, 1)
    assert len(second) == len(resumed) == 3
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(second, resumed))
    assert not all(torch.equal(x, x2) for (x, _), (x2, _) in zip(first, second))
    assert not all(torch.equal(x, x2) for (x, _), (x2, _) in zip(second, epoch(*other, 6, 1)))


# ---------------------------------------------------------------------------------------------
# Normalisation and augmentation
# ---------------------------------------------------------------------------------------------

def distinct_images(n, c=3, h=8, w=8):
    """uint8 images whose pixels (1..255) identify their position, so any shift is visible."""
    base = (torch.arange(c * h * w) % 255 + 1).to(torch.uint8).view(1, c, h, w)
    return base.repeat(n, 1, 1, 1)


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = utils.normalize(x, mean, std)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)


def test_crop_flip_matches_manual_reference():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    pad = 2
    top = torch.tensor([0, 4, 2, 1, 3])
    left = torch.tensor([4, 0, 2, 3, 1])
    flip = torch.tensor([False, True, False, True, True])
    out = utils.crop_flip(x, pad, top, left, flip)
    padded = F.pad(x, (pad, pad, pad, pad))
    for i in range(5):
        ref = padded[i, :, top[i]:top[i] + 8, left[i]:left[i] + 8]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref), i


def test_augment_crops_shift_content_and_flip():
    n, pad = 64, 2
    x = distinct_images(n)
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    out = utils.augment(x, torch.Generator().manual_seed(3), crop_pad=pad, flip=True, cutout=0,
                        mean=mean, std=std)
    assert out.shape == x.shape and out.dtype == torch.float32
    # Every output must be exactly one crop (possibly mirrored) of the zero-padded image.
    padded = utils.normalize(F.pad(x[:1], (pad,) * 4), mean, std)[0]
    candidates = {}
    for t in range(2 * pad + 1):
        for l in range(2 * pad + 1):
            crop = padded[:, t:t + 8, l:l + 8]
            candidates[(t, l, False)] = crop
            candidates[(t, l, True)] = crop.flip(-1)
    found = []
    for i in range(n):
        match = [k for k, ref in candidates.items() if torch.equal(out[i], ref)]
        assert len(match) == 1, f'sample {i} is not a crop of its padded image'
        found.append(match[0])
    assert len({(t, l) for t, l, _ in found}) > 5  # offsets vary per sample
    assert {f for _, _, f in found} == {True, False}


def test_augment_is_deterministic_for_a_generator():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    kw = dict(crop_pad=4, flip=True, cutout=4)
    a = utils.augment(x, torch.Generator().manual_seed(7), **kw)
    b = utils.augment(x, torch.Generator().manual_seed(7), **kw)
    c = utils.augment(x, torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_without_randomness_is_normalize():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out = utils.augment(x, torch.Generator().manual_seed(0), crop_pad=0, flip=False, cutout=0)
    assert torch.equal(out, utils.normalize(x, utils.CIFAR_MEAN, utils.CIFAR_STD))


def test_cutout_zeroes_one_square():
    n, size = 64, 6
    x = torch.full((n, 3, 12, 12), 255, dtype=torch.uint8)
    out = utils.augment(x, torch.Generator().manual_seed(1), crop_pad=0, flip=False, cutout=size,
                        mean=(0.0,) * 3, std=(1.0,) * 3)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    full = 0
    for i in range(n):
        rows = zero[i, 0].any(dim=1).nonzero().flatten()
        cols = zero[i, 0].any(dim=0).nonzero().flatten()
        h, w = len(rows), len(cols)
        # A solid, contiguous rectangle: the square, clipped where it leaves the image.
        assert int(zero[i, 0].sum()) == h * w
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        assert size // 2 <= h <= size and size // 2 <= w <= size
        full += (h == size and w == size)
    assert full > 0


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------

def make_batches(**kw):
    n = 10
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n)
    return utils.Batches(x, y, batch_size=4, **kw)


def epoch_labels(b, epoch):
    b.set_epoch(epoch)
    return [yb.tolist() for _, yb in b]


def test_batches_order_is_a_function_of_seed_and_epoch():
    a, b = make_batches(seed=1), make_batches(seed=1)
    assert epoch_labels(a, 3) == epoch_labels(b, 3)
    e3, e4 = epoch_labels(a, 3), epoch_labels(a, 4)
    assert e3 != e4
    assert sorted(sum(e3, [])) == list(range(10))
    assert epoch_labels(make_batches(seed=2), 3) != e3
    assert [len(l) for l in e3] == [4, 4, 2] and len(a) == 3


def test_batches_move_on_each_pass_and_resume_exactly():
    aug = dict(crop_pad=2, flip=True, cutout=3)
    run = make_batches(seed=5, augment=aug)
    passes = [[(xb.clone(), yb.clone()) for xb, yb in run] for _ in range(3)]
    assert [yb.tolist() for _, yb in passes[0]] != [yb.tolist() for _, yb in passes[1]]
    resumed = make_batches(seed=5, augment=aug)
    resumed.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(passes[2], resumed):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_batches_drop_last_and_plain_normalisation():
    b = make_batches(shuffle=False, drop_last=True)
    got = list(b)
    assert len(b) == 2 and len(got) == 2
    assert got[0][1].tolist() == [0, 1, 2, 3]
    assert got[0][0].dtype == torch.float32 and got[0][1].dtype == torch.int64
    assert torch.equal(got[0][0], utils.normalize(b.x[:4], utils.CIFAR_MEAN, utils.CIFAR_STD))


# ---------------------------------------------------------------------------------------------
# Devices and random state
# ---------------------------------------------------------------------------------------------

def test_get_device():
    if torch.cuda.is_available():
        assert utils.get_device() == torch.device('cuda:0')
        with pytest.raises(utils.UserError, match='out of range'):
            utils.get_device(torch.cuda.device_count())
    else:
        assert utils.get_device() == torch.device('cpu')
        with pytest.raises(utils.UserError, match='CUDA is not available'):
            utils.get_device(0)


def test_get_device_deterministic_mode():
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        utils.get_device(None, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert utils.os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    utils.set_seed(11)
    first = draw()
    utils.set_seed(11)
    assert draw() == first
    utils.save_checkpoint({'rng': utils.get_rng_state()}, tmp_path / 'rng.pt')
    expected = draw()
    draw()
    utils.set_rng_state(utils.load_checkpoint(tmp_path / 'rng.pt')['rng'])
    assert draw() == expected


# ---------------------------------------------------------------------------------------------
# Checkpoints and run directories
# ---------------------------------------------------------------------------------------------

def test_checkpoint_round_trip_and_replace(tmp_path):
    path = tmp_path / 'sub' / 'checkpoint.pt'
    state = {'model': nn.Linear(3, 2).state_dict(), 'epoch': 4, 'name': 'x',
             'history': [1.5, {'a': torch.ones(2)}]}
    utils.save_checkpoint(state, path)
    loaded = utils.load_checkpoint(path)
    assert loaded['epoch'] == 4 and loaded['name'] == 'x'
    assert torch.equal(loaded['model']['weight'], state['model']['weight'])
    assert torch.equal(loaded['history'][1]['a'], torch.ones(2))
    utils.save_checkpoint({'epoch': 5}, path)
    assert utils.load_checkpoint(path)['epoch'] == 5
    assert sorted(p.name for p in path.parent.iterdir()) == ['checkpoint.pt']


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / 'checkpoint.pt'
    utils.save_checkpoint({'epoch': 1}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        utils.save_checkpoint({'epoch': 2, 'bad': lambda: None}, path)  # cannot be pickled
    assert utils.load_checkpoint(path)['epoch'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['checkpoint.pt']


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(utils.UserError, match='is missing'):
        utils.load_checkpoint(tmp_path / 'none.pt')
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint at all')
    with pytest.raises(utils.UserError, match='corrupt or not a checkpoint'):
        utils.load_checkpoint(garbage)
    good = tmp_path / 'good.pt'
    utils.save_checkpoint({'w': torch.randn(100)}, good)
    torn = tmp_path / 'torn.pt'
    torn.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    with pytest.raises(utils.UserError, match='corrupt or not a checkpoint'):
        utils.load_checkpoint(torn)


def test_rundir_writes_its_files(tmp_path, capsys):
    run = utils.RunDir(tmp_path / 'a' / 'run', Namespace(lr=0.1, save=Path('x')))
    run.log('hello run')
    run.metric(epoch=1, loss=torch.tensor(0.5), acc=np.float64(90.0))
    run.metric(epoch=2, loss=0.25)
    assert 'hello run' in capsys.readouterr().out
    assert json.loads(run.file('args.json').read_text()) == {'lr': 0.1, 'save': 'x'}
    assert run.file('log.txt').read_text().strip().endswith('hello run')
    records = [json.loads(l) for l in run.file('metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records] == [1, 2]
    assert records[0]['loss'] == 0.5 and records[0]['acc'] == 90.0
    assert all(isinstance(r['time'], float) for r in records)


def test_rundir_refuses_an_existing_run_without_resume(tmp_path):
    run = utils.RunDir(tmp_path, {'lr': 0.1})
    run.log('first')
    utils.save_checkpoint({'epoch': 1}, run.file('checkpoint.pt'))
    with pytest.raises(utils.UserError, match='--resume'):
        utils.RunDir(tmp_path, {'lr': 0.2})
    again = utils.RunDir(tmp_path, {'lr': 0.2}, resume=True)
    again.log('second')
    log = again.file('log.txt').read_text()
    assert 'first' in log and 'second' in log and '"lr": 0.2' in log
    assert json.loads(again.file('args.json').read_text()) == {'lr': 0.1}


def test_rundir_removes_stale_temporaries_and_rewinds_its_files(tmp_path):
    run = utils.RunDir(tmp_path / 'run', {'lr': 0.1})
    run.log('step 1')
    run.metric(step=1)
    sizes = run.sizes()
    run.log('step 2, after the checkpoint')
    run.metric(step=2)
    # What a kill during a checkpoint write leaves, and a file of the user that only looks alike.
    stale = run.file('.checkpoint.pt.abc123.tmp')
    stale.write_bytes(b'half a checkpoint')
    other = run.file('notes.tmp')
    other.write_text('mine')
    again = utils.RunDir(tmp_path / 'run', {'lr': 0.1}, resume=True, rewind=sizes)
    assert not stale.exists() and other.exists()
    log = again.file('log.txt').read_text()
    assert 'step 1' in log and 'after the checkpoint' not in log and 'resumed with args' in log
    assert [json.loads(l)['step'] for l in again.file('metrics.jsonl').read_text().splitlines()] == [1]


def test_trim_metrics_keeps_the_records_asked_for(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text(''.join(json.dumps({'step': i}) + '\n' for i in range(5)) + '{"step": 5, "lo')
    utils.trim_metrics(path, lambda r: r['step'] <= 2)
    assert [json.loads(l)['step'] for l in path.read_text().splitlines()] == [0, 1, 2]
    utils.trim_metrics(tmp_path / 'none.jsonl', lambda r: True)     # no file: nothing to do
    assert not (tmp_path / 'none.jsonl').exists()


def test_atomic_writes_get_the_mode_of_ordinary_files(tmp_path):
    old = utils.os.umask(0o022)
    try:
        utils.save_checkpoint({'epoch': 1}, tmp_path / 'checkpoint.pt')
        utils.write_text_atomic(tmp_path / 'args.json', '{}')
        utils.RunDir(tmp_path / 'run', {'lr': 0.1})
        plain = tmp_path / 'plain.txt'
        plain.write_text('x')
    finally:
        utils.os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in
             (tmp_path / 'checkpoint.pt', tmp_path / 'args.json', tmp_path / 'run' / 'args.json', plain)}
    assert modes == dict.fromkeys(modes, 0o644)


def test_a_failed_write_names_its_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / 'checkpoint.pt'
    utils.save_checkpoint({'epoch': 1}, path)

    def full_disk(fd):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(utils.os, 'fsync', full_disk)
    with pytest.raises(OSError) as err:
        utils.save_checkpoint({'epoch': 2}, path)
    monkeypatch.undo()
    assert err.value.filename == str(path)
    assert utils.os_error_line(err.value) == f'No space left on device: {path}'
    assert utils.load_checkpoint(path)['epoch'] == 1 and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_rundir_refuses_a_file_where_the_directory_should_be(tmp_path):
    (tmp_path / 'afile').write_text('')
    with pytest.raises(utils.UserError, match='--save .*afile is a file, not a run directory'):
        utils.RunDir(tmp_path / 'afile', {'lr': 0.1})
    with pytest.raises(utils.UserError, match='--out .*afile/run: .*afile is a file, not a directory'):
        utils.RunDir(tmp_path / 'afile' / 'run', {'lr': 0.1}, flag='--out')


def test_checkpoint_kinds_new_and_old():
    assert utils.checkpoint_kind({'kind': 'train', 'prior': 1}) == 'train'
    assert utils.checkpoint_kind({'prior': {}, 'switch_optimizer': {}, 'phase': 1, 'step': 0}) == 'search'
    assert utils.checkpoint_kind({'config': {}, 'model': {}, 'epoch': 3}) == 'train'
    assert utils.checkpoint_kind({'script': 'compress', 'args': {}}) == 'compress'
    assert utils.checkpoint_kind({'model': {}}) is None
    with pytest.raises(utils.UserError, match='x.pt is a checkpoint of train.py, not of search.py'):
        utils.require_kind({'kind': 'train'}, 'search', 'x.pt')
    with pytest.raises(utils.UserError, match='x.pt is not a checkpoint of search.py'):
        utils.require_kind({'model': {}}, 'search', 'x.pt')


def test_state_dict_mismatch_is_short():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert utils.state_dict_mismatch(net, net.state_dict()) is None
    other = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2), nn.Linear(2, 2)).state_dict()
    del other['0.bias']
    assert utils.state_dict_mismatch(net, other) == (
        '1 missing (e.g. 0.bias), 2 unexpected (e.g. 2.weight), 2 of another shape (e.g. 0.weight: '
        '[5, 3] instead of [4, 3])')


def test_plot_curves(tmp_path):
    metrics = tmp_path / 'metrics.jsonl'
    lines = [json.dumps({'epoch': e, 'loss': 1.0 / (e + 1), 'acc': 10.0 * e}) for e in range(4)]
    metrics.write_text('\n'.join(lines) + '\n{"epoch": 4, "lo')  # a torn last line is skipped
    png = tmp_path / 'curves.png'
    assert utils.plot_curves(metrics, png, ['loss', 'missing', 'acc']) == ['loss', 'acc']
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_figure_writes_the_png_and_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt
    open_before = len(plt.get_fignums())
    with utils.figure(tmp_path / 'f.png', 2, 1, figsize=(3, 2)) as axes:
        assert len(axes) == 2
        axes[0].plot([0, 1], [1, 0])
    assert (tmp_path / 'f.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(ZeroDivisionError), utils.figure(tmp_path / 'g.png'):
        1 / 0
    assert not (tmp_path / 'g.png').exists() and len(plt.get_fignums()) == open_before


# ---------------------------------------------------------------------------------------------
# Meters and model statistics
# ---------------------------------------------------------------------------------------------

def test_meter_accuracy_and_check_finite():
    m = utils.AverageMeter()
    m.update(1.0, n=3)
    m.update(torch.tensor(3.0), n=1)
    assert m.avg == pytest.approx(1.5) and m.count == 4
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    target = torch.tensor([1, 1, 0, 2])
    top1, top2 = utils.accuracy(logits, target, topk=(1, 2))
    assert top1 == pytest.approx(25.0) and top2 == pytest.approx(50.0)
    utils.check_finite(torch.tensor(1.0), 'loss')
    for bad in (float('nan'), torch.tensor([1.0, float('inf')])):
        with pytest.raises(utils.UserError, match='loss is NaN/inf'):
            utils.check_finite(bad, 'loss')


def test_format_time():
    assert utils.format_time(5.25) == '5.2s'
    assert utils.format_time(125) == '2m 05s'
    assert utils.format_time(3 * 3600 + 61) == '3h 01m 01s'


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.auxiliary = nn.Linear(8, 10)

    def forward(self, x):
        x = self.bn(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.flatten(1))


def test_count_macs_and_params_by_hand():
    net = SmallNet()
    net.train()
    net.bn.eval()
    conv1 = (8 * 8 * 8) * 3 * 3 * 3          # outputs * in_channels * kernel
    conv2 = (8 * 4 * 4) * (8 // 2) * 3 * 3    # stride 2, two groups
    fc = 10 * 128
    assert utils.count_macs(net, (3, 8, 8)) == conv1 + conv2 + fc
    assert net.training and not net.bn.training and net.conv1.training
    assert not net.bn.num_batches_tracked.item()  # eval mode: running statistics untouched
    params = (8 * 3 * 9 + 8) + (8 * 4 * 9) + 2 * 8 + (128 * 10 + 10)
    assert utils.count_params(net) == params
    assert utils.count_params(net, skip=()) == params + 8 * 10 + 10


# ---------------------------------------------------------------------------------------------
# Command-line entry point
# ---------------------------------------------------------------------------------------------

def test_cli_turns_user_error_into_exit_2(tmp_path):
    script = tmp_path / 'tiny.py'
    script.write_text(textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import utils

        def main(argv=None):
            raise utils.UserError('no data at /nowhere')

        if __name__ == '__main__':
            utils.cli(main)
    '''))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == 'error: no data at /nowhere\n'


def test_cli_in_process(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        utils.cli(interrupted)
    assert e.value.code == 130
    calls = []
    utils.cli(lambda: calls.append(1))  # a normal run returns without exiting
    assert calls == [1]


def test_cli_turns_an_os_error_into_one_line(capsys):
    def full_disk():
        raise OSError(28, 'No space left on device', 'runs/x/checkpoint.pt')

    with pytest.raises(SystemExit) as e:
        utils.cli(full_disk)
    assert e.value.code == 2
    assert capsys.readouterr().err == 'error: No space left on device: runs/x/checkpoint.pt\n'


def parser():
    p = utils.Parser('tool.py')
    p.add_argument('--lambda', dest='lam', type=float, default=0.005)
    p.add_argument('--data', default='data')
    p.add_argument('--report_freq', type=int, default=50)
    p.add_argument('--untie', action='store_true')
    p.add_argument('--resume', action='store_true')
    return p


def test_parser_says_which_flags_were_given_and_refuses_abbreviations():
    args, given = parser().parse(['--lambda', '0.01', '--data', 'data'])
    assert (args.lam, args.data, args.report_freq) == (0.01, 'data', 50)
    assert given == {'lam': 0.01, 'data': 'data'}         # a default given explicitly counts too
    assert parser().option('lam') == '--lambda'
    with pytest.raises(utils.UserError, match=r"unrecognized arguments: --lam 0.01 \(see python tool.py --help\)"):
        parser().parse(['--lam', '0.01'])


def test_resumed_args_keep_the_run_and_refuse_changes():
    stored = {'lam': 0.01, 'data': 'somewhere', 'report_freq': 7, 'resume': False}   # no --untie yet
    p = parser()
    # Nothing given again: everything as the run was started; a flag it predates: its default.
    assert utils.resumed_args(p, stored, {'resume': True}, {'data', 'report_freq', 'resume'}) == \
        {'lam': 0.01, 'data': 'somewhere', 'report_freq': 7, 'untie': False, 'resume': True}
    # Where and how it runs may change; the same value of another flag is no change.
    got = utils.resumed_args(p, stored, {'data': 'here', 'report_freq': 3, 'lam': 0.01}, {'data', 'report_freq'})
    assert (got['data'], got['report_freq'], got['lam']) == ('here', 3, 0.01)
    with pytest.raises(utils.UserError, match=r"^--lambda 0.02 differs from the resumed run's 0.01; .*--data"):
        utils.resumed_args(p, stored, {'lam': 0.02}, {'data', 'report_freq'})
    with pytest.raises(utils.UserError, match="--untie True differs from the resumed run's False"):
        utils.resumed_args(p, stored, {'untie': True}, {'data'})


# ---------------------------------------------------------------------------------------------
# What every script does with its run directory (subprocesses from the repository root)
# ---------------------------------------------------------------------------------------------

SCRIPT_DATA = {'search.py': ['--data', CIFAR_SUBSET], 'train.py': ['--data', CIFAR_SUBSET],
               'compress.py': ['--data', MNIST_SUBSET]}


def run_script(*args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**utils.os.environ, 'OMP_NUM_THREADS': '1'})


@needs_cifar
@needs_mnist
@pytest.mark.parametrize('script', sorted(SCRIPT_DATA))
def test_save_naming_a_file_is_one_line(script, tmp_path):
    afile = tmp_path / 'afile'
    afile.write_text('')
    proc = run_script(script, *SCRIPT_DATA[script], '--save', afile)
    assert proc.returncode == 2
    assert proc.stderr == f'error: --save {afile} is a file, not a run directory; choose another --save\n'


@needs_cifar
@pytest.mark.skipif(not Path('/dev/full').exists(), reason='no /dev/full to stand for a full disk')
def test_a_full_disk_is_one_line(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'log.txt').symlink_to('/dev/full')      # every write to it fails: no space left
    proc = run_script('search.py', '--data', CIFAR_SUBSET, '--save', run, '--layers', '3',
                      '--init_channels', '4')
    assert proc.returncode == 2
    assert proc.stderr == f'error: No space left on device: {run / "log.txt"}\n'


def test_shuffled_split_is_disjoint_covers_the_set_and_is_seeded():
    train, valid = utils.shuffled_split(100, 80, 0)
    assert len(valid) == 20 and len(train) == 80
    assert sorted(train.tolist() + valid.tolist()) == list(range(100))
    assert utils.shuffled_split(100, 80, 0)[1].tolist() == valid.tolist()
    assert utils.shuffled_split(100, 80, 1)[1].tolist() != valid.tolist()


def test_spearman_is_the_rank_correlation():
    assert utils.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert utils.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert utils.spearman(torch.tensor([1., 5., 2., 3.]), [1, 100, 2, 3]) == pytest.approx(1)   # ranks only
    assert math.isnan(utils.spearman([1, 2], [2, 1]))


def test_read_metrics_skips_a_torn_line_and_values_that_are_not_records(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"step": 1}\n[1, 2]\n3\n{"step": 2}\n{"st')
    assert utils.read_metrics(path) == [{'step': 1}, {'step': 2}]
