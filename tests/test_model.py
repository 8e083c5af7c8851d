"""Cells and networks: DARTS's sizes, retrained networks from every named genotype, the supernet's
switches, pruning that removes computation (and changes nothing else), and the HARD prior wiring."""
import pytest
import torch
import torch.nn as nn

import genotypes
import hessian
import utils
from model_search import Edge, Network, NetworkCIFAR, NetworkImageNet


def count_parameters(model):
    """Parameters in millions, without the auxiliary head (as DARTS reports them)."""
    return sum(p.numel() for name, p in model.named_parameters() if 'auxiliary' not in name) / 1e6


def supernet(layers=3, tie=True, seed=0):
    torch.manual_seed(seed)
    return Network(C=4, num_classes=10, layers=layers, tie=tie)


def images(n=2, size=8, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def prune(switch):
    """Prune a scalar switch the way the prior does: s and mask to 0."""
    switch.prune_(torch.ones_like(switch.mask, dtype=torch.bool))


class OpCalls:
    """Counts the forward calls of every candidate op of a supernet."""

    def __init__(self, net):
        self.count = 0
        self.handles = [op.register_forward_hook(self._hook)
                        for cell in net.cells for edge in cell.edges for op in edge.ops]

    def _hook(self, module, inputs, output):
        self.count += 1

    def __call__(self, net, x):
        self.count = 0
        with torch.no_grad():
            out = net(x)
        return self.count, out


def edge_of(net, cell, src, dst):
    return next(e for e in net.cells[cell].edges if (e.src, e.dst) == (src, dst))


# ----------------------------------------------------------------------------------------------------
# Retrained networks
# ----------------------------------------------------------------------------------------------------

def test_darts_v2_has_darts_published_sizes():
    with torch.device('meta'):      # shapes only: no memory, no initialisation cost
        cifar = NetworkCIFAR(36, 10, 20, True, genotypes.DARTS_V2)
        imagenet = NetworkImageNet(48, 1000, 14, True, genotypes.DARTS_V2)
    assert round(count_parameters(cifar), 1) == 3.3
    assert round(count_parameters(imagenet), 1) == 4.7


def test_a_cell_that_reads_one_input_has_no_preprocessing_for_the_other():
    # The same normal cell with and without an extra skip from node 0 (a skip has no parameters):
    # the difference is exactly node 0's preprocessing in each normal cell.
    reads_one = [('sep_conv_3x3', 1, 2), ('skip_connect', 1, 3), ('max_pool_3x3', 2, 3)]
    g = genotypes.DARTS_V2._replace(normal=reads_one, normal_concat=[2, 3])
    torch.manual_seed(0)
    one = NetworkCIFAR(8, 10, 5, True, g)
    both = NetworkCIFAR(8, 10, 5, True, g._replace(normal=reads_one + [('skip_connect', 0, 3)]))
    normal = [i for i, cell in enumerate(one.cells) if not cell.reduction]
    assert all(one.cells[i].preprocess0 is None for i in normal)
    assert all(both.cells[i].preprocess0 is not None for i in normal)
    unread = sum(p.numel() for i in normal for p in both.cells[i].preprocess0.parameters())
    assert unread > 0 and utils.count_params(both) - utils.count_params(one) == unread
    # Every parameter left takes part: a training step gives each one a gradient (DDP needs that).
    logits, aux = one(images(size=32))
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in one.parameters())


@pytest.mark.parametrize('name', genotypes.NAMES)
def test_every_named_genotype_trains_in_a_small_cifar_network(name):
    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 3, True, genotypes.from_name(name), drop_path_prob=0.2)
    logits, aux = net(images(size=32))
    assert logits.shape == aux.shape == (2, 10)
    (logits.logsumexp(1).sum() + 0.4 * aux.logsumexp(1).sum()).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.eval()
    logits, aux = net(images(size=32))
    assert aux is None and torch.isfinite(logits).all()


