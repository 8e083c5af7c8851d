"""search.py as a harness: a method registered in one line runs through its phases, checkpoints,
resumes exactly and writes its genotype; cell gates choose the ops a forward pass computes."""
import json
import sys
import types

import pytest
import torch

import genotypes
import model_search
import search
import utils


# ----------------------------------------------------------------------------------------------------
# A method in one file: uniform single-path training of a NAS-Bench-201 supernet without switches
# ----------------------------------------------------------------------------------------------------

class SinglePath:
    """A weight-sharing supernet trained one sampled path at a time (each edge computes one op per
    step); the cell is each edge's op with the largest weight norm."""

    name = 'single-path'

    def __init__(self, args, space, device, run, data=None):
        self.args, self.run = args, run
        edges = [(op, i, j) for j in range(1, genotypes.NB201_NODES) for i in range(j)
                 for op in genotypes.NB201_CANDIDATES]
        self.model = model_search._NB201(args.init_channels, args.layers, 10, edges, switches=False)
        self.model.forward = self.model.logits
        self.sampled = []                   # the paths of every step, for the test to read

        def one_op(cell, live):
            path = [[ops[int(torch.randint(len(ops), ()))]] if cell.training else list(ops) for ops in live]
            if cell.training and cell is self.model.cells[0]:
                self.sampled.append([p[0] for p in path])
            return [(p, 1.) for p in path]
        model_search.set_gate(self.model, one_op)

    def describe(self):
        return 'one op per edge and step'

    def weight_parameters(self):
        return list(self.model.parameters())

    def state_dict(self):
        return dict(paths=len(self.sampled))

    def load_state_dict(self, state):
        self.sampled = [None] * state['paths']

    def start_phase(self, kind):
        pass

    def before_step(self, kind, i, n):
        pass

    def regulariser(self, kind):
        if not self.args.l2:
            return None
        return self.args.l2 * sum(w.square().sum() for w in self.model.parameters())

    def optimizers(self, kind):
        return []

    def status(self, kind):
        return ''

    def end_phase(self, kind, epoch, data, step):
        return dict(epoch=epoch + 1, paths=len(self.sampled))

    def genotype(self):
        cell = self.model.cells[0]
        ops = []
        for edge in cell.edges:
            norms = [sum(p.norm().item() for p in op.parameters()) for op in edge.ops]
            ops.append((edge.names[max(range(len(norms)), key=norms.__getitem__)], edge.src, edge.dst))
        return genotypes.nb201_string(ops), 'derived by the single-path test method'


def single_path_module():
    m = types.ModuleType('single_path')

    def add_flags(p):
        p.add_argument('--epochs', type=int, default=2)
        p.add_argument('--l2', type=float, default=0.)

    m.add_flags = add_flags
    m.defaults = lambda args, space: None
    m.rules = lambda a: [(a.epochs >= 1, f'--epochs must be at least 1, got {a.epochs}')]
    m.parts = lambda args: (0.5, '--share', {'train': ('rest', dict(crop_pad=4, flip=True), True, 0, True, 'training')})
    m.phases = lambda args: [('train', e) for e in range(args.epochs)]
    m.steps = lambda args, data: dict(train=len(data['train']))
    m.phase_name = lambda kind, epoch: f'epoch {epoch + 1}'
    m.describe_data = lambda args, data, steps: f'{len(data["train"].x)} training images'
    m.Method = SinglePath
    return m


@pytest.fixture
def single_path(monkeypatch):
    monkeypatch.setitem(sys.modules, 'single_path', single_path_module())
    monkeypatch.setitem(search.METHODS, 'single_path', 'single_path')


TINY = ['--method', 'single_path', '--space', 'nb201', '--layers', '1', '--init_channels', '4',
        '--batch_size', '8', '--report_freq', '2', '--seed', '1']


