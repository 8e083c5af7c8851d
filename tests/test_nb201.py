"""The NAS-Bench-201 space: the benchmark's network sizes, its architecture strings, the supernet's
pruning, derivation, a search end to end, retraining, and the benchmark lookup."""
import itertools
import json
import sys
import types

import pytest
import torch

import bayesnas
import benchmark
import derive
import genotypes
import model_search
import search
import spaces
import train
import utils
from model_search import NB201Network, NB201Search

NONE = '|none~0|+|none~0|none~1|+|none~0|none~1|none~2|'
CONV3 = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|'
RESNET = '|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|'


def arch(ops):
    """The string of six ops in the string's order (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2)."""
    edges = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    return genotypes.nb201_string([(op, s, d) for op, (s, d) in zip(ops, edges)])


# ----------------------------------------------------------------------------------------------------
# The network of a string has the benchmark's size
# ----------------------------------------------------------------------------------------------------

def expected_params(string, num_classes=10):
    """The size from the benchmark's definition: the fixed skeleton plus each cell's convolutions."""
    per_op = {'nor_conv_3x3': lambda C: 9 * C * C + 2 * C, 'nor_conv_1x1': lambda C: C * C + 2 * C}
    cells = sum(5 * per_op[op](C) for op, _, _ in genotypes.nb201_cell(string) if op in per_op
                for C in (16, 32, 64))
    stem = 3 * 16 * 9 + 2 * 16
    blocks = sum(9 * a * b + 2 * b + 9 * b * b + 2 * b + a * b for a, b in ((16, 32), (32, 64)))
    return stem + blocks + 2 * 64 + 64 * num_classes + num_classes + cells


@pytest.mark.parametrize('string, published', [(NONE, 0.073306), (CONV3, 1.531546)])
def test_the_smallest_and_largest_networks_have_the_published_sizes(string, published):
    # The benchmark's CIFAR-10 table spans 0.073306 to 1.531546 M parameters and 7.78305 to
    # 220.11969 M FLOPs (multiply-adds).
    net = NB201Network(16, 5, 10, string)
    assert utils.count_params(net) / 1e6 == pytest.approx(published, abs=5e-7)
    macs = utils.count_macs(net, (3, 32, 32)) / 1e6
    assert macs == pytest.approx(7.78305 if string == NONE else 220.11969, abs=2e-5)


def test_cifar100_head_gives_the_published_smallest_size():
    assert utils.count_params(NB201Network(16, 5, 100, NONE)) == 79156


@pytest.mark.parametrize('string', [RESNET, genotypes.NB201_EXAMPLE, arch(['nor_conv_1x1'] * 6),
                                    arch(['avg_pool_3x3', 'skip_connect', 'nor_conv_1x1', 'none',
                                          'nor_conv_3x3', 'avg_pool_3x3'])])
def test_every_cell_has_the_size_of_the_benchmarks_definition(string):
    net = NB201Network(16, 5, 10, string)
    assert utils.count_params(net) == expected_params(string)
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux is None


def test_ops_out_of_a_node_without_input_read_its_zeros_as_the_benchmark_does():
    # Node 1 gets nothing; the conv 1->3 still runs on zeros, so its BatchNorm shift reaches node 3.
    net = NB201Network(4, 1, 10, arch(['none', 'none', 'none', 'none', 'nor_conv_3x3', 'none'])).eval()
    conv = net.cells[0].edges[0].ops[0]
    calls = []
    conv.register_forward_hook(lambda m, i, o: calls.append(float(i[0].abs().sum())))
    net(torch.randn(1, 3, 32, 32))
    assert calls == [0.0]


# ----------------------------------------------------------------------------------------------------
# Architecture strings and files
# ----------------------------------------------------------------------------------------------------

def test_every_string_of_the_space_round_trips():
    seen = set()
    for ops in itertools.product(genotypes.NB201_OPERATIONS, repeat=6):
        s = arch(ops)
        edges = genotypes.nb201_edges(s)
        assert [op for op, _, _ in edges] == list(ops)
        assert genotypes.nb201_string(genotypes.nb201_cell(s)) == s
        seen.add(s)
    assert len(seen) == 15625


