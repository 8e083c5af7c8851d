"""PGNAS (pgnas.py): the concrete gate, the regulariser's gradients, hard candidates, their seeds and
genotypes, the fixed-rate control, and a tiny search end to end in both spaces."""
import copy
import io
import types

import pytest
import torch

import genotypes
import pgnas
import utils
from conftest import CIFAR_SUBSET, needs_cifar
from operations import Zero


def make_args(**kw):
    base = dict(learning_rate=0.05, momentum=0.9, weight_decay=3e-4, grad_clip=5., train_size=1000)
    return types.SimpleNamespace(**dict(base, **kw))


def tiny(space, **kw):
    """A PGNAS with its smallest supernet: 4 channels, one cell per stage (nb201) or three cells (darts)."""
    torch.manual_seed(0)
    method = pgnas.PGNAS(make_args(**kw), space, 'cpu')
    method.build_model(4, 1 if space == 'nb201' else 3, 10)
    return method


def random_batch(n=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


# ----------------------------------------------------------------------------------------------------
# The concrete gate
# ----------------------------------------------------------------------------------------------------

def test_relaxed_drop_rate_approaches_p_as_the_temperature_goes_to_zero():
    torch.manual_seed(0)
    p = 0.1
    errors, binary = [], []
    for temperature in (1.0, 0.2, 0.01):
        gate = pgnas.ConcreteGate(1000, p, temperature).train()
        drop = 1 - gate.relaxed_keep(200).detach()
        errors.append(abs(float(drop.mean()) - p))
        binary.append(float(((drop > 0.01) & (drop < 0.99)).float().mean()))
    # At temperature 1 the mean relaxed drop is far from p; it closes in as the temperature falls, and
    # the masks become binary.
    assert errors[0] > 0.05 and errors[0] > errors[1] > errors[2] and errors[2] < 0.005
    assert binary[0] > binary[1] > binary[2] and binary[2] < 0.02


def test_relaxed_masks_per_sample_and_channel_no_rescaling_eval_is_expected_mask():
    torch.manual_seed(0)
    gate = pgnas.ConcreteGate(6, 0.3, 1.0).train()
    x = torch.ones(5, 6, 2, 2)
    y = gate(x)
    m = y[:, :, 0, 0]
    assert y.shape == x.shape and (y == m[:, :, None, None]).all()     # one value per sample and channel
    assert len({round(v, 6) for v in m.flatten().tolist()}) == 30       # every one drawn on its own
    assert float(y.detach().max()) <= 1                                 # kept inputs are not scaled up
    gate.eval()
    assert torch.allclose(gate(x), torch.full_like(x, 0.7))


def test_hard_mask_drops_each_unit_with_probability_p_and_is_shared_by_the_batch():
    gate = pgnas.ConcreteGate(20000, 0.3)
    mask = gate.draw_hard(torch.Generator().manual_seed(0))
    assert set(mask.tolist()) <= {0., 1.}
    assert abs(1 - float(mask.mean()) - 0.3) < 0.015
    gate.hard = mask
    y = gate.train()(torch.ones(3, 20000))
    assert (y == mask).all()


# ----------------------------------------------------------------------------------------------------
# The regulariser
# ----------------------------------------------------------------------------------------------------

def logit_grads(term, method):
    """d term / d logit of every gate."""
    grads = torch.autograd.grad(term, [x.gate.logit for x in method.gated], allow_unused=True)
    return [0. if g is None else float(g) for g in grads]


def test_l2_part_raises_p_more_strongly_the_larger_the_weights():
    method = tiny('nb201', pgnas_free_ops='gate')
    convs = [i for i, x in enumerate(method.gated) if x.module.convs]
    free = [i for i, x in enumerate(method.gated) if not x.module.convs]
    assert convs and free
    grads = {}
    for scale in (0., 0.1, 10.):
        m = copy.deepcopy(method)
        with torch.no_grad():
            for x in m.gated:
                for conv in x.module.convs:
                    conv.weight.mul_(scale)
        grads[scale] = logit_grads(pgnas.l2_term(m.gated, m.l2, m.n), m)
    # (l^2/N)(1-p)||W||^2 falls as p rises: its gradient on the logit is negative (an SGD step raises
    # p), in proportion to ||W||^2, so the larger the weights the stronger; no weights, no push.
    for i in convs:
        assert grads[10.][i] < grads[0.1][i] < 0
        assert grads[10.][i] == pytest.approx(grads[0.1][i] * 1e4, rel=1e-3)
        assert grads[0.][i] == 0
    for i in free:
        assert grads[0.1][i] == 0
    # For the weights it is a decay scaled by (1 - p): the more often a channel is dropped, the less.
    x = method.gated[convs[0]]
    w = x.module.convs[0].weight
    (gw,) = torch.autograd.grad(pgnas.l2_term([x], 3., 10.), [w])
    assert torch.allclose(gw, 2 * 3. / 10. * (1 - x.gate.p().detach()) * w.detach())


def test_entropy_part_pulls_p_towards_one_half():
    method = tiny('nb201')
    x = method.gated[0]
    for p, sign in ((0.1, -1), (0.3, -1), (0.5, 0), (0.7, 1), (0.9, 1)):
        with torch.no_grad():
            x.gate.logit.fill_(pgnas.logit(p))
        (g,) = torch.autograd.grad(pgnas.entropy_term([x], method.n), [x.gate.logit])
        # Negative gradient below 1/2 (an SGD step raises p), positive above (lowers it), zero at 1/2.
        assert (float(g) > 1e-12) - (float(g) < -1e-12) == sign
        # Its size: d/dlogit of p log p + (1-p) log(1-p) is logit(p) p (1 - p), times units / N.
        assert float(g) == pytest.approx(x.gate.units / method.n * pgnas.logit(p) * p * (1 - p), rel=1e-4, abs=1e-12)


def test_regulariser_value_matches_the_formula():
    method = tiny('nb201', pgnas_l2=7., pgnas_n=500.)
    expected = 0.
    for x in method.gated:
        p = float(x.gate.p().detach())
        if x.module.convs:
            expected += 7. / 500. * (1 - p) * sum(float(c.weight.pow(2).sum()) for c in x.module.convs)
        expected += x.gate.units / 500. * (p * torch.log(torch.tensor(p)) + (1 - p) * torch.log(torch.tensor(1 - p)))
    assert float(method.regulariser()) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize('space', ['nb201', 'darts'])
def test_a_carrier_starts_as_the_op_and_takes_the_coupled_l2(space):
    method = tiny(space)                    # free_ops='carrier', the default
    carried = [x for x in method.gated if x.module.carrier is not None]
    names = {x.name for x in carried}
    assert names == ({'skip_connect', 'avg_pool_3x3'} if space == 'nb201'
                     else {'skip_connect', 'max_pool_3x3', 'avg_pool_3x3'})
    assert all(x.module.convs == [x.module.carrier] and x.gate.units == x.module.carrier.in_channels
               for x in carried)
    # Initialised to the identity: with every channel kept, the gated op computes the op itself.
    x = carried[0]
    x.gate.hard = torch.ones(x.gate.units)
    inp = torch.randn(2, x.gate.units, 6, 6)
    assert torch.allclose(x.module(inp), x.module.op(inp), atol=1e-6)
    x.gate.hard = None
    # Its gate's logit feels the L2 term (an SGD step raises p), and its weights take no weight decay.
    (g,) = torch.autograd.grad(pgnas.l2_term([x], method.l2, method.n), [x.gate.logit])
    assert float(g) < 0
    no_decay = {id(t) for group in method.optimizer.param_groups if group['weight_decay'] == 0
                for t in group['params']}
    assert id(x.module.carrier.weight) in no_decay


# ----------------------------------------------------------------------------------------------------
# Hard candidates
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('space,free_ops', [('nb201', 'gate'), ('darts', 'gate'), ('nb201', 'carrier'),
                                            ('darts', 'carrier')])
def test_hard_candidate_equals_the_network_with_those_inputs_zeroed(space, free_ops):
    method = tiny(space, pgnas_free_ops=free_ops)
    masks = pgnas.draw_candidate(method.gated, seed=3, index=0)
    # Make sure the candidate drops something of each kind: channels of a conv (of a carrier too), and
    # a whole op.
    conv = next(i for i, x in enumerate(method.gated) if x.module.convs and x.module.carrier is None)
    free = next(i for i, x in enumerate(method.gated) if x.name in ('skip_connect', 'avg_pool_3x3')
                and x.cell_type == 'normal')
    masks[conv][:] = 1
    masks[conv][:2] = 0
    masks[free][:] = 0
    carried = [i for i, x in enumerate(method.gated) if x.module.carrier is not None]
    assert bool(carried) == (free_ops == 'carrier')
    if carried:
        masks[carried[-1]][:] = 1
        masks[carried[-1]][1] = 0
    x, _ = random_batch(seed=1)
    method.model.eval()
    method.set_candidate(masks)
    out = method.model(x)
    method.set_candidate(None)

    # The same network, every gate fully open, with the dropped input channels' kernel slices zeroed
    # and the ops with every unit dropped replaced by zeros (a hard candidate does not compute them).
    other = copy.deepcopy(method)
    with torch.no_grad():
        for g, m in zip(other.gated, masks):
            g.gate.hard = torch.ones_like(m)
            for c in g.module.convs:
                dropped = m == 0
                if c.groups == c.in_channels and c.groups > 1:
                    c.weight[dropped] = 0           # depthwise: input channel k is weight[k]
                else:
                    c.weight[:, dropped] = 0
            if not m.any():
                g.module.op = Zero(1 if g.cell_type == 'normal' else (2 if g.src < 2 else 1))
    reference = other.model.eval()(x)
    assert torch.allclose(out, reference, atol=1e-5)
    # And the full network differs: the candidate did drop something that matters.
    assert not torch.allclose(method.model.eval()(x), out, atol=1e-4)


def test_candidates_are_reproducible_from_the_seed():
    method = tiny('nb201')
    val = [random_batch(seed=2)]
    a = method.sample(val, 3, seed=7)
    b = method.sample(val, 3, seed=7)
    assert a == b
    masks = [pgnas.draw_candidate(method.gated, 7, i) for i in range(3)]
    assert all(torch.equal(u, v) for u, v in zip(masks[1], pgnas.draw_candidate(method.gated, 7, 1)))
    assert not all(torch.equal(u, v) for u, v in zip(masks[0], masks[1]))
    other = [pgnas.draw_candidate(method.gated, 8, i) for i in range(3)]
    assert not all(torch.equal(u, v) for u, v in zip(masks[0], other[0]))
    # Scoring a candidate leaves the running BatchNorm statistics as they were.
    bn = next(m for m in method.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    method.sample(val, 1, seed=0)
    assert torch.equal(before, bn.running_mean)


def set_gates(method, keep_of):
    with torch.no_grad():
        for x in method.gated:
            x.gate.logit.fill_(pgnas.logit(1 - keep_of(x)))


def test_nb201_genotype_rule():
    method = tiny('nb201')
    # Keep probabilities: conv3x3 0.9, skip 0.8, conv1x1 0.7, pool 0.6 everywhere.
    keep = {'nor_conv_3x3': 0.9, 'skip_connect': 0.8, 'nor_conv_1x1': 0.7, 'avg_pool_3x3': 0.6}
    set_gates(method, lambda x: keep[x.name])
    everything = [torch.ones(x.gate.units) for x in method.gated]
    assert method.genotype(everything) == '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|'
    # Drop the 3x3 convs on edge 0->1 (its next best, skip, wins) and every op on edge 1->3 ('none').
    masks = [torch.zeros(x.gate.units) if (x.src, x.dst) == (1, 3) or (x.src, x.dst, x.name) == (0, 1, 'nor_conv_3x3')
             else torch.ones(x.gate.units) for x in method.gated]
    assert method.genotype(masks) == '|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|none~1|nor_conv_3x3~2|'
    # An op with fewer than half its channels kept is not present.
    masks = [torch.ones(x.gate.units) for x in method.gated]
    for x, m in zip(method.gated, masks):
        if x.name == 'nor_conv_3x3':
            m[1:] = 0
    assert method.genotype(masks) == '|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|'


def test_darts_genotype_rule():
    method = tiny('darts')
    rank = {op: i for i, op in enumerate(genotypes.CANDIDATES)}
    # Keep probability falls with the op's place in CANDIDATES and with the edge's source node.
    set_gates(method, lambda x: 0.9 - 0.1 * rank[x.name] / len(rank) - 0.02 * x.src)
    everything = [torch.ones(x.gate.units) for x in method.gated]
    g = method.genotype(everything)
    genotypes.validate(g)
    first = genotypes.CANDIDATES[0]
    assert g.normal == [(first, 0), (first, 1)] * 4 and g.reduce == g.normal
    # Drop every op out of node 0 in the normal cells: each node then reads node 1 and its next source.
    masks = [torch.zeros(x.gate.units) if x.cell_type == 'normal' and x.src == 0 else torch.ones(x.gate.units)
             for x in method.gated]
    g = method.genotype(masks)
    assert g.normal == [(first, 0), (first, 1), (first, 1), (first, 2), (first, 1), (first, 2), (first, 1), (first, 2)]
    # (Node 2 has only two inputs: it keeps node 0's edge though nothing on it is present.) The
    # reduction cells keep everything.
    assert g.reduce == [(first, 0), (first, 1)] * 4


# ----------------------------------------------------------------------------------------------------
# The fixed-rate control, flags, state
# ----------------------------------------------------------------------------------------------------

def test_fixed_rate_control_keeps_p_fixed_and_learned_gates_move():
    x, y = random_batch(seed=4)
    fixed = tiny('nb201', pgnas_fixed_rate=0.3)
    learned = tiny('nb201')
    for _ in range(2):
        fixed.train_step(x, y)
        learned.train_step(x, y)
    assert all(row['p'] == pytest.approx(0.3, abs=1e-7) for row in fixed.gate_table())
    assert max(abs(row['p'] - 0.1) for row in learned.gate_table()) > 1e-5


def test_bad_settings_are_one_line_errors():
    for kw, text in ((dict(pgnas_p_init=1.5), 'drop probability'), (dict(pgnas_temperature=0), 'temperature'),
                     (dict(train_size=0), 'N (pgnas_n'), (dict(pgnas_l2=-1.), 'l^2'),
                     (dict(pgnas_bn='x'), 'pgnas_bn'), (dict(pgnas_free_ops='x'), 'pgnas_free_ops')):
        with pytest.raises(ValueError, match=text.replace('(', r'\(').replace('^', r'\^')) as e:
            pgnas.PGNAS(make_args(**kw), 'nb201', 'cpu')
        assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match='proxyless'):
        pgnas.PGNAS(make_args(), 'proxyless', 'cpu')


def test_state_dict_round_trip_and_gate_table():
    x, y = random_batch(seed=5)
    a = tiny('nb201', pgnas_free_ops='gate')
    a.train_step(x, y)
    b = tiny('nb201', pgnas_free_ops='gate')
    buffer = io.BytesIO()             # through bytes, as a checkpoint: no tensor shared with a
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer))
    assert a.gate_table() == b.gate_table()
    # The next step is the same in both (same optimizer state, same noise).
    torch.manual_seed(1)
    la, _ = a.train_step(x, y)
    torch.manual_seed(1)
    lb, _ = b.train_step(x, y)
    assert float(la) == float(lb)
    assert a.gate_table() == b.gate_table()
    rows = a.gate_table()
    assert len(rows) == 3 * 6 * len(genotypes.NB201_CANDIDATES)
    assert {r['op'] for r in rows} == set(genotypes.NB201_CANDIDATES)
    assert {r['units'] for r in rows if r['op'] in ('skip_connect', 'avg_pool_3x3')} == {1}


