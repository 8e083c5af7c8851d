"""hessian.py against brute force, in float64.

- 'ggn' against the exact GGN diagonal from torch.func Jacobians of the logits w.r.t. the switches.
- 'recursive' against a dense, layer-by-layer implementation of the same recursion (explicit Jacobian
  of every layer at every sample, squared elementwise).
- 'fisher' averaged over many label draws against 'ggn', with a tolerance taken from the draws.
- update_group against the closed form; HardPrior couplings, pruning, penalty and checkpoints on a
  hand-made cell; the whole re-weighted loop on a sparse problem with a known answer.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, jacrev

import hessian
from hessian import HardPrior, Switch, switch_curvature, update_group

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------
# A tiny graph network: one forward shared by hessian.py and the dense references
# ----------------------------------------------------------------------------------------------------

class Graph(nn.Module):
    """A DAG of leaf modules and glue. Node 0 is the input; node i (i >= 1) is spec[i - 1]:
    ('m', module, j)    module applied to node j
    ('sum', None, js)   sum of nodes js
    ('cat', None, js)   channel concatenation of nodes js
    The output is the last node."""

    def __init__(self, spec):
        super().__init__()
        self.kinds = [kind for kind, _, _ in spec]
        self.inputs = [ins for _, _, ins in spec]
        self.layers = nn.ModuleList([m if m is not None else nn.Identity() for _, m, _ in spec])

    @classmethod
    def chain(cls, modules):
        return cls([('m', m, i) for i, m in enumerate(modules)])

    def node_values(self, x):
        vals = [x]
        for kind, layer, ins in zip(self.kinds, self.layers, self.inputs):
            if kind == 'm':
                vals.append(layer(vals[ins]))
            elif kind == 'sum':
                out = vals[ins[0]]
                for j in ins[1:]:
                    out = out + vals[j]
                vals.append(out)
            else:
                vals.append(torch.cat([vals[j] for j in ins], dim=1))
        return vals

    def forward(self, x):
        return self.node_values(x)[-1]


def randomise(model, gen):
    """Random switch values (not all 1), random BatchNorm running statistics and affine parameters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Switch):
                sign = torch.where(torch.rand(m.s.shape, generator=gen) < 0.2, -1.0, 1.0)
                m.s.copy_(sign * (0.5 + torch.rand(m.s.shape, generator=gen)))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
    return model.double().eval()


def supernet(gen):
    """A cell-like DAG: fan-out of one tensor to five consumers, op and edge switches, sums, a channel
    concat, dilated / depthwise / strided convs, BatchNorm, both kinds of pooling, global pooling."""
    C = 4
    spec = [
        ('m', nn.Conv2d(3, C, 3, padding=1), 0),                        # 1 stem
        ('m', nn.BatchNorm2d(C), 1),                                    # 2
        ('m', nn.ReLU(), 2),                                            # 3  fan-out to 4, 7, 9, 13, 17, 19
        ('m', nn.Conv2d(C, C, 3, padding=2, dilation=2, bias=False), 3),  # 4  dilated conv
        ('m', nn.BatchNorm2d(C), 4),                                    # 5
        ('m', Switch(), 5),                                             # 6  op switch
        ('m', nn.MaxPool2d(3, 1, 1), 3),                                # 7
        ('m', Switch(), 7),                                             # 8  op switch
        ('m', nn.AvgPool2d(3, 1, 1, count_include_pad=False), 3),       # 9
        ('m', Switch(), 9),                                             # 10 op switch
        ('sum', None, [6, 8, 10]),                                      # 11 mixed op
        ('m', Switch(), 11),                                            # 12 edge switch
        ('m', nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False), 3),  # 13 depthwise conv
        ('m', nn.Conv2d(C, C, 1), 13),                                  # 14 pointwise conv
        ('m', nn.BatchNorm2d(C), 14),                                   # 15
        ('m', Switch((C, 1, 1)), 15),                                   # 16 per-filter switch
        ('m', nn.AvgPool2d(3, 1, 1, count_include_pad=True), 3),        # 17
        ('m', Switch(), 17),                                            # 18
        ('m', nn.Identity(), 3),                                        # 19 skip
        ('m', Switch(), 19),                                            # 20
        ('sum', None, [16, 18, 20]),                                    # 21
        ('m', nn.ReLU(), 21),                                           # 22
        ('cat', None, [12, 22]),                                        # 23
        ('m', nn.Conv2d(2 * C, 6, 3, stride=2, padding=1), 23),         # 24 strided conv
        ('m', nn.BatchNorm2d(6), 24),                                   # 25
        ('m', nn.ReLU(), 25),                                           # 26
        ('m', nn.AdaptiveAvgPool2d(1), 26),                             # 27 global average pool
        ('m', nn.Flatten(), 27),                                        # 28
        ('m', nn.Linear(6, 5), 28),                                     # 29 logits
    ]
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
    return randomise(Graph(spec), gen)


def lenet(gen):
    """LeNet-like: per-filter switches after the convs, per-neuron switches after the hidden layers."""
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
    net = nn.Sequential(
        nn.Conv2d(1, 4, 5), Switch((4, 1, 1)), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), Switch((6, 1, 1)), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6, 12), Switch((12,)), nn.ReLU(),
        nn.Linear(12, 8), Switch((8,)), nn.ReLU(),
        nn.Linear(8, 4))
    return randomise(net, gen)


def batches_of(x, sizes):
    """Unequal batches (a plain mean of batch means would be wrong); targets are random labels."""
    assert sum(sizes) == x.shape[0]
    out, start = [], 0
    for n in sizes:
        out.append((x[start:start + n], torch.zeros(n, dtype=torch.long)))
        start += n
    return out


def switch_names(model):
    return [name for name, m in model.named_modules() if isinstance(m, Switch)]


# ----------------------------------------------------------------------------------------------------
# Brute-force references
# ----------------------------------------------------------------------------------------------------

def softmax_hessian(logits):
    p = torch.softmax(logits, dim=-1)
    return torch.diag(p) - torch.outer(p, p)


def ggn_brute_force(model, x):
    """(1/N) sum_n diag(J_n^T (diag p_n - p_n p_n^T) J_n), J_n the Jacobian of the logits of sample n
    w.r.t. every switch parameter, by torch.func."""
    names = switch_names(model)
    params = {f'{n}.s': model.get_submodule(n).s.detach().clone() for n in names}
    total = {n: torch.zeros_like(params[f'{n}.s']) for n in names}
    with torch.no_grad():
        for i in range(x.shape[0]):
            xi = x[i:i + 1]

            def logits_of(p):
                return functional_call(model, p, (xi,))[0]

            jac = jacrev(logits_of)(params)
            H = softmax_hessian(logits_of(params))
            for n in names:
                J = jac[f'{n}.s'].reshape(H.shape[0], -1)                 # (K, entries)
                total[n] += torch.einsum('ke,kl,le->e', J, H, J).reshape(total[n].shape)
    return {n: t / x.shape[0] for n, t in total.items()}


