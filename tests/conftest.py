"""Shared test fixtures: the real data subsets beside the project, and smaller copies of them."""
import pickle
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
CIFAR_SUBSET = SHARED / 'cifar10-subset'
MNIST_SUBSET = SHARED / 'mnist-subset'

# The test processes share a small machine: one thread per process avoids oversubscribing its cores
# when a test starts helper processes, and keeps float results identical from run to run.
torch.set_num_threads(1)


def needs_cifar():
    if not (CIFAR_SUBSET / 'cifar-10-batches-py').is_dir():
        pytest.skip(f'the shared CIFAR-10 subset is not at {CIFAR_SUBSET} (../shared is absent)')


def write_cifar_copy(root, train_per_batch, test_images):
    """A cifar-10-batches-py folder under root holding the first images of each shared pickle."""
    needs_cifar()
    src, dst = CIFAR_SUBSET / 'cifar-10-batches-py', Path(root) / 'cifar-10-batches-py'
    dst.mkdir(parents=True, exist_ok=True)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        with open(src / name, 'rb') as f:
            batch = pickle.load(f, encoding='latin1')
        n = test_images if name == 'test_batch' else train_per_batch
        with open(dst / name, 'wb') as f:
            pickle.dump(dict(batch, data=batch['data'][:n], labels=batch['labels'][:n],
                             filenames=batch['filenames'][:n]), f)
    return Path(root)


@pytest.fixture
def small_cifar(tmp_path):
    """factory(train_per_batch, test_images) -> a data root of real CIFAR-10 images (5 training batches)."""
    return lambda train_per_batch, test_images=100: write_cifar_copy(
        tmp_path / f'cifar-{train_per_batch}-{test_images}', train_per_batch, test_images)