# ----------------------------------------------------------------------------------------------------
# End to end on the CIFAR-10 subset
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('space', ['nb201', 'darts'])
def test_tiny_search_yields_a_valid_cell(space):
    needs_cifar()
    data = utils.load_cifar10(CIFAR_SUBSET)
    method = tiny(space, train_size=len(data['train_x']))
    # 16x16 crops keep it fast; the network does not care about the size.
    train = utils.Batches(data['train_x'][:32, :, :16, :16], data['train_y'][:32], 8, seed=0)
    val = list(utils.Batches(data['train_x'][-16:, :, :16, :16], data['train_y'][-16:], 8, shuffle=False))
    for xb, yb in train:
        loss, logits = method.train_step(xb, yb)
        assert torch.isfinite(loss) and logits.shape == (8, 10)
    results = method.sample(val, 3, seed=0)
    assert [r['candidate'] for r in results] == [0, 1, 2]
    assert all(0 <= r['accuracy'] <= 100 and 0 < r['kept'] <= 1 for r in results)
    winner = pgnas.best(results)['genotype']
    if space == 'nb201':
        genotypes.nb201_edges(winner)
        genotypes.json_text(winner)
    else:
        genotypes.validate(winner)
        genotypes.to_literal(winner)


# ----------------------------------------------------------------------------------------------------
# search.py --method pgnas
# ----------------------------------------------------------------------------------------------------