def layer_jacobian(module, x):
    """The explicit Jacobian matrix (outputs x inputs) of a leaf module at one sample's input."""
    return torch.autograd.functional.jacobian(lambda z: module(z.reshape(x.shape)).flatten(), x.flatten(),
                                              vectorize=True)


def recursion_dense(graph, x):
    """The diagonal recursion, layer by layer and sample by sample with dense Jacobians:
    P = p(1-p) at the logits; P_in += (A o A)^T P_out through every leaf module; a switch y = s*o
    collects sum(o^2 * P_y) per entry of s (and passes s^2 P_y, which is (A o A)^T P_y for its A);
    fan-out accumulates, sums pass P to every operand, concatenations split it."""
    names = {m: n for n, m in graph.named_modules() if isinstance(m, Switch)}
    curv = {n: torch.zeros_like(m.s) for m, n in names.items()}
    with torch.no_grad():
        for i in range(x.shape[0]):
            vals = graph.node_values(x[i:i + 1])
            p = torch.softmax(vals[-1], dim=1)
            P = [None] * len(vals)
            P[-1] = p * (1 - p)
            for node in range(len(vals) - 1, 0, -1):
                if P[node] is None:
                    continue
                kind, layer, ins = graph.kinds[node - 1], graph.layers[node - 1], graph.inputs[node - 1]
                if kind == 'm':
                    o = vals[ins]
                    A = layer_jacobian(layer, o)
                    back = ((A * A).T @ P[node].flatten()).reshape(o.shape)
                    P[ins] = back if P[ins] is None else P[ins] + back
                    if isinstance(layer, Switch):
                        c = o.square() * P[node]
                        s = layer.s
                        curv[names[layer]] += c.sum() if s.dim() == 0 else c.sum_to_size((1,) * (c.dim() - s.dim()) + tuple(s.shape)).reshape(s.shape)
                elif kind == 'sum':
                    for j in ins:
                        P[j] = P[node] if P[j] is None else P[j] + P[node]
                else:
                    parts = P[node].split([vals[j].shape[1] for j in ins], dim=1)
                    for j, part in zip(ins, parts):
                        P[j] = part if P[j] is None else P[j] + part
    return {n: c / x.shape[0] for n, c in curv.items()}


def assert_close_dicts(got, want, rtol):
    assert set(got) == set(want)
    scale = max(float(v.abs().max()) for v in want.values())
    assert scale > 0
    for n in want:
        assert got[n].shape == want[n].shape, n
        assert got[n].dtype == torch.float64, n
        torch.testing.assert_close(got[n], want[n], rtol=rtol, atol=rtol * scale * 1e-3, msg=lambda m: f'{n}: {m}')


def max_rel_diff(a, b):
    scale = max(float(v.abs().max()) for v in b.values())
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale


# ----------------------------------------------------------------------------------------------------
# 1. 'ggn' is the exact GGN diagonal
# ----------------------------------------------------------------------------------------------------

def test_ggn_matches_brute_force_on_supernet_dag():
    gen = torch.Generator().manual_seed(1)
    model = supernet(gen)
    x = torch.randn(7, 3, 6, 6, generator=gen, dtype=torch.float64)
    got = switch_curvature(model, batches_of(x, [3, 1, 3]), method='ggn')
    want = ggn_brute_force(model, x)
    assert_close_dicts(got, want, rtol=1e-9)
    assert all(float(v.min()) > 0 for v in want.values())          # every switch really is measured


def test_ggn_matches_brute_force_on_lenet_with_filter_and_neuron_switches():
    gen = torch.Generator().manual_seed(2)
    model = lenet(gen)
    x = torch.randn(9, 1, 14, 14, generator=gen, dtype=torch.float64)
    got = switch_curvature(model, batches_of(x, [4, 2, 3]), method='ggn')
    want = ggn_brute_force(model, x)
    assert [tuple(got[n].shape) for n in switch_names(model)] == [(4, 1, 1), (6, 1, 1), (12,), (8,)]
    assert_close_dicts(got, want, rtol=1e-9)


# ----------------------------------------------------------------------------------------------------
# 2. 'recursive' is the dense layer-by-layer recursion
# ----------------------------------------------------------------------------------------------------

def _chains():
    """Small chains, each starting with a per-channel switch on the input so that P is propagated back
    through every layer, with switches in between."""
    return {
        'strided_conv_maxpool': lambda: [
            Switch((2, 1, 1)), nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            Switch((4, 1, 1)), nn.MaxPool2d(3, 2, 1), nn.Flatten(), nn.Linear(4 * 2 * 2, 6), Switch((6,)),
            nn.ReLU(), nn.Linear(6, 3)],
        'dilated_grouped_conv_avgpool_pad': lambda: [
            Switch((2, 1, 1)), nn.Conv2d(2, 4, 3, padding=2, dilation=2), Switch(), nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(4), Switch((4, 1, 1)),
            nn.AvgPool2d(3, 2, 1, count_include_pad=True), nn.Flatten(), nn.Linear(4 * 3 * 3, 4)],
        'depthwise_nonsquare_avgpool_nopad_ceil': lambda: [
            Switch((2, 1, 1)), nn.ZeroPad2d((1, 0, 2, 1)), nn.Conv2d(2, 2, (3, 1), groups=2), nn.ReLU(),
            Switch(), nn.Conv2d(2, 3, (1, 3), stride=(2, 1), padding=(0, 1)),
            nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), nn.BatchNorm2d(3), nn.ReLU(),
            Switch((3, 1, 1)), nn.MaxPool2d((1, 2), 1, dilation=(1, 2)), nn.Flatten(), nn.Linear(3 * 2 * 2, 4)],
        'adaptive_pool_bn1d_dropout_identity': lambda: [
            Switch((2, 1, 1)), nn.Conv2d(2, 3, 3, padding=1), nn.AdaptiveAvgPool2d((3, 2)), nn.ReLU(),
            nn.Flatten(), nn.Identity(), nn.Linear(3 * 3 * 2, 7), nn.BatchNorm1d(7), Switch((7,)),
            nn.Dropout(0.5), nn.ReLU(), nn.Linear(7, 3)],
    }