def test_triples_with_any_concat_and_in_degree_build():
    g = genotypes.Genotype(
        normal=[('skip_connect', 0, 2), ('sep_conv_3x3', 0, 2), ('max_pool_3x3', 1, 2), ('avg_pool_3x3', 2, 4)],
        normal_concat=[4],
        reduce=[('sep_conv_5x5', 1, 2), ('skip_connect', 0, 3), ('skip_connect', 2, 3)],
        reduce_concat=[2, 3])
    net = NetworkCIFAR(4, 10, 3, False, g)
    assert [c.multiplier for c in net.cells] == [1, 2, 2]
    assert net.classifier.in_features == 2 * 16
    assert [len(e.ops) for e in net.cells[0].edges] == [2, 1, 1]      # two summed ops on edge 0 -> 2
    logits, aux = net(images(size=16))
    assert logits.shape == (2, 10) and aux is None


def test_imagenet_network_with_auxiliary_head():
    torch.manual_seed(0)
    net = NetworkImageNet(8, 10, 3, True, genotypes.BayesNAS_0_01, drop_path_prob=0.1)
    logits, aux = net(images(n=2, size=224))
    assert logits.shape == aux.shape == (2, 10)
    (logits.sum() + aux.sum()).backward()
    assert net.stem0[0].weight.grad is not None


def test_drop_path_spares_identities_and_drops_whole_samples():
    torch.manual_seed(0)
    x = torch.randn(64, 4, 4, 4)
    skip = Edge(['skip_connect'], 0, 2, 4, 1, switches=False).train()
    assert torch.equal(skip(x, range(1), drop_prob=0.5), x)
    pool = Edge(['max_pool_3x3'], 0, 2, 4, 1, switches=False).train()
    y, plain = pool(x, range(1), drop_prob=0.5), nn.functional.max_pool2d(x, 3, 1, 1)
    dropped = (y == 0).flatten(1).all(1)
    assert 0 < dropped.sum() < 64
    assert torch.allclose(y[~dropped], plain[~dropped] * 2)
    assert torch.equal(pool.eval()(x, range(1), drop_prob=0.5), plain)


# ----------------------------------------------------------------------------------------------------
# Supernet
# ----------------------------------------------------------------------------------------------------

def test_supernet_forward_backward_reaches_every_parameter():
    net = supernet()
    assert [c.reduction for c in net.cells] == [False, True, True]
    net(images()).logsumexp(1).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    switches, weights = net.switch_parameters(), net.weight_parameters()
    assert len(switches) == 3 * 14 * 8          # per cell: 14 edge switches, 7 op switches per edge
    assert {id(p) for p in switches}.isdisjoint(id(p) for p in weights)
    assert len(switches) + len(weights) == len(list(net.parameters()))


def test_search_ops_have_no_affine_parameters_and_pools_and_identities_get_a_batchnorm():
    edge = edge_of(supernet(), 0, 0, 2)
    assert edge.names == genotypes.CANDIDATES
    for name, op in zip(edge.names, edge.ops):
        bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(not bn.affine for bn in bns), name
        if 'pool' in name or name == 'skip_connect':      # stride 1: the identity, then a BN
            assert isinstance(op[-1], nn.BatchNorm2d)
        if name == 'skip_connect':
            assert isinstance(op[0], nn.Identity)
    # Retrained networks keep DARTS's bare identity (drop-path leaves it alone).
    plain = Edge(['skip_connect'], 0, 2, 4, 1, switches=False)
    assert isinstance(plain.ops[0], nn.Identity)


def test_switch_info_names_and_keys():
    net = supernet()
    info = net.switch_info()
    names = [n for n, m in net.named_modules() if isinstance(m, hessian.Switch)]
    assert [d['name'] for d in info] == names
    edge = dict(next(d for d in info if d['cell'] == 1 and d['src'] == 2 and d['dst'] == 4 and d['op'] is None))
    assert edge['key'] == 'reduce/2->4' and edge['cell_type'] == 'reduce'
    op = next(d for d in info if d['cell'] == 0 and d['op'] == 'sep_conv_3x3' and (d['src'], d['dst']) == (0, 2))
    assert op['key'] == 'normal/0->2/sep_conv_3x3'
    assert len({d['key'] for d in info}) == 2 * 14 * 8      # tied: one key per cell type and position
    untied = supernet(tie=False).switch_info()
    assert len({d['key'] for d in untied}) == len(untied)
    assert {d['key'] for d in untied if d['cell'] == 2 and d['op'] is None} >= {'cell2/0->2', 'cell2/4->5'}


