"""The proxyless space: PyramidTreeNet configs read, checked and written; ProxylessNAS-G built from the
published file; the supernet's switches and pruning; a tiny search that derives, writes and retrains
its network."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import derive
import proxyless
import search
import spaces
import train
import utils
from model_search import ProxylessNetwork, ProxylessSearch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / 'shared' / 'reference' / 'proxyless_cifar.config'


def reference():
    if not REFERENCE.is_file():
        pytest.skip(f'the published ProxylessNAS-G config is not at {REFERENCE} (../shared is absent)')
    return json.loads(REFERENCE.read_text())


def file_parameters(config):
    """The parameter count a config implies, read off the JSON alone (no modules)."""
    def layer(cfg):
        if cfg is None or cfg['name'] in ('ZeroLayer',):
            return 0
        if cfg['name'] == 'LinearLayer':
            return cfg['in_features'] * cfg['out_features'] + cfg['out_features'] * cfg['bias']
        c_in, c_out = cfg['in_channels'], cfg['out_channels']
        bn = 2 * (c_in if cfg['ops_order'].index('bn') < cfg['ops_order'].index('weight') else c_out) * cfg['use_bn']
        k = cfg.get('kernel_size', 0)
        if cfg['name'] == 'ConvLayer':
            return bn + k * k * c_in * c_out // cfg['groups'] + c_out * cfg['bias']
        if cfg['name'] == 'DepthConvLayer':
            return bn + k * k * c_in + c_in * c_out // cfg['groups'] + c_out * cfg['bias']
        return bn

    def node(n):
        if n is None:
            return 0
        return (sum(layer(e) + node(c) for e, c in zip(n['edges'], n['child_nodes']))
                + (2 * n['out_channels'] * len(n['edges']) if n['has_branch_bn'] else 0))

    total = layer(config['classifier'])
    for block in config['blocks']:
        if block['name'] == 'TransitionBlock':
            total += sum(layer(cfg) for cfg in block['layers'])
        else:
            total += sum(layer(block[k]) for k in ('shortcut', 'in_bottle', 'out_bottle')) + node(block['cell'])
            total += 2 * block['out_bottle']['out_channels'] * block['final_bn']
    return total


def random_trees(N, seed):
    """Random half trees for 3N blocks, each template edge a candidate or 'none'."""
    g = torch.Generator().manual_seed(seed)
    ops = proxyless.CANDIDATES + ['none']
    return [[[(ops[int(torch.randint(len(ops), (), generator=g))], s, d) for s, d in proxyless.TEMPLATE]
             for _ in range(2)] for _ in range(3 * N)]


# ----------------------------------------------------------------------------------------------------
# ProxylessNAS-G and the format
# ----------------------------------------------------------------------------------------------------

def test_proxylessnas_g_is_the_published_file_layer_for_layer():
    published = reference()
    assert proxyless.proxylessnas_g() == published          # every block, edge, width and flag
    assert json.dumps(proxyless.proxylessnas_g()) == json.dumps(published)     # in the file's field order
    units = proxyless.parse(published)
    trees = [u for kind, u in units if kind == 'tree']
    assert len(trees) == 54 and [t['width'] for t in trees] == proxyless.widths(16, 84, 18)
    assert [t['width'] for t in trees][:3] == [18, 18, 20] and trees[-1]['channels'] == 400
    counts = {}
    for t in trees:
        for edges, leaves in t['halves']:
            assert [(s, d) for _, s, d in edges] == proxyless.TEMPLATE and leaves == proxyless.LEAVES
            for op, _, _ in edges:
                counts[op] = counts.get(op, 0) + 1
    # The operation counts the reference lists for the 648 searchable edges.
    assert counts == {'dw_conv_7x7': 116, 'dil_dw_conv_3x3': 90, 'max_pool_3x3': 89, 'avg_pool_3x3': 89,
                      'dw_conv_5x5': 85, 'dw_conv_3x3': 83, 'skip_connect': 96}


def test_proxylessnas_g_builds_with_the_files_parameter_count_and_shape():
    published = reference()
    torch.manual_seed(0)
    net = ProxylessNetwork(published).eval()
    assert utils.count_params(net) == file_parameters(published) == 5_731_530     # 5.7M, as published
    with torch.no_grad():
        logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux is None and torch.isfinite(logits).all()
    # Layer for layer: each half's cell computes the file's op on each edge, a 7x7 depthwise conv as one.
    block = net.trees[0]
    assert [(e.names[0], e.src, e.dst) for e in block.halves[0].edges] == \
        proxyless.from_short(proxyless.PROXYLESSNAS_G[0][0])
    conv7 = block.halves[0].edges[0].ops[0]
    depthwise = [m for m in conv7.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.kernel_size, m.groups, m.in_channels, m.out_channels) for m in depthwise] == \
        [((7, 7), 18, 18, 18), ((1, 1), 1, 18, 18)]
    assert isinstance(block.shortcut, nn.Identity) and isinstance(net.trees[18].shortcut, nn.AvgPool2d)


def test_write_then_read_is_the_identity(tmp_path):
    trees = random_trees(2, seed=3)
    config = proxyless.network_config(8, 12, 2, trees, num_classes=10)
    path = tmp_path / 'net.json'
    path.write_text(proxyless.text(config))
    read = proxyless.load(path)
    assert read == config
    halves = [h for kind, u in proxyless.parse(read) if kind == 'tree' for h in u['halves']]
    assert [edges for edges, _ in halves] == [h for block in trees for h in block]
    # Written again from what was read: the same file.
    again = proxyless.network_config(8, 12, 2, [[e for e, _ in halves[i:i + 2]] for i in range(0, len(halves), 2)])
    assert proxyless.text(again) == path.read_text()
    net = ProxylessNetwork(read).eval()
    assert utils.count_params(net) == file_parameters(read)
    assert net(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)


def test_a_zero_edge_makes_its_branch_zero_and_costs_nothing():
    edges = proxyless.template('dw_conv_3x3')
    edges[0] = ('none', 0, 1)                               # 0->1 gone: 1->3 and 1->4 read zeros
    config = proxyless.network_config(4, 4, 1, [[edges, proxyless.template()]] * 3)
    net = ProxylessNetwork(config)
    half = net.trees[0].halves[0]
    assert [(e.src, e.dst) for e in half.edges] == [(0, 2), (1, 3), (1, 4), (2, 5), (2, 6)]
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8)
    half.eval()
    zeros = torch.zeros(3, 4, 8, 8)
    by_edge = {(e.src, e.dst): e for e in half.edges}
    expected = (by_edge[(1, 3)](zeros, [0]) + by_edge[(1, 4)](zeros, [0])
                + by_edge[(2, 5)](by_edge[(0, 2)](x, [0]), [0]) + by_edge[(2, 6)](by_edge[(0, 2)](x, [0]), [0]))
    assert torch.allclose(half(x), expected)


@pytest.mark.parametrize('mutate, message', [
    (lambda c: c.update(name='ResNet'), 'not a PyramidTreeNet config'),
    (lambda c: c['blocks'][3]['cell']['child_nodes'][0]['child_nodes'][1]['edges'][0].update(name='FooLayer'),
     r'blocks\[3\]\.cell\.child_nodes\[0\]\.child_nodes\[1\]\.edges\[0\]: unknown layer name .FooLayer.'),
    (lambda c: c['blocks'][2]['in_bottle'].update(in_channels=71),
     r'blocks\[2\]\.in_bottle: in_channels 71 but its input has 72 channels'),
    (lambda c: c['blocks'][1]['cell']['child_nodes'][0]['child_nodes'][0]['edges'][1].update(kernel_size=5),
     'is not one of the candidates'),
    (lambda c: c['classifier'].update(in_features=300), r'classifier: in_features 300 but its input has 400'),
    (lambda c: c['blocks'][5].pop('shortcut'), 'a ResidualTreeBlock has exactly the fields'),
    (lambda c: c['blocks'][5]['cell']['child_nodes'][0].update(split_type='copy'), 'must split its channels'),
])
def test_bad_configs_are_named_in_one_line(mutate, message):
    config = proxyless.proxylessnas_g()
    mutate(config)
    with pytest.raises(ValueError, match=message) as e:
        proxyless.parse(config)
    assert '\n' not in str(e.value)


def test_train_refuses_a_bad_config_in_one_line(tmp_path):
    config = proxyless.proxylessnas_g()
    config['blocks'][2]['out_bottle'].update(out_channels=81)
    path = tmp_path / 'bad.json'
    path.write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--space', 'proxyless', '--genotype', str(path),
                           '--data', str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
    assert 'blocks[3].in_bottle: in_channels 72 but its input has 81 channels' in proc.stderr


@pytest.mark.parametrize('argv, message', [
    (['--space', 'proxyless', '--arch', 'BayesNAS'], "unknown proxyless network 'BayesNAS'"),
    (['--space', 'proxyless', '--layers', '5'], '--layers does not apply to --space proxyless'),
    (['--space', 'proxyless', '--dataset', 'imagenet'], 'CIFAR-10 only'),
])
def test_train_refuses_what_does_not_apply_to_the_space(argv, message, tmp_path):
    with pytest.raises(utils.UserError, match=message):
        train.main(argv + ['--data', str(tmp_path)])


def test_train_uses_the_path_level_eas_recipe_by_default():
    args = train.fresh_args({'space': 'proxyless'})
    assert (args['arch'], args['epochs'], args['batch_size'], args['nesterov'], args['learning_rate'],
            args['lr_schedule'], args['weight_decay'], args['cutout'], args['cutout_length'], args['auxiliary'],
            args['drop_path_prob']) == ('ProxylessNAS_G', 300, 64, True, 0.1, 'cosine', 1e-4, True, 16, False, 0.0)


def test_drop_path_drops_whole_residual_branches_deeper_more_often():
    net = ProxylessNetwork(proxyless.network_config(4, 4, 1, [[proxyless.template()] * 2] * 3), drop_path_prob=0.5)
    seen = []
    for block in net.trees:
        block.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    net.train()
    net(torch.randn(4, 3, 32, 32))
    assert seen == pytest.approx([0.5 / 3, 1 / 3, 0.5])
    net.eval()
    seen.clear()
    assert torch.isfinite(net(torch.randn(2, 3, 32, 32))[0]).all() and seen == pytest.approx([0.5 / 3, 1 / 3, 0.5])


# ----------------------------------------------------------------------------------------------------
# The supernet
# ----------------------------------------------------------------------------------------------------

def test_the_supernet_has_seven_ops_behind_switches_on_every_edge():
    net = ProxylessSearch(C=4, N=2, alpha=4)
    info = net.switch_info()
    assert len(net.cells) == 12 and len(info) == 12 * 6 * (1 + 7)          # 6 blocks x 2 halves
    assert len({d['key'] for d in info}) == len(info)                      # untied: every block its own
    assert {d['cell_type'] for d in info} == {f'b{b}h{h}' for b in range(1, 7) for h in (0, 1)}
    tied = ProxylessSearch(C=4, N=2, alpha=4, tie=True).switch_info()
    assert {d['key'].split('/')[0] for d in tied} == {f's{s}h{h}' for s in (1, 2, 3) for h in (0, 1)}
    assert len({d['key'] for d in tied}) == 6 * 6 * 8
    parent, inflow = net.couplings()
    assert inflow['b3h1/1->4'] == ['b3h1/0->1'] and inflow['b3h1/0->2'] == []
    assert parent['b3h1/2->6/dw_conv_7x7'] == 'b3h1/2->6'


def test_pruned_edges_and_the_ops_behind_them_are_not_computed():
    torch.manual_seed(0)
    net = ProxylessSearch(C=4, N=1, alpha=4).eval()
    prior = net.build_prior(0.005, 0.005)
    calls = []
    for i, cell in enumerate(net.cells):
        for edge in cell.edges:
            for name, op in zip(edge.names, edge.ops):
                op.register_forward_hook(lambda m, inp, out, k=(i, edge.src, edge.dst, name): calls.append(k))
    x = torch.randn(2, 3, 32, 32)
    net(x)
    assert len(calls) == 6 * 6 * 7
    prune = {'b1h0/0->1', 'b2h1/2->5/dw_conv_5x5'}         # node 1 of b1h0 loses its only input
    prior.gamma[[prior.index[k] for k in prune]] = 0.
    prior.prune(0.0)
    calls.clear()
    out = net(x)
    assert torch.isfinite(out).all() and len(calls) == 6 * 6 * 7 - 3 * 7 - 1
    assert not any(c == 0 and (s == 1 or (s, d) == (0, 1)) for c, s, d, _ in calls)
    assert (3, 2, 5, 'dw_conv_5x5') not in calls and (3, 2, 5, 'dw_conv_3x3') in calls


# ----------------------------------------------------------------------------------------------------
# Search, derive, retrain: end to end on real images
# ----------------------------------------------------------------------------------------------------

def tiny(blocks=1):
    return ['--space', 'proxyless', '--layers', str(blocks), '--alpha', '4', '--init_channels', '4',
            '--batch_size', '8', '--warmup_portion', '0.2', '--hessian_batches', '2', '--report_freq', '4',
            '--seed', '1']


TINY = tiny()


def test_a_tiny_search_writes_its_network_and_the_network_trains(small_cifar, tmp_path):
    data = small_cifar(24, 20)
    save = tmp_path / 'run'
    # A tiny lambda: twelve steps on 96 images are too few to justify an op at the default.
    result = search.main(['--data', str(data), '--save', str(save), '--lambda', '1e-7'] + TINY)
    config = proxyless.load(save / 'genotype.json')
    assert config == result['genotype'] and config['classifier']['out_features'] == 10
    doc = json.loads((save / 'gamma.json').read_text())
    assert doc['space'] == 'proxyless' and doc['net'] == dict(C=4, layers=1, alpha=4, classes=10, tie=False)
    assert len(doc['groups']) == 6 * 6 * 8
    kept = [h for kind, u in proxyless.parse(config) if kind == 'tree' for h in u['halves']]
    live = {(r['cell_type'], r['src'], r['dst'], r['op']) for r in doc['groups'] if r['op'] and not r['pruned']}
    for (edges, _), name in zip(kept, [f'b{b}h{h}' for b in (1, 2, 3) for h in (0, 1)]):
        for op, s, d in edges:
            assert op == 'none' or (name, s, d, op) in live             # the network holds what survived
    for file, _, _ in spaces.get('proxyless').pictures:
        assert (save / file).read_bytes()[:4] == b'\x89PNG'
    log = (save / 'log.txt').read_text()
    assert 'derived network:' in log and 'multiply-adds per image' in log
    assert derive.main([str(save)]) == config                          # derive.py agrees with the search

    trained = train.main(['--space', 'proxyless', '--genotype', str(save / 'genotype.json'), '--data', str(data),
                          '--epochs', '1', '--batch_size', '16', '--save', str(tmp_path / 'train')])
    assert trained['params'] == utils.count_params(ProxylessNetwork(config)) == file_parameters(config)
    assert train.main(['--eval_only', str(tmp_path / 'train' / 'model.pt'), '--data', str(data)])['test_acc'] == \
        trained['test_acc']


def test_a_search_whose_every_op_is_pruned_still_writes_a_network(small_cifar, tmp_path):
    data = small_cifar(24, 20)
    save = tmp_path / 'run'
    result = search.main(['--data', str(data), '--save', str(save), '--lambda', '1e3'] + TINY)
    trees = [u for kind, u in proxyless.parse(result['genotype']) if kind == 'tree']
    assert all(op == 'none' for t in trees for edges, _ in t['halves'] for op, _, _ in edges)
    net = ProxylessNetwork(result['genotype']).eval()     # root convs and bottlenecks still compute
    assert net(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)


@pytest.mark.parametrize('argv, message', [
    (['--alpha', '8'], '--alpha applies to --space proxyless only'),
    (['--space', 'proxyless', '--hessian', 'recursive'], '--hessian recursive walks the DARTS'),
])
def test_search_refuses_flags_that_do_not_apply(argv, message, tmp_path):
    with pytest.raises(utils.UserError, match=message):
        search.main(argv + ['--data', str(tmp_path)])


def test_the_space_defaults_are_the_papers_proxyless_settings():
    args = search.space_defaults(search.build_parser().parse_args(['--space', 'proxyless']))
    assert (args.batch_size, args.learning_rate, args.layers, args.alpha, args.tie, args.init_channels) == \
        (32, 0.1, 18, 84, False, 16)
    darts = search.space_defaults(search.build_parser().parse_args([]))
    assert (darts.batch_size, darts.tie, darts.alpha) == (64, True, None)


def test_a_tied_search_gives_every_block_of_a_stage_the_same_trees(small_cifar, tmp_path):
    data = small_cifar(24, 20)
    result = search.main(['--data', str(data), '--save', str(tmp_path / 'run'), '--lambda', '1e-7', '--tie'] + tiny(2))
    doc = json.loads((tmp_path / 'run' / 'gamma.json').read_text())
    assert doc['net']['tie'] and {r['cell_type'] for r in doc['groups']} == {f's{s}h{h}' for s in (1, 2, 3) for h in (0, 1)}
    trees = [u['halves'] for kind, u in proxyless.parse(result['genotype']) if kind == 'tree']
    assert len(trees) == 6 and trees[0] == trees[1] and trees[2] == trees[3] and trees[4] == trees[5]