@pytest.mark.parametrize('name', sorted(_chains()))
def test_recursive_matches_dense_recursion_on_chains(name):
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    torch.manual_seed(3)
    model = randomise(Graph.chain(_chains()[name]()), gen)
    x = torch.randn(5, 2, 5, 5, generator=gen, dtype=torch.float64)
    got = switch_curvature(model, batches_of(x, [2, 3]), method='recursive')
    want = recursion_dense(model, x)
    assert_close_dicts(got, want, rtol=1e-10)
    assert all(float(v.max()) > 0 for v in want.values())          # every switch really is measured


def test_recursive_matches_dense_recursion_on_supernet_dag():
    gen = torch.Generator().manual_seed(4)
    model = supernet(gen)
    x = torch.randn(4, 3, 6, 6, generator=gen, dtype=torch.float64)
    got = switch_curvature(model, batches_of(x, [1, 3]), method='recursive')
    want = recursion_dense(model, x)
    assert_close_dicts(got, want, rtol=1e-10)
    # The recursion drops off-diagonal terms: it is not the GGN diagonal in general.
    ggn = switch_curvature(model, batches_of(x, [4]), method='ggn')
    assert max_rel_diff(got, ggn) > 1e-2


def test_recursive_matches_dense_recursion_on_lenet():
    gen = torch.Generator().manual_seed(5)
    model = lenet(gen)
    x = torch.randn(4, 1, 14, 14, generator=gen, dtype=torch.float64)
    got = switch_curvature(model, batches_of(x, [4]), method='recursive')
    want = recursion_dense(Graph.chain(list(model)), x)                  # same modules, names 'layers.i'
    assert_close_dicts(got, {n.removeprefix('layers.'): v for n, v in want.items()}, rtol=1e-10)


def test_recursive_equals_ggn_where_the_recursion_is_exact():
    """Switches whose logit Jacobian has at most one non-zero per column have a diagonal-exact
    recursion: per-logit switches, and per-feature switches in front of a linear layer in which every
    input feeds a single logit (the GGN diagonal entry is then o_j^2 W_kj^2 H_kk, no cross terms)."""
    gen = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    D, K = 8, 4
    last = nn.Linear(D, K)
    with torch.no_grad():
        feeds = torch.arange(D) % K                                  # input j feeds logit j mod K only
        last.weight.mul_(nn.functional.one_hot(feeds, K).T.to(last.weight.dtype))
    model = randomise(nn.Sequential(nn.Linear(5, D), nn.ReLU(), Switch((D,)), last, Switch((K,))), gen)
    x = torch.randn(11, 5, generator=gen, dtype=torch.float64)
    rec = switch_curvature(model, batches_of(x, [6, 5]), method='recursive')
    ggn = switch_curvature(model, batches_of(x, [6, 5]), method='ggn')
    assert_close_dicts(rec, ggn, rtol=1e-10)
    assert_close_dicts(ggn, ggn_brute_force(model, x), rtol=1e-9)
    # The same model with a dense last layer is not exact for the feature switches.
    with torch.no_grad():
        model[3].weight.add_(0.3)
    rec = switch_curvature(model, batches_of(x, [11]), method='recursive')
    ggn = switch_curvature(model, batches_of(x, [11]), method='ggn')
    torch.testing.assert_close(rec['4'], ggn['4'], rtol=1e-10, atol=0)
    assert float(((rec['2'] - ggn['2']).abs() / ggn['2']).max()) > 1e-2


# ----------------------------------------------------------------------------------------------------
# 3. 'fisher' is an unbiased estimate of the 'ggn' diagonal
# ----------------------------------------------------------------------------------------------------

def test_fisher_averages_to_ggn():
    gen = torch.Generator().manual_seed(7)
    model = lenet(gen)
    x = torch.randn(16, 1, 14, 14, generator=gen, dtype=torch.float64)
    batches = batches_of(x, [10, 6])
    ggn = switch_curvature(model, batches, method='ggn')
    torch.manual_seed(7)
    draws = 300
    calls = [switch_curvature(model, batches, method='fisher') for _ in range(draws)]
    assert set(calls[0]) == set(ggn)
    single_differs = False
    measured = 0
    for n, g in ggn.items():
        d = torch.stack([c[n] for c in calls])                        # (draws, *s.shape)
        assert d.dtype == torch.float64 and d.shape[1:] == g.shape
        mean, se = d.mean(0), d.std(0) / math.sqrt(draws)
        scale = float(g.max())
        assert bool(((mean - g).abs() <= 5 * se + 1e-12 * scale).all()), n
        # Power: where the curvature is not negligible the standard error is a small fraction of it.
        big = g > 1e-3 * scale
        assert bool((se[big] <= 0.05 * g[big]).all()), n
        measured += int(big.sum())
        single_differs |= bool(((d[0] - g).abs() > 1e-3 * g).any())
    assert measured >= 20
    assert single_differs


# ----------------------------------------------------------------------------------------------------
# 4. update_group: the Laplace / re-weighting update of one group
# ----------------------------------------------------------------------------------------------------

def closed_form(w, h, gamma, lam):
    cov = [1.0 / (1.0 / gamma + hc / lam) for hc in h]
    omega = math.sqrt(sum(1.0 / gamma - c / gamma ** 2 for c in cov))      # = sum h / (lam + gamma h)
    return math.sqrt(sum(v * v for v in w)) / omega, omega, cov


def test_update_group_matches_closed_form():
    gen = torch.Generator().manual_seed(8)
    for trial in range(20):
        n = 1 + trial % 4
        w = torch.randn(n, generator=gen, dtype=torch.float64)
        h = torch.rand(n, generator=gen, dtype=torch.float64) * 10 ** float(torch.randint(-3, 2, (1,), generator=gen))
        gamma = 0.01 + 3 * float(torch.rand(1, generator=gen))
        lam = [0.005, 0.01, 0.1, 1.0][trial % 4]
        g_new, omega, cov = update_group(w, h, gamma, lam)
        want_g, want_o, want_c = closed_form(w.tolist(), h.tolist(), gamma, lam)
        assert float(g_new) >= 0
        assert math.isclose(float(g_new), want_g, rel_tol=1e-9)
        assert math.isclose(float(omega), want_o, rel_tol=1e-9)
        torch.testing.assert_close(cov, torch.tensor(want_c, dtype=torch.float64), rtol=1e-9, atol=0)
        # omega^2 = sum h / (lam + gamma h), the simplified form of the same quantity
        assert math.isclose(float(omega) ** 2, float((h / (lam + gamma * h)).sum()), rel_tol=1e-9)