def test_recursive_curvature_runs_through_the_supernet():
    net = supernet()
    x = images()
    # Running statistics from a few training-mode passes, as a search has them when it measures:
    # with the initial ones (mean 0, variance 1) the summed ops blow up and the softmax saturates.
    with torch.no_grad():
        for _ in range(30):
            net(x)
    curv = hessian.switch_curvature(net, [(x, torch.zeros(2, dtype=torch.long))], method='recursive')
    assert set(curv) == {d['name'] for d in net.switch_info()}
    assert all(torch.isfinite(c).all() and (c >= 0).all() for c in curv.values())
    assert any(c.item() > 0 for c in curv.values())


# ----------------------------------------------------------------------------------------------------
# Pruning removes computation and changes nothing else
# ----------------------------------------------------------------------------------------------------

def same_function_as_zero_switch(switches, x, net_factory=supernet):
    """Logits of a net whose `switches` (indices into switch_parameters order) are set to 0 but kept,
    and of one where they are pruned: equal in eval mode (fresh BN statistics make op(0) = 0)."""
    zeroed, pruned = net_factory().eval(), net_factory().eval()
    with torch.no_grad():
        for i in switches:
            zeroed.switch_parameters()[i].zero_()
    for i in switches:
        prune([m for m in pruned.modules() if isinstance(m, hessian.Switch)][i])
    with torch.no_grad():
        return zeroed(x), pruned(x)


def switch_index(net, cell, src, dst, op=None):
    return next(i for i, d in enumerate(net.switch_info())
                if (d['cell'], d['src'], d['dst'], d['op']) == (cell, src, dst, op))


def test_pruning_an_op_removes_its_call():
    net, x = supernet().eval(), images()
    calls = OpCalls(net)
    full, before = calls(net, x)
    assert full == 3 * 14 * 7
    prune(edge_of(net, 0, 1, 3).op_switches[4])
    assert calls(net, x)[0] == full - 1
    i = switch_index(net, 0, 1, 3, genotypes.CANDIDATES[4])
    zeroed, pruned = same_function_as_zero_switch([i], x)
    assert torch.allclose(zeroed, pruned, atol=1e-6)


def test_pruning_a_parent_removes_all_its_ops():
    net, x = supernet().eval(), images()
    calls = OpCalls(net)
    full, _ = calls(net, x)
    prune(edge_of(net, 1, 0, 2).switch)
    assert calls(net, x)[0] == full - 7
    for sw in edge_of(net, 2, 3, 5).op_switches:        # every op of an edge: the edge goes too
        prune(sw)
    assert calls(net, x)[0] == full - 14
    zeroed, pruned = same_function_as_zero_switch([switch_index(net, 1, 0, 2)], x)
    assert torch.allclose(zeroed, pruned, atol=1e-6)


def test_a_dead_node_stops_its_outgoing_edges_and_outputs_zeros():
    net, x = supernet().eval(), images()
    calls = OpCalls(net)
    full, out = calls(net, x)
    dead = [switch_index(net, 2, src, 2) for src in (0, 1)]
    for i in dead:
        prune([m for m in net.modules() if isinstance(m, hessian.Switch)][i])
    seen = {}
    handle = net.cells[2].register_forward_hook(lambda m, inp, output: seen.update(out=output))
    count, logits = calls(net, x)
    handle.remove()
    # The two edges into node 2 and the three edges out of it (2->3, 2->4, 2->5), 7 ops each.
    assert count == full - 5 * 7
    C = net.cells[2].C
    assert seen['out'].shape == (2, 4 * C, 2, 2)
    assert torch.count_nonzero(seen['out'][:, :C]) == 0        # node 2 is the first concatenated node
    zeroed, pruned = same_function_as_zero_switch(dead, x)
    assert torch.allclose(zeroed, pruned, atol=1e-6)
    # Still trainable, and nothing reaches the pruned ops' weights.
    net.train()
    net(x).logsumexp(1).sum().backward()
    assert edge_of(net, 2, 2, 4).ops[3].op[1].weight.grad is None
    assert net.cells[2].preprocess1.op[1].weight.grad is not None