def test_the_json_file_records_the_space_and_the_string(tmp_path):
    genotypes.save_json(RESNET, tmp_path / 'g.json')
    assert json.loads((tmp_path / 'g.json').read_text()) == {'space': 'nb201', 'arch': RESNET}
    assert genotypes.load_file(tmp_path / 'g.json') == ('nb201', RESNET)
    with pytest.raises(ValueError, match='nb201 space, not a DARTS genotype'):
        genotypes.load_json(tmp_path / 'g.json')
    genotypes.save_json(genotypes.DARTS_V2, tmp_path / 'd.json')
    assert genotypes.load_file(tmp_path / 'd.json') == ('darts', genotypes.canonical(genotypes.DARTS_V2))


@pytest.mark.parametrize('bad, message', [
    ('|nor_conv_3x3~0|+|none~0|none~1|', 'expected 3 groups'),
    ('nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|', 'node 1 is'),
    ('|nor_conv_3x3~0|+|none~0|+|none~0|none~1|none~2|', 'node 2 needs 2'),
    ('|nor_conv_3x3~1|+|none~0|none~1|+|none~0|none~1|none~2|', 'must be op~0'),
    ('|nor_conv_3x3|+|none~0|none~1|+|none~0|none~1|none~2|', 'must be op~0'),
    ('|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|', "unknown operation 'sep_conv_3x3'"),
    (None, 'is a string'),
])
def test_malformed_strings_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        genotypes.nb201_edges(bad)


@pytest.mark.parametrize('content, message', [
    ({'space': 'nb201', 'arch': '|x~0|'}, 'malformed'),
    ({'space': 'nb201'}, 'must be'),
    ({'space': 'other', 'arch': RESNET}, 'must be'),
])
def test_bad_nb201_files_are_named(content, message, tmp_path):
    (tmp_path / 'g.json').write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        genotypes.load_file(tmp_path / 'g.json')


# ----------------------------------------------------------------------------------------------------
# The supernet
# ----------------------------------------------------------------------------------------------------

def test_supernet_switches_are_tied_over_the_fifteen_cells():
    net = NB201Search(4, 5)
    info = net.switch_info()
    assert len(net.cells) == 15 and len(info) == 15 * 6 * 5
    keys = {d['key'] for d in info}
    assert len(keys) == 6 * 5 and all(k.startswith('normal/') for k in keys)
    prior = net.build_prior(0.002, 0.002)
    assert len(prior.keys) == 30
    parent, inflow = net.couplings()
    assert inflow['normal/1->3'] == ['normal/0->1'] and inflow['normal/0->2'] == []
    assert len({d['key'] for d in NB201Search(4, 2, tie=False).switch_info()}) == 6 * 6 * 5


def test_pruned_ops_and_edges_of_the_supernet_are_not_computed():
    torch.manual_seed(0)
    net = NB201Search(4, 1).eval()
    prior = net.build_prior(0.002, 0.002)
    calls = []
    for cell in net.cells:
        for edge in cell.edges:
            for name, op in zip(edge.names, edge.ops):
                op.register_forward_hook(lambda m, i, o, k=(edge.src, edge.dst, name): calls.append(k))
    x = torch.randn(2, 3, 32, 32)
    net(x)
    assert len(calls) == 3 * 6 * 4                      # three cells, every op
    prune = {'normal/0->1', 'normal/1->2/nor_conv_3x3'}     # node 1 loses its only input
    prior.gamma[[prior.index[k] for k in prune]] = 0.
    prior.prune(0.0)
    calls.clear()
    out = net(x)
    assert torch.isfinite(out).all() and len(calls) == 3 * (6 - 3) * 4    # edges 0->1, 1->2, 1->3 gone
    assert not any(src == 1 or (src, dst) == (0, 1) for src, dst, _ in calls)
    assert (0, 2, 'nor_conv_3x3') in calls and (2, 3, 'skip_connect') in calls