@pytest.mark.parametrize('w, h, gamma', [
    ([0.5, -0.2], [0.0, 0.0], 1.0),       # no curvature: floored omega, large finite gamma
    ([0.0, 0.0], [2.0, 0.1], 1.0),        # switches at zero: gamma 0
    ([0.0, 0.0], [0.0, 0.0], 1.0),        # both
    ([0.3, 0.4], [1.0, 2.0], 0.0),        # zero prior variance (a pruned group)
    ([0.0], [0.0], 0.0),                  # everything zero
])
def test_update_group_is_finite_at_zeros(w, h, gamma):
    lam = 0.01
    g_new, omega, cov = update_group(torch.tensor(w, dtype=torch.float64), torch.tensor(h, dtype=torch.float64),
                                     gamma, lam)
    for t in (g_new, omega, cov):
        assert bool(torch.isfinite(t).all())
    assert float(g_new) >= 0 and float(omega) > 0 and bool((cov >= 0).all())
    norm = math.hypot(*w)
    assert (float(g_new) == 0) == (norm == 0)
    if gamma == 0:
        assert bool((cov == 0).all())                                   # posterior variance = prior's, 0
    if all(v == 0 for v in h):
        torch.testing.assert_close(cov, torch.full_like(cov, gamma))    # no data: posterior = prior


# ----------------------------------------------------------------------------------------------------
# 5. HardPrior on a hand-made structure
# ----------------------------------------------------------------------------------------------------
# A DARTS-like cell: input nodes 0 and 1, intermediate nodes 2 and 3, edges 0-2, 1-2, 0-3, 1-3, 2-3,
# each with an edge switch and two op switches; two cells whose positions are tied; a per-entry switch
# 'head' (one group per entry) and a switch 'free' that the prior leaves out.

EDGES = [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]


class Cell(nn.Module):
    def __init__(self):
        super().__init__()
        self.edges = nn.ModuleDict({f'e{i}_{j}': Switch() for i, j in EDGES})
        self.ops = nn.ModuleDict({f'e{i}_{j}_op{k}': Switch() for i, j in EDGES for k in range(2)})


class TwoCells(nn.Module):
    def __init__(self):
        super().__init__()
        self.cells = nn.ModuleList([Cell(), Cell()])
        self.head = Switch((3,))
        self.free = Switch()


def group_of(name):
    if name == 'free':
        return None
    if name == 'head':
        return 'head'
    _, _, kind, pos = name.split('.')
    ends = pos.split('_')
    edge = f'edge:{ends[0][1:]}-{ends[1]}'
    return edge if kind == 'edges' else f'op:{edge[5:]}:{ends[2][2:]}'


EDGE_KEYS = [f'edge:{i}-{j}' for i, j in EDGES]
OP_KEYS = [f'op:{i}-{j}:{k}' for i, j in EDGES for k in range(2)]
PARENT = {f'op:{i}-{j}:{k}': f'edge:{i}-{j}' for i, j in EDGES for k in range(2)}
INFLOW = {f'edge:{i}-{j}': [f'edge:{a}-{b}' for a, b in EDGES if b == i] for i, j in EDGES}
LAMS = {'edge': 0.01, 'op': 0.007, 'head': 0.02}


def lam_of(key):
    return LAMS[key.split(':')[0].split('[')[0]]


def make_prior(seed=9, tiny=()):
    """A randomised TwoCells model (switch values in [0.5, 1.5], those of groups in `tiny` near 0)
    with its prior, and random curvatures for every switch."""
    gen = torch.Generator().manual_seed(seed)
    model = TwoCells().double()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, Switch):
                m.s.copy_(0.5 + torch.rand(m.s.shape, generator=gen, dtype=torch.float64))
                key = group_of(name)
                keys = [key] if m.s.dim() == 0 else [f'{key}[{i}]' for i in range(m.s.numel())]
                m.s.mul_(torch.tensor([1e-5 if k in tiny else 1.0 for k in keys],
                                      dtype=torch.float64).reshape(m.s.shape))
    prior = HardPrior(model, lam_of, group_of=group_of, parent=PARENT, inflow=INFLOW)
    curv = {name: 0.5 + torch.rand(m.s.shape, generator=gen, dtype=torch.float64)
            for name, m in model.named_modules() if isinstance(m, Switch)}
    return model, prior, curv