PGNAS_TINY = ['--method', 'pgnas', '--layers', '1', '--init_channels', '4', '--batch_size', '8',
              '--valid_portion', '0.25', '--candidates', '4', '--valid_batches', '2', '--report_freq', '4',
              '--seed', '2']


@pytest.mark.parametrize('space, layers', [('nb201', '1'), ('darts', '3')])
def test_search_py_method_pgnas_writes_a_valid_cell_and_resumes_exactly(space, layers, small_cifar, tmp_path,
                                                                         monkeypatch):
    import json
    import search
    data = str(small_cifar(16, 10))             # 80 images: 20 held out, 60 to train on
    argv = ['--data', data, '--space', space, '--epochs', '2'] + PGNAS_TINY
    argv[argv.index('--layers') + 1] = layers
    whole = search.main(argv + ['--save', str(tmp_path / 'whole')])
    run = tmp_path / 'whole'
    doc = json.loads((run / 'candidates.json').read_text())
    assert len(doc['candidates']) == 4 and 0 <= doc['best'] < 4
    assert max(c['accuracy'] for c in doc['candidates']) == doc['candidates'][doc['best']]['accuracy']
    gates = json.loads((run / 'gates.json').read_text())
    assert gates and all(0 < g['p'] < 1 for g in gates)
    if space == 'nb201':
        assert genotypes.nb201_edges(whole['genotype'])
    else:
        genotypes.validate(whole['genotype'])
    assert 'PGNAS search in the' in (run / 'log.txt').read_text()

    original, count = search.Search.train_step, [0]

    def cut(self, x, y, kind):
        count[0] += 1
        if count[0] == 10:
            raise KeyboardInterrupt
        return original(self, x, y, kind)
    monkeypatch.setattr(search.Search, 'train_step', cut)
    with pytest.raises(KeyboardInterrupt):
        search.main(argv + ['--save', str(tmp_path / 'cut'), '--checkpoint_freq', '3'])
    monkeypatch.undo()
    resumed = search.main(['--save', str(tmp_path / 'cut'), '--resume'])
    a = torch.load(run / 'checkpoint.pt', weights_only=False)
    b = torch.load(tmp_path / 'cut' / 'checkpoint.pt', weights_only=False)
    for k, v in a['model'].items():
        assert torch.equal(v, b['model'][k]), k
    assert resumed['genotype'] == whole['genotype']
    assert (tmp_path / 'cut' / 'candidates.json').read_text() == (run / 'candidates.json').read_text()


@pytest.mark.parametrize('argv, message', [
    (['--space', 'proxyless'], '--method pgnas searches the nb201 and darts spaces, not proxyless'),
    (['--candidates', '0'], '--candidates must be at least 1, got 0'),
    (['--fixed_rate', '1'], r'--fixed_rate must be in \(0, 1\), got 1.0'),
    (['--lambda', '0.1'], 'unrecognized arguments: --lambda'),
])
def test_search_py_method_pgnas_refuses_bad_flags_in_one_line(argv, message, tmp_path):
    import search
    with pytest.raises(utils.UserError, match=message):
        search.main(['--save', str(tmp_path / 'r'), '--space', 'nb201'] + PGNAS_TINY + argv)