def test_a_cell_whose_output_node_is_pruned_gives_zeros():
    net = NB201Search(4, 1).eval()
    prior = net.build_prior(0.002, 0.002)
    prior.gamma[[prior.index[f'normal/{i}->3'] for i in range(3)]] = 0.
    prior.prune(0.0)
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(net.cells[0](x), torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------------
# Derivation
# ----------------------------------------------------------------------------------------------------

def rows(gammas, pruned=()):
    """Gamma-table rows of a tied nb201 search: gammas {(src, dst, op): gamma}, edges at gamma 1."""
    out = []
    for dst in range(1, 4):
        for src in range(dst):
            edge = f'normal/{src}->{dst}'
            out.append(dict(key=edge, gamma=1.0, pruned=edge in pruned))
            for op in genotypes.NB201_CANDIDATES:
                g = gammas.get((src, dst, op), 0.0)
                out.append(dict(key=f'{edge}/{op}', gamma=g, pruned=g == 0 or edge in pruned))
    return out


NB = spaces.get('nb201')


def test_derivation_keeps_the_strongest_surviving_op_of_each_edge():
    g = {(0, 1, 'nor_conv_3x3'): 0.5, (0, 1, 'skip_connect'): 0.9, (0, 2, 'nor_conv_1x1'): 0.2,
         (1, 2, 'avg_pool_3x3'): 0.1, (0, 3, 'skip_connect'): 0.3, (1, 3, 'nor_conv_3x3'): 0.3,
         (1, 3, 'nor_conv_1x1'): 0.3, (2, 3, 'nor_conv_3x3'): 1e-3}
    string = derive.derive_from_table(rows(g), threshold=0, space=NB)
    # Ties go to the space's candidate order (1x1 before 3x3).
    assert string == '|skip_connect~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|'
    assert derive.derive_from_table(rows(g), threshold=0.25, space=NB) == \
        '|skip_connect~0|+|none~0|none~1|+|skip_connect~0|nor_conv_1x1~1|none~2|'


def test_ops_into_a_node_that_does_not_reach_the_output_are_dropped():
    g = {(0, 1, 'nor_conv_3x3'): 0.5, (0, 2, 'nor_conv_3x3'): 0.5, (0, 3, 'skip_connect'): 0.5}
    # Node 1 and node 2 are computed but nothing carries them to node 3.
    assert derive.derive_from_table(rows(g), threshold=0, space=NB) == \
        '|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|'
    g[(2, 3, 'avg_pool_3x3')] = 0.1
    assert derive.derive_from_table(rows(g), threshold=0, space=NB) == \
        '|none~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|'


def test_a_pruned_edge_becomes_none_and_an_empty_cell_is_refused():
    g = {(0, 1, 'nor_conv_3x3'): 0.5, (1, 3, 'nor_conv_3x3'): 0.5, (0, 3, 'skip_connect'): 0.5}
    assert derive.derive_from_table(rows(g, pruned={'normal/0->1'}), threshold=0, space=NB) == \
        '|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|'
    with pytest.raises(utils.UserError, match='no operation into any output node'):
        derive.derive_from_table(rows({(0, 1, 'nor_conv_3x3'): 0.5}), threshold=0, space=NB)
    with pytest.raises(utils.UserError, match='--topk does not apply to the nb201 space'):
        derive.derive_from_table(rows(g), topk=2, space=NB)


# ----------------------------------------------------------------------------------------------------
# Search, derive, retrain, look up: end to end on real images
# ----------------------------------------------------------------------------------------------------

TINY = ['--space', 'nb201', '--layers', '1', '--init_channels', '4', '--batch_size', '8',
        '--warmup_portion', '0.2', '--hessian_batches', '2', '--report_freq', '4', '--seed', '1']


def table(path, rows_, header='arch_str,cifar10_valid_acc,cifar10_test_acc,params'):
    path.write_text(header + '\n' + ''.join(','.join(map(str, r)) + '\n' for r in rows_))
    return path


def test_a_tiny_search_derives_retrains_and_looks_up_its_cell(small_cifar, tmp_path, capsys):
    data = small_cifar(24, 20)
    save = tmp_path / 'run'
    result = search.main(['--data', str(data), '--save', str(save)] + TINY)
    string = result['genotype']
    genotypes.nb201_edges(string)
    assert capsys.readouterr().out.splitlines()[-1] == string       # the last line is the string
    assert genotypes.load_file(save / 'genotype.json') == ('nb201', string)
    doc = json.loads((save / 'gamma.json').read_text())
    assert doc['space'] == 'nb201' and len(doc['groups']) == 30
    assert doc['lambda_origin'] == doc['lambda_child'] == spaces.get('nb201').lam == 0.005     # the space's own
    assert (save / 'cell.png').read_bytes()[:4] == b'\x89PNG'
    assert not (save / 'genotype.py').exists() and not (save / 'cell_normal.png').exists()

    csv = table(tmp_path / 'bench.csv', [(string, 85.5, 88.25, 1.2), (string, 86.5, 88.75, 1.2),
                                         (RESNET, 90, 93, 0.5)])
    assert derive.main([str(save), '--benchmark', str(csv)]) == string
    out = capsys.readouterr().out.splitlines()
    assert out[0] == string
    assert out[1] == '# benchmark bench.csv (mean of 2 rows): cifar10_valid_acc 86.00, cifar10_test_acc 88.50'

    # The same search with a lookup prints it before the string, which stays the last line.
    search.main(['--data', str(data), '--save', str(tmp_path / 'run2'), '--benchmark', str(csv)] + TINY)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == string and 'benchmark bench.csv' in lines[-3]

    trained = train.main(['--space', 'nb201', '--genotype', str(save / 'genotype.json'), '--data', str(data),
                          '--epochs', '1', '--layers', '1', '--init_channels', '4', '--batch_size', '16',
                          '--save', str(tmp_path / 'train')])
    args = json.loads((tmp_path / 'train' / 'args.json').read_text())
    assert (args['nesterov'], args['weight_decay'], args['lr_schedule'], args['cutout'], args['auxiliary']) == \
        (True, 5e-4, 'cosine', False, False)
    assert trained['params'] == utils.count_params(NB201Network(4, 1, 10, string))
    assert train.main(['--eval_only', str(tmp_path / 'train' / 'model.pt'), '--data', str(data)])['test_acc'] == \
        trained['test_acc']


def test_train_uses_the_benchmarks_recipe_by_default():
    args = train.fresh_args({'space': 'nb201', 'arch': RESNET})
    assert {k: args[k] for k in ('epochs', 'batch_size', 'learning_rate', 'lr_schedule', 'momentum', 'nesterov',
                                 'weight_decay', 'init_channels', 'layers', 'cutout', 'auxiliary',
                                 'drop_path_prob', 'grad_clip', 'label_smooth')} == dict(
        epochs=200, batch_size=256, learning_rate=0.1, lr_schedule='cosine', momentum=0.9, nesterov=True,
        weight_decay=5e-4, init_channels=16, layers=5, cutout=False, auxiliary=False, drop_path_prob=0.0,
        grad_clip=0.0, label_smooth=0.0)
    assert train.fresh_args({})['nesterov'] is False


@pytest.mark.parametrize('argv, message', [
    (['--space', 'nb201'], '--space nb201 needs --arch'),
    (['--space', 'nb201', '--arch', '|nor_conv_3x3~0|'], 'malformed NAS-Bench-201 architecture'),
    (['--space', 'nb201', '--arch', RESNET, '--dataset', 'imagenet'], 'CIFAR-10 only'),
    (['--space', 'nb201', '--arch', RESNET, '--auxiliary'], 'no auxiliary head'),
    (['--space', 'nb201', '--arch', RESNET, '--momentum', '0'], '--nesterov needs a positive --momentum'),
])
def test_train_refuses_bad_nb201_input_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        utils.cli(lambda: train.main(argv + ['--data', '/nonexistent']))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_train_names_the_space_of_a_genotype_file(tmp_path):
    genotypes.save_json(RESNET, tmp_path / 'g.json')
    with pytest.raises(utils.UserError, match='nb201 space; pass --space nb201'):
        train.load_genotype(train.argparse.Namespace(**train.fresh_args({'genotype': str(tmp_path / 'g.json')})))


# ----------------------------------------------------------------------------------------------------
# Benchmark lookup errors
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('header, rows_, message', [
    ('cell,cifar10_test_acc', [(RESNET, 93)], 'no column of architecture strings'),
    ('arch,params', [(RESNET, 0.5)], 'no accuracy column'),
    ('arch,test_acc', [(NONE, 10)], 'is not in benchmark table'),
    ('arch,test_acc', [(RESNET, 'n/a')], 'hold no numbers'),
])
def test_bad_benchmark_tables_are_named(header, rows_, message, tmp_path):
    path = table(tmp_path / 't.csv', rows_, header)
    with pytest.raises(utils.UserError, match=message):
        benchmark.lookup(path, RESNET)


def test_a_missing_benchmark_file_is_named(tmp_path):
    with pytest.raises(utils.UserError, match='does not exist'):
        benchmark.lookup(tmp_path / 'missing.csv', RESNET)


def test_the_nats_bench_file_needs_its_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'nats_bench', None)       # import fails as if not installed
    (tmp_path / 'NATS-tss-v1_0-3ffb9-simple').mkdir()
    with pytest.raises(utils.UserError, match='needs the nats_bench package'):
        benchmark.lookup(tmp_path / 'NATS-tss-v1_0-3ffb9-simple', RESNET)