def members(model, key):
    """(switch, flat index) of every member of a group, found from group_of independently of HardPrior."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, Switch) and group_of(name) is not None:
            if m.s.dim() == 0 and group_of(name) == key:
                out.append((m, 0))
            for i in range(m.s.numel() if m.s.dim() else 0):
                if f'{group_of(name)}[{i}]' == key:
                    out.append((m, i))
    return out


def evidence(w, h, lam):
    w, h = torch.tensor(w, dtype=torch.float64), torch.tensor(h, dtype=torch.float64)
    return float(hessian._evidence(w, h, torch.full_like(w, lam), torch.zeros(len(w), dtype=torch.long), 1)[0])


def log_evidence(gamma, w, h, lam):
    return -sum(math.log(gamma + lam / hc) + wc * wc / (gamma + lam / hc) for wc, hc in zip(w, h) if hc > 0)


@pytest.mark.parametrize('w, h', [(0.3, 10.0), (0.3, 1e-3), (1.0, 0.005), (1.0, 0.02), (-2.0, 1.0), (0.0, 5.0)])
def test_evidence_of_one_switch_is_the_closed_form(w, h):
    # gamma = max(0, w^2 - lam / h): kept exactly when h w^2 > lam.
    lam = 0.005
    assert math.isclose(evidence([w], [h], lam), max(0.0, w * w - lam / h), rel_tol=1e-9, abs_tol=1e-15)


def test_evidence_of_tied_groups_is_the_best_gamma_on_a_fine_grid():
    gen = torch.Generator().manual_seed(3)
    grid = [0.0] + torch.logspace(-12, 2, 20001, dtype=torch.float64).tolist()
    for trial in range(30):
        n = 2 + trial % 4
        w = (torch.randn(n, generator=gen, dtype=torch.float64) * 2 * torch.rand(1, generator=gen)).tolist()
        h = (torch.rand(n, generator=gen, dtype=torch.float64) * 10 ** (3 * torch.randn(1, generator=gen))).tolist()
        h[0] = 0.0 if trial % 5 == 0 else h[0]          # a member the loss ignores adds nothing
        lam = 0.01
        best = max(log_evidence(g, w, h, lam) for g in grid)
        assert log_evidence(evidence(w, h, lam), w, h, lam) >= best - 1e-9 * abs(best) - 1e-12


def test_evidence_decision_ignores_rescalings_the_loss_does_not_see():
    # w -> a w with h -> h / a^2 is what a direction of constant loss does to a switch's diagonal
    # curvature: the pruned set stays the same and gamma scales with a^2.
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(40, generator=gen, dtype=torch.float64)
    h = 10 ** (2 * torch.randn(40, generator=gen, dtype=torch.float64))
    gid = torch.arange(40) // 2                          # 20 groups of two tied members
    lam = torch.full_like(w, 0.05)
    base = hessian._evidence(w, h, lam, gid, 20)
    assert 0 < int((base == 0).sum()) < 20
    for a in (0.1, 3.0):
        scaled = hessian._evidence(a * w, h / a ** 2, lam, gid, 20)
        assert torch.equal(scaled == 0, base == 0)
        torch.testing.assert_close(scaled, a * a * base, rtol=1e-6, atol=0)
    # ... whereas the re-weighting rule's gamma = ||w|| / omega is no function of the product h w^2.
    rew = hessian._update(w, h, torch.ones_like(w), lam, gid, 20)[0]
    rew_scaled = hessian._update(0.1 * w, h / 0.01, torch.ones_like(w), lam, gid, 20)[0]
    assert not torch.allclose(rew_scaled, 0.01 * rew, rtol=1e-3)


def test_evidence_rule_prunes_the_switch_the_loss_does_not_need():
    """Same switch values, different curvature: the evidence rule prunes the low-curvature group, the
    re-weighting rule keeps both (its gamma only grows as the curvature falls)."""
    model, prior, curv = make_prior()
    names = {id(m): n for n, m in model.named_modules()}
    flat = {}
    for key in ('op:0-2:0', 'op:0-2:1'):
        for m, i in members(model, key):
            flat.setdefault(names[id(m)], curv[names[id(m)]].clone())
            flat[names[id(m)]].view(-1)[i] = 10.0 if key.endswith(':0') else 1e-6
    curv = {**curv, **flat}
    prior.update(curv, rule='evidence')
    g = {k: float(prior.gamma_raw[prior.index[k]]) for k in ('op:0-2:0', 'op:0-2:1')}
    assert g['op:0-2:0'] > 0 and g['op:0-2:1'] == 0
    assert 'op:0-2:1' in prior.prune(0.0) and not bool(prior.pruned[prior.index['op:0-2:0']])
    _, prior2, _ = make_prior()
    prior2.update(curv, rule='reweight')
    assert all(float(prior2.gamma_raw[prior2.index[k]]) > 0.1 for k in ('op:0-2:0', 'op:0-2:1'))
    with pytest.raises(ValueError):
        prior2.update(curv, rule='magnitude')


def test_prune_records_when_and_at_which_gamma_a_group_went():
    model, prior, curv = make_prior(tiny=['edge:0-3'])
    prior.update(curv)
    gamma = {k: float(prior.gamma[g]) for g, k in enumerate(prior.keys)}
    first = prior.prune(1e-2)
    prior.update(curv)
    gamma2 = {k: float(prior.gamma[g]) for g, k in enumerate(prior.keys)}
    second = prior.prune(0.3)
    assert first and second
    rows = {r['key']: r for r in prior.table()}
    for key in first:
        assert rows[key]['pruned_at'] == 1 and rows[key]['gamma_at_prune'] == gamma[key]
    for key in second:         # below the threshold, or a dependant of a group that is
        assert rows[key]['pruned_at'] == 2 and rows[key]['gamma_at_prune'] == gamma2[key]
    assert any(rows[key]['gamma_at_prune'] < 0.3 for key in second)
    for key, row in rows.items():
        if not row['pruned']:
            assert row['pruned_at'] is None and row['gamma_at_prune'] == row['gamma']


def test_hard_prior_groups_tied_switches_and_penalty():
    model, prior, curv = make_prior()
    assert sorted(prior.keys) == sorted(EDGE_KEYS + OP_KEYS + ['head[0]', 'head[1]', 'head[2]'])
    rows = {r['key']: r for r in prior.table()}
    assert rows['edge:0-2']['members'] == [['cells.0.edges.e0_2', 0], ['cells.1.edges.e0_2', 0]]
    assert rows['head[2]']['members'] == [['head', 2]]
    for key in prior.keys:
        w = torch.stack([m.s.detach().flatten()[i] for m, i in members(model, key)])
        assert len(w) == (1 if key.startswith('head') else 2)
        assert math.isclose(rows[key]['norm'], float(w.norm()), rel_tol=1e-12)      # l2 over members
        assert rows[key]['lam'] == lam_of(key)
    assert float(prior.gamma.min()) == 1 and float(prior.omega.min()) == 1 and not bool(prior.pruned.any())

    def manual_penalty():
        total = 0.0
        for g, key in enumerate(prior.keys):
            w = torch.stack([m.s.detach().flatten()[i] for m, i in members(model, key)])
            total += lam_of(key) * float(prior.omega[g]) * float(w.norm())
        return total

    assert math.isclose(prior.penalty().item(), manual_penalty(), rel_tol=1e-9)
    prior.update(curv)
    assert float((prior.omega - 1).abs().max()) > 1e-3                  # omega no longer trivial
    pen = prior.penalty()
    assert math.isclose(pen.item(), manual_penalty(), rel_tol=1e-9)
    # It is differentiable w.r.t. the switches: d/dw_c = lam omega w_c / ||w_g||; the free switch is out.
    pen.backward()
    g = prior.index['edge:1-3']
    a, b = model.cells[0].edges['e1_3'].s, model.cells[1].edges['e1_3'].s
    norm = math.hypot(a.item(), b.item())
    assert math.isclose(float(a.grad), lam_of('edge:1-3') * float(prior.omega[g]) * a.item() / norm, rel_tol=1e-9)
    assert model.free.s.grad is None or float(model.free.s.grad) == 0


def test_hard_prior_update_and_couplings():
    model, prior, curv = make_prior()
    for step in range(2):
        prev = prior.gamma.clone()
        prior.update(curv)
        eff = {k: float(prior.gamma[g]) for g, k in enumerate(prior.keys)}
        for g, key in enumerate(prior.keys):
            mem = members(model, key)
            w = torch.stack([m.s.detach().flatten()[i] for m, i in mem])
            names = {id(m): n for n, m in model.named_modules()}
            h = torch.stack([curv[names[id(m)]].flatten()[i] for m, i in mem])
            want_gamma, want_omega, _ = closed_form(w.tolist(), h.tolist(), float(prev[g]), lam_of(key))
            assert math.isclose(float(prior.gamma_raw[g]), want_gamma, rel_tol=1e-9), key
            assert math.isclose(float(prior.omega[g]), want_omega, rel_tol=1e-9), key
        raw = {k: float(prior.gamma_raw[g]) for g, k in enumerate(prior.keys)}

        def series(a, b):
            return 1 / (1 / a + 1 / b)

        for key in ['head[0]', 'head[1]', 'head[2]', 'edge:0-2', 'edge:1-2', 'edge:0-3', 'edge:1-3']:
            assert math.isclose(eff[key], raw[key], rel_tol=1e-12), key    # no parent, input source node
        # Gamma of node 2: what flows in through edges 0-2 and 1-2 (each capped by the sum of its ops)
        flow = sum(min(eff[e], eff[f'op:{e[5:]}:0'] + eff[f'op:{e[5:]}:1']) for e in INFLOW['edge:2-3'])
        assert math.isclose(eff['edge:2-3'], series(raw['edge:2-3'], flow), rel_tol=1e-12)
        assert eff['edge:2-3'] < min(raw['edge:2-3'], eff['edge:0-2'] + eff['edge:1-2'])
        for child, parent in PARENT.items():
            assert math.isclose(eff[child], series(raw[child], eff[parent]), rel_tol=1e-12), child
            assert eff[child] < eff[parent] and eff[child] < raw[child]


NODE2_DEAD = ['edge:0-2', 'op:0-2:0', 'op:0-2:1', 'edge:1-2', 'op:1-2:0', 'op:1-2:1', 'edge:2-3', 'op:2-3:0',
              'op:2-3:1']


@pytest.mark.parametrize('low, dead', [
    # a pruned parent prunes its children, whatever their own gamma
    (['edge:0-3'], ['edge:0-3', 'op:0-3:0', 'op:0-3:1']),
    # node 2 keeps one live incoming edge: its outgoing edge survives
    (['edge:0-2'], ['edge:0-2', 'op:0-2:0', 'op:0-2:1']),
    # node 2 loses all incoming edges: edge 2-3 and its ops go too
    (['edge:0-2', 'edge:1-2'], NODE2_DEAD),
    # ... also when the incoming edges die because all their ops are pruned
    (['op:0-2:0', 'op:0-2:1', 'op:1-2:0', 'op:1-2:1'], NODE2_DEAD),
    # ... but not while one op of an incoming edge lives
    (['op:0-2:0', 'op:0-2:1', 'op:1-2:0'], ['edge:0-2', 'op:0-2:0', 'op:0-2:1', 'op:1-2:0']),
    # an edge of the last node dies with its ops; nothing else depends on it
    (['op:2-3:0', 'op:2-3:1', 'head[1]'], ['edge:2-3', 'op:2-3:0', 'op:2-3:1', 'head[1]']),
])
def test_hard_prior_prune_dependencies(low, dead):
    """The structural rules of prune(), on a state where exactly the groups `low` are below the threshold."""
    model, prior, curv = make_prior()
    prior.update(curv)
    threshold = 1e-2
    assert float(prior.gamma.min()) > threshold
    with torch.no_grad():
        for key in low:
            prior.gamma[prior.index[key]] = threshold / 10
    before = {n: m.s.detach().clone() for n, m in model.named_modules() if isinstance(m, Switch)}
    newly = prior.prune(threshold)
    assert sorted(newly) == sorted(dead)
    assert sorted(k for g, k in enumerate(prior.keys) if bool(prior.pruned[g])) == sorted(dead)
    check_switches(model, prior, dead, before)
    # Nothing new the second time; pruned groups stay pruned, with gamma 0, through an update.
    assert prior.prune(threshold) == []
    prior.update(curv)
    assert sorted(k for g, k in enumerate(prior.keys) if bool(prior.pruned[g])) == sorted(dead)
    assert all(float(prior.gamma[prior.index[k]]) == 0 for k in dead)
    assert float(prior.gamma[~prior.pruned].min()) > 0


def check_switches(model, prior, dead, before):
    """Every member of a pruned group has s = mask = 0; every other switch entry is untouched."""
    name_of = {id(m): n for n, m in model.named_modules()}
    for key in prior.keys:
        for m, i in members(model, key):
            s, mask = m.s.detach().flatten()[i].item(), float(m.mask.flatten()[i])
            if key in dead:
                assert s == 0 and mask == 0, key
            else:
                assert mask == 1 and s == float(before[name_of[id(m)]].flatten()[i]) != 0, key
    for key in dead:
        assert float(prior.gamma[prior.index[key]]) == 0
    assert model.free.mask.item() == 1 and model.free.s.detach().item() != 0       # not managed
    if 'edge:2-3' in dead:
        assert all(model.cells[c].edges['e2_3'].pruned for c in range(2))
        assert all(model.cells[c].ops[f'e2_3_op{k}'].pruned for c in range(2) for k in range(2))


def test_hard_prior_update_then_prune_small_switches():
    """The whole path: small switch values -> small gamma -> pruned, with their dependants."""
    model, prior, curv = make_prior(tiny=['edge:0-2', 'edge:1-2', 'head[0]'])
    before = {n: m.s.detach().clone() for n, m in model.named_modules() if isinstance(m, Switch)}
    prior.update(curv)
    newly = prior.prune(1e-2)
    assert sorted(newly) == sorted(NODE2_DEAD + ['head[0]'])
    check_switches(model, prior, NODE2_DEAD + ['head[0]'], before)


def test_hard_prior_state_dict_round_trip():
    model, prior, curv = make_prior(tiny=['edge:0-3'])
    prior.update(curv)
    prior.prune(1e-2)
    state = prior.state_dict()
    model2 = copy.deepcopy(model)
    fresh = HardPrior(model2, lam_of, group_of=group_of, parent=PARENT, inflow=INFLOW)
    fresh.load_state_dict(copy.deepcopy(state))
    state2 = fresh.state_dict()
    assert set(state2) == set(state)
    for k, v in state.items():
        if torch.is_tensor(v):
            assert v.dtype == state2[k].dtype and torch.equal(v, state2[k]), k
        else:
            assert v == state2[k], k
    assert fresh.table() == prior.table()
    assert fresh.penalty().item() == prior.penalty().item()
    # Both continue identically.
    prior.update(curv)
    fresh.update(curv)
    assert torch.equal(prior.gamma, fresh.gamma) and torch.equal(prior.omega, fresh.omega)
    assert prior.prune(0.3) == fresh.prune(0.3)
    # The state is a copy, not a view of the live tensors.
    assert not torch.equal(state['gamma'], prior.gamma)
    # A state from a different structure is refused.
    other = HardPrior(TwoCells().double(), 0.01)
    with pytest.raises((ValueError, KeyError)):
        other.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------
# 6. The whole re-weighted loop recovers a known sparse structure
# ----------------------------------------------------------------------------------------------------

def test_reweighted_loop_recovers_relevant_features():
    """Only 4 of 24 input features carry the label; per-feature switches in front of a linear
    classifier. Train (CE + penalty), curvature, update, prune, three times: exactly the relevant
    features survive, and the pruned network still classifies."""
    gen = torch.Generator().manual_seed(10)
    torch.manual_seed(10)
    D, K, N = 24, 3, 300
    relevant = [3, 8, 15, 20]
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    y = (x[:, relevant] @ (3 * torch.randn(K, len(relevant), generator=gen, dtype=torch.float64)).T).argmax(1)
    model = nn.Sequential(Switch((D,)), nn.Linear(D, K)).double()
    prior = HardPrior(model, 0.05)
    switch = model[0]
    threshold = 1e-2
    for _ in range(3):
        opt = torch.optim.SGD([{'params': model[1].parameters(), 'weight_decay': 1e-3},
                               {'params': switch.parameters()}], lr=0.1, momentum=0.9)
        steps = 150
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y) + prior.penalty()
            loss.backward()
            opt.step()
            sched.step()
        curv = switch_curvature(model, batches_of(x, [100, 200]))
        prior.update(curv)
        gamma = prior.gamma.clone()
        live = ~prior.pruned
        prior.prune(threshold)
        # a clear margin between the two kinds of features, not a lucky threshold
        irrelevant = [j for j in range(D) if j not in relevant]
        assert float(gamma[relevant].min()) > 10 * threshold
        still = gamma[irrelevant][live[irrelevant]]
        assert float(still.max()) < threshold / 5 if len(still) else True
    assert prior.keys == [f'0[{j}]' for j in range(D)]
    assert [j for j in range(D) if not prior.pruned[j]] == relevant
    assert [j for j in range(D) if switch.mask[j] != 0] == relevant
    assert bool((switch.value()[irrelevant] == 0).all())
    with torch.no_grad():
        assert float((model(x).argmax(1) == y).double().mean()) > 0.9


# ----------------------------------------------------------------------------------------------------
# 7. Interface: unsupported leaves, modes, returned names
# ----------------------------------------------------------------------------------------------------

class Scale(nn.Module):
    """A leaf that the recursion does not know."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.a * x