def test_a_registered_method_runs_through_the_harness_and_resumes_exactly(single_path, small_cifar, tmp_path,
                                                                          monkeypatch):
    data = str(small_cifar(16, 10))                 # 80 images: 40 for training, 5 steps an epoch
    whole = search.main(['--data', data, '--save', str(tmp_path / 'whole')] + TINY)
    assert [h['epoch'] for h in whole['history']] == [1, 2]
    assert genotypes.nb201_cell(whole['genotype'])
    log = (tmp_path / 'whole' / 'log.txt').read_text()
    assert 'single-path search in the nb201 space' in log and '40 training images' in log
    assert json.loads((tmp_path / 'whole' / 'genotype.json').read_text())
    with pytest.raises(utils.UserError, match='--epochs must be at least 1, got 0'):
        search.main(['--data', data, '--save', str(tmp_path / 'bad'), '--epochs', '0'] + TINY)

    # Cut after the 7th step (the checkpoint after step 1 of epoch 2 at --checkpoint_freq 1), resumed.
    original, count = search.Search.train_step, [0]

    def cut_after(self, x, y, kind):
        count[0] += 1
        if count[0] == 8:
            raise KeyboardInterrupt
        return original(self, x, y, kind)
    monkeypatch.setattr(search.Search, 'train_step', cut_after)
    with pytest.raises(KeyboardInterrupt):
        search.main(['--data', data, '--save', str(tmp_path / 'cut'), '--checkpoint_freq', '1'] + TINY)
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, 'single_path', single_path_module())
    monkeypatch.setitem(search.METHODS, 'single_path', 'single_path')
    cut = search.main(['--save', str(tmp_path / 'cut'), '--resume'])
    assert 'resumed in epoch 2 at step 2/5' in (tmp_path / 'cut' / 'log.txt').read_text()
    a = torch.load(tmp_path / 'whole' / 'checkpoint.pt', weights_only=False)
    b = torch.load(tmp_path / 'cut' / 'checkpoint.pt', weights_only=False)
    for k, v in a['model'].items():
        assert torch.equal(v, b['model'][k]), k
    assert cut['genotype'] == whole['genotype']


def test_a_methods_regulariser_enters_the_training_step(single_path, small_cifar, tmp_path):
    data = str(small_cifar(16, 10))

    def weight_norm(name, *extra):
        search.main(['--data', data, '--save', str(tmp_path / name), '--epochs', '1'] + TINY + list(extra))
        state = torch.load(tmp_path / name / 'checkpoint.pt', weights_only=False)
        return sum(v.square().sum().item() for k, v in state['model'].items() if k.endswith('weight'))
    assert weight_norm('l2', '--l2', '0.5') < 0.9 * weight_norm('plain')


# ----------------------------------------------------------------------------------------------------
# Cell gates
# ----------------------------------------------------------------------------------------------------

def hooked(net):
    calls = []
    for cell in net.cells:
        for edge in cell.edges:
            for k, op in enumerate(edge.ops):
                op.register_forward_hook(lambda m, i, o, key=(edge.src, edge.dst, k): calls.append(key))
    return calls


@pytest.mark.parametrize('switches', [True, False])
def test_a_gate_computes_only_the_ops_it_chooses_and_scales_their_sum(switches):
    torch.manual_seed(0)
    edges = [(op, i, j) for j in range(1, genotypes.NB201_NODES) for i in range(j)
             for op in genotypes.NB201_CANDIDATES]
    net = model_search._NB201(4, 1, 10, edges, switches=switches).eval()
    calls = hooked(net)
    x = torch.randn(2, 3, 8, 8)
    everything = net.logits(x)
    assert len(calls) == 3 * 6 * len(genotypes.NB201_CANDIDATES)
    calls.clear()
    conv = genotypes.NB201_CANDIDATES.index('nor_conv_3x3')
    model_search.set_gate(net, lambda cell, live: [([conv], 1.) for _ in live])
    one = net.logits(x)
    assert sorted(set(k for _, _, k in calls)) == [conv] and len(calls) == 3 * 6
    assert not torch.allclose(one, everything)
    # Scaling an edge's sum by 2 is not the same network; the gate None computes everything again.
    model_search.set_gate(net, lambda cell, live: [([conv], 2.) for _ in live])
    assert not torch.allclose(net.logits(x), one)
    model_search.set_gate(net, None)
    assert torch.allclose(net.logits(x), everything)