def test_the_nats_bench_api_is_asked_for_the_200_epoch_accuracies(tmp_path, monkeypatch):
    asked = []

    class API:
        def query_index_by_arch(self, arch):
            return 7 if arch == RESNET else -1

        def get_more_info(self, index, dataset, hp, is_random):
            asked.append((index, dataset, hp, is_random))
            return {'valid-accuracy': 90.0, 'test-accuracy': 93.5} if dataset == 'cifar10-valid' else \
                {'test-accuracy': 94.0}

    fake = types.ModuleType('nats_bench')
    fake.create = lambda path, space, fast_mode, verbose: API() if space == 'tss' else None
    monkeypatch.setitem(sys.modules, 'nats_bench', fake)
    path = tmp_path / 'NATS-tss'
    path.mkdir()
    assert benchmark.lookup(path, RESNET) == ('# benchmark NATS-tss: cifar10-valid valid-accuracy 90.00, '
                                           'cifar10-valid test-accuracy 93.50, cifar10 test-accuracy 94.00')
    assert asked == [(7, 'cifar10-valid', '200', False), (7, 'cifar10', '200', False)]
    with pytest.raises(utils.UserError, match='is not in the NATS-Bench file'):
        benchmark.lookup(path, NONE)


def test_benchmark_applies_to_nb201_searches_only(small_cifar, tmp_path):
    with pytest.raises(utils.UserError, match='--benchmark looks up NAS-Bench-201 cells'):
        search.main(['--data', str(small_cifar(24, 20)), '--benchmark', str(tmp_path / 't.csv')])