class ChannelShuffle(nn.Module):
    """A 0/1 linear map: its squared twin is itself."""
    twin_is_self = True

    def forward(self, x):
        n, c = x.shape[:2]
        return x.reshape(n, 2, c // 2, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class ScaledBlock(nn.Module):
    """A container with a parameter of its own, invisible to the leaf-wise recursion."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.gain = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.gain * self.conv(x)


@pytest.mark.parametrize('leaf, type_name', [(nn.Tanh(), 'Tanh'), (nn.GELU(), 'GELU'), (Scale(), 'Scale'),
                                             (nn.Sigmoid(), 'Sigmoid'), (ScaledBlock(), 'ScaledBlock')])
def test_recursive_rejects_unsupported_leaves_and_restores_modes(leaf, type_name):
    model = nn.Sequential(Switch((2, 1, 1)), nn.Conv2d(2, 2, 1), leaf, nn.Flatten(), nn.Linear(2 * 3 * 3, 3),
                          nn.BatchNorm1d(3)).double()
    model.train()
    model[5].eval()
    modes = [m.training for m in model.modules()]
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match=type_name):
        switch_curvature(model, batches_of(x, [4]), method='recursive')
    assert [m.training for m in model.modules()] == modes
    assert all('forward' not in vars(m) for m in model.modules())       # nothing left patched
    # The two other estimators need no twin.
    for method in ('ggn', 'fisher'):
        assert set(switch_curvature(model, batches_of(x, [4]), method=method)) == {'0'}
        assert [m.training for m in model.modules()] == modes


def test_twin_is_self_leaf_matches_dense_recursion():
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    model = randomise(Graph.chain([Switch((4, 1, 1)), nn.Conv2d(4, 4, 3, padding=1), ChannelShuffle(), nn.ReLU(),
                                   Switch((4, 1, 1)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)]), gen)
    x = torch.randn(3, 4, 4, 4, generator=gen, dtype=torch.float64)
    assert_close_dicts(switch_curvature(model, batches_of(x, [3]), method='recursive'), recursion_dense(model, x),
                       rtol=1e-10)


class Scale(nn.Module):
    """A leaf the recursion does not know: y = c * x."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return self.c * x


def test_register_twin_teaches_the_recursion_a_new_leaf(monkeypatch):
    monkeypatch.setattr(hessian, '_TWINS', dict(hessian._TWINS))      # the registration stays here
    gen = torch.Generator().manual_seed(13)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64))
    tail = [nn.ReLU(), Switch((4, 1, 1)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3).double()]
    with_scale = nn.Sequential(Switch((3, 1, 1)), conv, Scale(2.0), *tail).double()
    x = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    with pytest.raises(TypeError, match='Scale'):
        switch_curvature(with_scale, batches_of(x, [5]), method='recursive')
    hessian.register_twin(Scale, lambda m, u, recorded: m.c * m.c * u)
    got = switch_curvature(with_scale, batches_of(x, [5]), method='recursive')
    # The same function with the factor in the conv weights, which the recursion knows.
    doubled = copy.deepcopy(conv)
    with torch.no_grad():
        doubled.weight.mul_(2.0)
        doubled.bias.mul_(2.0)
    plain = nn.Sequential(with_scale[0], doubled, nn.Identity(), *tail)      # same switch names
    assert_close_dicts(got, switch_curvature(plain, batches_of(x, [5]), method='recursive'), rtol=1e-12)