def test_a_cell_whose_input_is_unread_skips_its_preprocessing():
    net, x = supernet().eval(), images()
    for edge in net.cells[0].edges:
        if edge.src == 0:
            prune(edge.switch)
    calls = []
    net.cells[0].preprocess0.register_forward_hook(lambda *a: calls.append(1))
    net.cells[0].preprocess1.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        net(x)
    assert len(calls) == 1


def test_dead_node_zeros_follow_input_dtype():
    net = supernet().double().eval()
    for src in (0, 1):
        prune(edge_of(net, 0, src, 2).switch)
    with torch.no_grad():
        assert net(images().double()).dtype == torch.float64


# ----------------------------------------------------------------------------------------------------
# HARD prior wiring
# ----------------------------------------------------------------------------------------------------

def test_couplings_link_ops_to_edges_and_edges_to_the_edges_before_them():
    net = supernet()
    parent, inflow = net.couplings()
    info = net.switch_info()
    edge_keys = {d['key'] for d in info if d['op'] is None}
    assert set(parent) == {d['key'] for d in info if d['op']}
    assert all(parent[d['key']] == f"{d['cell_type']}/{d['src']}->{d['dst']}" for d in info if d['op'])
    assert set(inflow) == edge_keys
    assert inflow['reduce/3->5'] == ['reduce/0->3', 'reduce/1->3', 'reduce/2->3']
    assert inflow['normal/2->4'] == ['normal/0->2', 'normal/1->2']
    assert inflow['normal/1->4'] == [] and inflow['reduce/0->2'] == []


def test_build_prior_groups_and_lambdas():
    net = supernet()
    prior = net.build_prior(0.01, 0.005)
    assert set(prior.keys) == {d['key'] for d in net.switch_info()}
    rows = {r['key']: r for r in prior.table()}
    assert rows['normal/0->2']['lam'] == 0.01 and rows['normal/0->2/skip_connect']['lam'] == 0.005
    assert len(rows['normal/0->2']['members']) == 1 and len(rows['reduce/0->2']['members']) == 2
    with pytest.raises(ValueError, match='lam_child must be a positive number'):
        net.build_prior(0.01, 0.0)
    with pytest.raises(ValueError, match='lam_origin must be a positive number'):
        net.build_prior(float('nan'), 0.01)


def test_prior_pruning_removes_ops_in_every_tied_cell():
    net, x = supernet(layers=5), images()
    prior = net.build_prior(0.01, 0.01)
    calls = OpCalls(net)
    full, _ = calls(net.eval(), x)
    prior.gamma[prior.keys.index('normal/1->3')] = 0.0
    newly = prior.prune(1e-6)
    assert 'normal/1->3' in newly and 'normal/1->3/sep_conv_5x5' in newly
    assert calls(net, x)[0] == full - 3 * 7         # three normal cells in a 5-cell network


def test_untied_prior_prunes_one_cell_only():
    net, x = supernet(tie=False), images()
    prior = net.build_prior(0.01, 0.01)
    calls = OpCalls(net)
    full, _ = calls(net.eval(), x)
    prior.gamma[prior.keys.index('cell0/0->4/max_pool_3x3')] = 0.0
    assert prior.prune(1e-6) == ['cell0/0->4/max_pool_3x3']
    assert calls(net, x)[0] == full - 1


def test_loading_a_pruned_state_takes_its_ops_out():
    """Resuming a search loads pruned masks: the cells must not keep computing what they had cached."""
    net, x = supernet().eval(), images()
    calls = OpCalls(net)
    full, _ = calls(net, x)
    other = supernet()
    prune(edge_of(other, 0, 1, 3).switch)
    net.load_state_dict(other.state_dict())
    assert calls(net, x)[0] == full - 7