def test_a_missing_benchmark_file_stops_the_search_before_it_starts(small_cifar, tmp_path):
    save = tmp_path / 'run'
    with pytest.raises(utils.UserError, match='does not exist'):
        search.main(['--data', str(small_cifar(24, 20)), '--save', str(save), '--benchmark',
                     str(tmp_path / 'missing.csv')] + TINY)
    assert not save.exists()


# ----------------------------------------------------------------------------------------------------
# Against the supernet's lean on the identity: selection by relevance, auxiliary identity, op dropout
# ----------------------------------------------------------------------------------------------------

def relevant_rows(gammas, relevances):
    """rows() with a relevance on every op row: relevances {(src, dst, op): r}, 0 elsewhere."""
    out = rows(gammas)
    for row in out:
        parts = row['key'].split('/')
        if len(parts) == 3:
            src, dst = map(int, parts[1].split('->'))
            row['relevance'] = relevances.get((src, dst, parts[2]), 0.0)
    return out


@pytest.mark.parametrize('stronger', ['skip_connect', 'avg_pool_3x3'])
def test_a_tie_in_gamma_goes_to_the_more_relevant_op_not_to_the_first_in_the_list(stronger):
    # Every op of every edge capped at the same gamma (the coupling to a shrunken edge); the op with
    # the larger relevance wins whether it comes first (skip_connect) or last (avg_pool_3x3) in the list.
    g = {(s, d, op): 0.002 for d in range(1, 4) for s in range(d) for op in genotypes.NB201_CANDIDATES}
    r = {(s, d, op): 5.0 for s, d, op in g}
    r.update({(s, d, stronger): 9.0 for d in range(1, 4) for s in range(d)})
    assert derive.derive_from_table(relevant_rows(g, r), threshold=0, space=NB) == arch([stronger] * 6)


def test_select_relevance_ranks_an_edges_ops_by_their_own_evidence():
    g = {(s, d, op): 0.5 for d in range(1, 4) for s in range(d) for op in ('skip_connect', 'nor_conv_3x3')}
    g.update({(s, d, 'skip_connect'): 0.9 for d in range(1, 4) for s in range(d)})
    r = {(s, d, 'nor_conv_3x3'): 20.0 for d in range(1, 4) for s in range(d)}
    r.update({(s, d, 'skip_connect'): 10.0 for d in range(1, 4) for s in range(d)})
    rows_ = relevant_rows(g, r)
    assert derive.derive_from_table(rows_, threshold=0, space=NB) == arch(['skip_connect'] * 6)
    assert derive.derive_from_table(rows_, threshold=0, space=NB, select='relevance') == arch(['nor_conv_3x3'] * 6)
    doc = dict(space='nb201', threshold=0.0, iteration=1, groups=rows_)
    assert derive.derive(doc) == arch(['skip_connect'] * 6)                   # a table without 'select'
    assert derive.derive(dict(doc, select='relevance')) == arch(['nor_conv_3x3'] * 6)
    assert derive.derive(dict(doc, select='relevance'), select='gamma') == arch(['skip_connect'] * 6)