@pytest.mark.parametrize('method', ['ggn', 'fisher', 'recursive'])
def test_curvature_interface(method):
    """Exactly the Switch names come back, shaped like s (an unused switch gets 0); eval mode during the
    pass, the caller's modes afterwards; the model itself is left as it was (outputs, running
    statistics, no .grad, nothing patched)."""
    gen = torch.Generator().manual_seed(12)
    model = supernet(gen)
    model.unused = nn.ModuleDict({'sw': Switch((2,))})
    model.double()
    model.train()
    model.layers[1].eval()
    modes = {n: m.training for n, m in model.named_modules()}
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training)) for m in model.modules()]
    x = torch.randn(5, 3, 6, 6, generator=gen, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    model.layers[1].eval()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    seen.clear()
    got = switch_curvature(model, ((x[i:i + 2], None) for i in range(0, 5, 2)), method=method)   # an iterator
    for h in hooks:
        h.remove()
    assert seen and not any(seen)
    assert list(got) == switch_names(model)
    assert 'unused.sw' in got and bool((got['unused.sw'] == 0).all())
    for name in got:
        assert got[name].shape == model.get_submodule(name).s.shape
        assert bool(torch.isfinite(got[name]).all()) and bool((got[name] >= 0).all())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert all('forward' not in vars(m) for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), out)


def test_proximal_step_is_group_soft_thresholding():
    """w_g <- w_g max(0, 1 - lr lam omega_g / ||w_g||): groups with a small norm land exactly on 0,
    the others shrink along their own direction; pruned groups stay at 0."""
    model, prior, curv = make_prior(tiny=['edge:1-3', 'head[1]'])
    prior.update(curv)
    prior.prune(1e-6)
    before = {n: m.s.detach().clone() for n, m in model.named_modules() if isinstance(m, Switch)}
    lr = 0.5
    prior.proximal_step(lr)
    for key in prior.keys:
        g = prior.index[key]
        mem = members(model, key)
        names = {id(m): n for n, m in model.named_modules()}
        old = torch.stack([before[names[id(m)]].flatten()[i] for m, i in mem])
        new = torch.stack([m.s.detach().flatten()[i] for m, i in mem])
        factor = max(0.0, 1 - lr * lam_of(key) * float(prior.omega[g]) / float(old.norm())) if old.norm() > 0 else 0.0
        torch.testing.assert_close(new, old * factor, rtol=1e-12, atol=0)
        if key in ('edge:1-3', 'head[1]'):
            assert bool((new == 0).all()), key
    assert model.free.s.detach().item() == before['free'].item()          # not managed


# ----------------------------------------------------------------------------------------------------
# 8. ProxAdam: Adam on the loss, the penalty as a soft-threshold of the same step size
# ----------------------------------------------------------------------------------------------------

def test_prox_adam_reaches_the_penalised_minimum_whatever_the_step_size():
    """Loss (a - 2)^2 / 2 on switch a; switch b does not matter. With the penalty lam (|a| + |b|) the
    minimiser is a = 2 - lam, b = 0, for any learning rate."""
    for lr in (0.05, 0.2):
        model = nn.Sequential(Switch((2,)))
        prior = HardPrior(model, 0.3)
        opt = hessian.ProxAdam(prior, lr=lr)
        sw = model[0]
        for _ in range(800):
            opt.zero_grad()
            loss = 0.5 * (sw.value()[0] - 2) ** 2 + 0.0 * sw.value()[1]
            loss.backward()
            opt.step()
        assert sw.s[1].item() == 0.0
        assert abs(sw.s[0].item() - 1.7) < 0.02, lr
        state = opt.state_dict()
        other = hessian.ProxAdam(prior, lr=lr)
        other.load_state_dict(state)
        assert other.t == opt.t and all(torch.equal(a, b) for a, b in zip(other.m + other.v, opt.m + opt.v))


def test_prox_adam_step_equals_a_per_entry_reference():
    """One step on tied groups, pruned entries and switches without gradient, against Adam written out
    entry by entry and the soft-threshold with each group's smallest member step size."""
    model, prior, curv = make_prior(tiny=['edge:0-3'])
    prior.update(curv)
    prior.prune(1e-3)
    gen = torch.Generator().manual_seed(13)
    opt = hessian.ProxAdam(prior, lr=0.01)
    names = {id(m): n for n, m in model.named_modules()}
    for step in range(3):
        grads = {}
        for name, sw in prior.switches:
            if name != 'cells.1.edges.e1_2':             # one switch gets no gradient at all
                grads[name] = torch.randn(sw.s.shape, generator=gen, dtype=torch.float64)
        before = {name: sw.s.detach().clone() for name, sw in prior.switches}
        m_before = [x.clone() for x in opt.m]
        v_before = [x.clone() for x in opt.v]
        for name, sw in prior.switches:
            sw.s.grad = grads.get(name)
        opt.step()
        t = step + 1
        # Reference: Adam per entry, masked, then the group soft-threshold.
        moved, sizes = {}, {}
        for k, (name, sw) in enumerate(prior.switches):
            g = grads.get(name, torch.zeros_like(sw.s))
            m = 0.9 * m_before[k] + 0.1 * g
            v = 0.999 * v_before[k] + 0.001 * g * g
            size = 0.01 / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
            moved[name] = (before[name] - size * m / (1 - 0.9 ** t)) * sw.mask
            sizes[name] = size
        for key in prior.keys:
            g_index = prior.index[key]
            mem = members(model, key)
            w = torch.stack([moved[names[id(m)]].flatten()[i] for m, i in mem])
            group_size = min(float(sizes[names[id(m)]].flatten()[i]) for m, i in mem)
            shrink = max(0.0, 1 - group_size * lam_of(key) * float(prior.omega[g_index]) / max(float(w.norm()), 1e-30))
            got = torch.stack([m.s.detach().flatten()[i] for m, i in mem])
            torch.testing.assert_close(got, w * shrink, rtol=1e-10, atol=1e-15, msg=key)
    pruned = [k for k in prior.keys if bool(prior.pruned[prior.index[k]])]
    assert pruned and all(m.s.detach().flatten()[i].item() == 0 for k in pruned for m, i in members(model, k))


# ----------------------------------------------------------------------------------------------------
# Where the recursion's scale gap comes from
# ----------------------------------------------------------------------------------------------------

def chain(size, head):
    """conv - BN - ReLU - per-filter switch - head, with the head a global average pool or a flatten."""
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)] if head == 'pool' else \
        [nn.Flatten(), nn.Linear(8 * size * size, 10)]
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         Switch((8, 1, 1)), *pool).double()


def recursive_over_ggn(size, head):
    torch.manual_seed(0)
    net = chain(size, head)
    x = torch.randn(64, 3, size, size, dtype=torch.float64)
    net(x)                                                  # running statistics of this batch
    r, g = (next(iter(switch_curvature(net, [x], m).values())) for m in ('recursive', 'ggn'))
    return float((r / g).median())


def test_the_recursion_loses_the_cross_terms_of_a_global_average_pool():
    """A switch scales a whole map. Behind a flatten and a linear layer the cross terms between
    positions cancel and the diagonal recursion matches the GGN diagonal; behind a global average
    pool every pair of positions adds alike, so the diagonal keeps about 1/area of the sum."""
    for size in (8, 16):
        assert 0.8 < recursive_over_ggn(size, 'flatten') < 1.25
    ratios = [recursive_over_ggn(size, 'pool') for size in (8, 16, 32)]
    assert ratios[0] < 0.1 and ratios[2] < 0.01
    assert ratios[0] > 3 * ratios[1] > 9 * ratios[2] > 0          # about 1/area: 4x per doubling