def supernet(**kw):
    torch.manual_seed(0)
    net = NB201Search(C=4, N=1, **kw)
    return net


def test_the_auxiliary_identity_adds_a_normalised_input_on_every_stride_1_edge_outside_the_switches():
    net = supernet().train()
    x = torch.randn(4, 3, 8, 8)
    base = net(x)
    net.set_aux_skip(0.5)
    assert not torch.allclose(net(x), base)
    cell = net.cells[0]
    edge = cell.edges[0]                                  # 0 -> 1, all ops live
    h = torch.randn(4, 4, 8, 8)
    with torch.no_grad():
        for sw in [edge.switch] + list(edge.op_switches):
            sw.s.fill_(0.)                                 # every switch at 0: only the identity is left
        normalised = (h - h.mean((0, 2, 3), keepdim=True)) / (h.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
        assert torch.allclose(edge(h, list(range(len(edge.ops)))), 0.5 * normalised, atol=1e-5)
        net.set_aux_skip(0.)
        assert torch.equal(edge(h, list(range(len(edge.ops)))), torch.zeros_like(h))


def test_op_dropout_computes_only_the_kept_ops_and_scales_them_back():
    net = supernet()
    model_search.set_gate(net, bayesnas.OpDropout(0.5))
    calls = []
    for cell in net.cells:
        for edge in cell.edges:
            for k, op in enumerate(edge.ops):
                op.register_forward_hook(lambda m, i, o, key=(id(edge), k): calls.append(key))
    x = torch.randn(4, 3, 8, 8)
    per_edge = 6 * len(net.cells) * len(genotypes.NB201_CANDIDATES)
    net.eval()
    net(x)
    assert len(calls) == per_edge                        # evaluation: every op
    calls.clear()
    net.train()
    torch.manual_seed(1)
    counts = []
    for _ in range(20):
        net(x)
        counts.append(len(calls))
        calls.clear()
    assert 6 * len(net.cells) <= min(counts) and max(counts) < per_edge     # at least one op per edge
    assert abs(sum(counts) / len(counts) / per_edge - 0.5) < 0.15
    sampled = bayesnas.OpDropout(0.5)(net.cells[0], [[0, 1, 2, 3]])
    assert sampled[0][1] == 4 / len(sampled[0][0])
    assert bayesnas.OpDropout(0.)(net.cells[0], [[0, 1, 2, 3]]) == [([0, 1, 2, 3], 1.)]


def test_the_auxiliary_identity_decays_over_the_switch_phase_and_is_gone_at_the_update(small_cifar, tmp_path,
                                                                                      monkeypatch):
    seen, step = [], search.Search.train_step

    def record(self, x, y, phase):
        seen.append((phase, self.model.cells[0].edges[0].aux_skip))
        step(self, x, y, phase)

    curvatures = []
    curvature = bayesnas.BayesNAS.curvature

    def at_update(self, batches):
        curvatures.append(self.model.cells[0].edges[0].aux_skip)
        return curvature(self, batches)

    monkeypatch.setattr(search.Search, 'train_step', record)
    monkeypatch.setattr(bayesnas.BayesNAS, 'curvature', at_update)
    search.main(['--data', str(small_cifar(24, 20)), '--save', str(tmp_path / 'run'), '--aux_skip', '0.8',
                 '--switch_steps', '4'] + TINY)
    warm = [b for phase, b in seen if phase == 'warmup']
    assert warm and all(b == 0.8 for b in warm)
    assert [b for phase, b in seen if phase == 'search'] == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert curvatures == [0.0]


@pytest.mark.parametrize('argv, message', [
    (['--aux_skip', '-1'], '--aux_skip must be >= 0'),
    (['--op_dropout', '1'], r'--op_dropout must be in \[0, 1\)'),
    (['--select', 'norm'], "invalid choice: 'norm'"),
])
def test_bad_collapse_flags_are_user_errors(small_cifar, tmp_path, argv, message):
    with pytest.raises(utils.UserError, match=message):
        search.main(['--data', str(small_cifar(24, 20)), '--save', str(tmp_path / 'run')] + TINY + argv)


def test_a_search_records_its_selection_rule_and_derives_by_it(small_cifar, tmp_path):
    data = small_cifar(24, 20)
    result = search.main(['--data', str(data), '--save', str(tmp_path / 'run'), '--select', 'relevance',
                          '--op_dropout', '0.3'] + TINY)
    doc = json.loads((tmp_path / 'run' / 'gamma.json').read_text())
    assert doc['select'] == 'relevance'
    assert derive.derive(doc) == result['genotype'] == derive.derive(doc, select='relevance')


def test_removal_is_the_measured_loss_of_removing_a_group_and_the_derivation_can_rank_by_it(small_cifar,
                                                                                             tmp_path):
    data = small_cifar(24, 20)
    measured = {}
    original = bayesnas.BayesNAS.removal_loss

    def keep(self, rows, batches):
        batches = list(batches)
        out = original(self, rows, batches)
        # Recompute one op group's number by hand: its switches at 0 in all 3 tied cells.
        row = next(r for r in rows if r['op'] == 'nor_conv_3x3' and not r['pruned'])
        self.model.eval()
        with torch.no_grad():
            def loss():
                return (sum(torch.nn.functional.cross_entropy(self.model(x), y, reduction='sum').item()
                            for x, y in batches) / sum(len(y) for _, y in batches))
            base = loss()
            modules = dict(self.model.named_modules())
            values = [modules[name].s.view(-1)[i].item() for name, i in row['members']]
            assert len(values) == 3
            for name, i in row['members']:
                modules[name].s.view(-1)[i] = 0.
            measured['by hand'] = 2 * (loss() - base) / row['lam']
            for (name, i), v in zip(row['members'], values):
                modules[name].s.view(-1)[i] = v
            measured['again'] = 2 * (loss() - base) / row['lam']
        self.model.train()
        measured['search'] = out[row['key']]
        return out

    bayesnas.BayesNAS.removal_loss = keep
    try:
        result = search.main(['--data', str(data), '--save', str(tmp_path / 'run'), '--select', 'removal',
                              '--lambda', '0.0001'] + TINY)
    finally:
        bayesnas.BayesNAS.removal_loss = original
    assert measured['search'] == pytest.approx(measured['by hand'], rel=1e-6, abs=1e-9)
    assert measured['again'] == pytest.approx(0., abs=1e-9)          # the switches were put back
    assert measured['search'] != 0.
    doc = json.loads((tmp_path / 'run' / 'gamma.json').read_text())
    assert doc['select'] == 'removal' and all('removal' in r for r in doc['groups'])
    assert derive.derive(doc) == result['genotype'] == derive.derive(doc, select='removal')
    # The rule ranks by the measured number: reverse it and another op wins on some edge.
    flipped = dict(doc, groups=[dict(r, removal=-r['removal']) for r in doc['groups']])
    live_edges = [r for r in doc['groups'] if r['op'] is not None and not r['pruned']]
    if len({(r['src'], r['dst']) for r in live_edges}) < len(live_edges):        # some edge has a choice
        assert derive.derive(flipped) != derive.derive(doc)
    plain = dict(doc, groups=[{k: v for k, v in r.items() if k != 'removal'} for r in doc['groups']])
    with pytest.raises(utils.UserError, match='records no removal'):
        derive.derive(plain, select='removal')


def test_paper_restores_the_published_choices_and_flags_beside_it_win():
    def defaults(*argv):
        return vars(search.space_defaults(search.build_parser().parse_args(list(argv))))

    keys = ('update', 'hessian', 'aux_skip', 'op_dropout', 'select')
    assert {k: defaults('--space', 'nb201')[k] for k in keys} == dict(
        update='evidence', hessian='fisher', aux_skip=0.0, op_dropout=0.0, select='gamma')
    assert {k: defaults()[k] for k in keys} == dict(
        update='evidence', hessian='fisher', aux_skip=0.0, op_dropout=0.0, select='gamma')
    for space in ('nb201', 'darts'):
        assert {k: defaults('--space', space, '--paper')[k] for k in keys} == bayesnas.PAPER == dict(
            update='reweight', hessian='recursive', aux_skip=0.0, op_dropout=0.0, select='gamma')
    assert defaults('--space', 'nb201', '--paper', '--select', 'relevance')['select'] == 'relevance'
