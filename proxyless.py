"""The proxyless space's network format: PyramidTreeNet JSON configs, as ProxylessNAS publishes its
CIFAR-10 networks, read, checked and written.

A PyramidTreeNet applies its blocks in order, flattens, and applies its classifier. Its residual tree
blocks are `shortcut(x), zero-padded in channels, + final_bn(out_bottle(cell(in_bottle(x))))`, and
every cell has the shape of the tree cells of Path-Level EAS (the proxyless task of BayesNAS):

    root   one edge (a 3x3 group conv with channel shuffle, doubling the width), then
    split  the channels in two halves; each half h becomes h + BN(tree(h)), and the halves are added;
    tree   copy/add tree nodes whose edges are the searchable ones. In this space's template every
           half has six edges: 0->1 and 0->2 out of the half's input (node 0), 1->3 and 1->4 out of
           the node after the first, 2->5 and 2->6 out of the node after the second; the tree's
           output is the sum of its leaves, nodes 3 to 6.

A half's tree is a list of (op, from, to) edges: nodes are numbered breadth first, an edge's target is
the node its child tree node reads, a node without out-edges is a leaf, and the tree's output is the
sum of the leaves. A searchable edge holds one of CANDIDATES or 'none' (a ZeroLayer: the edge computes
nothing, and the ops after it read zeros). network_config writes such a network; parse reads one back
(any config of this shape, the authors' included) and checks it, raising ValueError with one line
that says where the file is wrong.

Imports only genotypes.py of this project: copy the two with operations.py's layers.
"""
import json

import genotypes

# ----------------------------------------------------------------------------------------------------
# Candidates and their layer configs
# ----------------------------------------------------------------------------------------------------

# The seven operations on the searchable edges of the published network, in switch order.
CANDIDATES = ['dw_conv_3x3', 'dw_conv_5x5', 'dw_conv_7x7', 'dil_dw_conv_3x3', 'max_pool_3x3',
              'avg_pool_3x3', 'skip_connect']
SHORT = {'dw3': 'dw_conv_3x3', 'dw5': 'dw_conv_5x5', 'dw7': 'dw_conv_7x7', 'dil3': 'dil_dw_conv_3x3',
         'max': 'max_pool_3x3', 'avg': 'avg_pool_3x3', 'id': 'skip_connect', '0': 'none'}
TEMPLATE = [(0, 1), (0, 2), (1, 3), (1, 4), (2, 5), (2, 6)]     # a half's searchable edges
LEAVES = [3, 4, 5, 6]
ORDERS = ('bn_act_weight', 'weight_bn_act', 'act_weight_bn')
COMMON = dict(use_bn=False, act_func=None, dropout_rate=0, ops_order='bn_act_weight')


def conv(kind, C_in, C_out, kernel_size, stride=1, dilation=1, groups=1, shuffle=False, bn=True, act='relu'):
    """A ConvLayer or DepthConvLayer config, with the fields in the order the format writes them."""
    return dict(name=kind, kernel_size=kernel_size, stride=stride, dilation=dilation, groups=groups,
                bias=False, has_shuffle=shuffle, in_channels=C_in, out_channels=C_out,
                **dict(COMMON, use_bn=bn, act_func=act))


def pool(pool_type, C, kernel_size, stride, bn=False, act=None):
    return dict(name='PoolingLayer', pool_type=pool_type, kernel_size=kernel_size, stride=stride,
                in_channels=C, out_channels=C, **dict(COMMON, use_bn=bn, act_func=act))


def identity(C, bn=False):
    return dict(name='IdentityLayer', in_channels=C, out_channels=C, **dict(COMMON, use_bn=bn))


def candidate_layer(op, C):
    """The layer config of a candidate op (or 'none') on a C-channel edge."""
    if op == 'none':
        return dict(name='ZeroLayer', stride=1)
    if op == 'skip_connect':
        return identity(C)
    if op.endswith('pool_3x3'):
        return pool(op[:3], C, 3, 1)
    k = int(op[-1])
    return conv('DepthConvLayer', C, C, k, dilation=2 if op.startswith('dil') else 1)


def candidate_of(layer, C):
    """The op name a searchable edge's layer config is, or None when it is none of them."""
    return next((op for op in CANDIDATES + ['none'] if candidate_layer(op, C) == layer), None)


# ----------------------------------------------------------------------------------------------------
# Writing: the backbone and the network of given trees
# ----------------------------------------------------------------------------------------------------

def widths(C, alpha, N, groups=2):
    """PyramidNet's cell widths, growing linearly from C by alpha over 3N blocks, rounded down to a
    multiple of the root conv's groups (the widths of the published network for C 16, alpha 84)."""
    return [groups * (round(C + alpha * (i + 1) / (3 * N)) // groups) for i in range(3 * N)]


def tree_node(edges, C, node=0):
    """The TreeNode config of the C-channel tree below `node`; edges: (op, from, to), in order."""
    out = [e for e in edges if e[1] == node]
    if not out:
        return None
    many = len(out) > 1
    return dict(name='TreeNode', in_channels=C, out_channels=C, split_type='copy' if many else None,
                merge_type='add' if many else None, has_branch_bn=False, path_drop_rate=0,
                edges=[candidate_layer(op, C) for op, _, _ in out],
                child_nodes=[tree_node(edges, C, dst) for _, _, dst in out])


def half_tree(edges, C):
    """The TreeNode config of one half: edges as (op, from, to), with 'none' for a ZeroLayer."""
    return tree_node(sorted(edges, key=lambda e: (e[1], e[2])), C)


def tree_block(C_in, C, stride, halves):
    """A ResidualTreeBlock config: cell width C, output 4C; halves: two (op, from, to) lists."""
    split = dict(name='TreeNode', in_channels=2 * C, out_channels=C, split_type='split', merge_type='add',
                 has_branch_bn=True, path_drop_rate=0, edges=[identity(C), identity(C)],
                 child_nodes=[half_tree(edges, C) for edges in halves])
    cell = dict(name='TreeNode', in_channels=C, out_channels=C, split_type=None, merge_type=None,
                has_branch_bn=False, path_drop_rate=0,
                edges=[conv('ConvLayer', C, 2 * C, 3, stride=stride, groups=2, shuffle=True)], child_nodes=[split])
    shortcut = identity(C_in) if stride == 1 else pool('avg', C_in, 2, 2)
    return dict(name='ResidualTreeBlock', cell_drop_rate=0.0, final_bn=True, shortcut=shortcut,
                in_bottle=conv('ConvLayer', C_in, C, 1, act=None), out_bottle=conv('ConvLayer', C, 4 * C, 1),
                cell=cell)


def network_config(C, alpha, N, cells, num_classes=10):
    """The PyramidTreeNet config of 3N tree blocks (N per stage, widths from C by alpha); cells: one
    pair of half trees per block, each a list of (op, from, to)."""
    if len(cells) != 3 * N:
        raise ValueError(f'{len(cells)} cells for {3 * N} blocks')
    ws = widths(C, alpha, N)
    stem = [conv('ConvLayer', 3, C, 3, bn=False, act=None), identity(C, bn=True)]
    blocks = [dict(name='TransitionBlock', layers=stem)]
    C_prev = C
    for i, (w, halves) in enumerate(zip(ws, cells)):
        blocks.append(tree_block(C_prev, w, 2 if i in (N, 2 * N) else 1, halves))
        C_prev = 4 * w
    blocks.append(dict(name='TransitionBlock', layers=[pool('avg', C_prev, 8, 8, bn=True, act='relu')]))
    classifier = dict(name='LinearLayer', in_features=C_prev, out_features=num_classes, bias=True, **COMMON)
    return dict(name='PyramidTreeNet', blocks=blocks, classifier=classifier)


def cell_name(block, half, N, tied):
    """The name of a half's cell in a search: 'b5h1' (block 5, half 1, counted from 1), or 's2h1' for
    the half shared by the N blocks of stage 2 when tied."""
    return f's{block // N + 1}h{half}' if tied else f'b{block + 1}h{half}'


def template(op='skip_connect'):
    """A half with every template edge holding `op`."""
    return [(op, s, d) for s, d in TEMPLATE]


def from_short(text):
    """A half from its short form 'a b, c d, e f': the ops of edges 0->1 0->2, 1->3 1->4, 2->5 2->6
    (SHORT's abbreviations)."""
    names = text.replace(',', ' ').split()
    if len(names) != len(TEMPLATE) or any(n not in SHORT for n in names):
        raise ValueError(f'{text!r} is not six of {", ".join(SHORT)}')
    return [(SHORT[n], s, d) for n, (s, d) in zip(names, TEMPLATE)]


# ProxylessNAS-G (Cai, Zhu, Han 2019), the CIFAR-10 network its authors published in this format:
# C 16, alpha 84, 18 blocks per stage; one line per block, its two halves in from_short's form.
PROXYLESSNAS_G = (
    ('dw7 max, dil3 id, dw7 max', 'dw5 dil3, dw5 dw5, dw7 dw7'),
    ('avg id, avg avg, dw3 id', 'max dw7, dil3 id, dil3 dil3'),
    ('dw7 id, dw3 avg, dw5 avg', 'dw3 dil3, dw3 avg, dil3 dw5'),
    ('avg dw5, dw5 dil3, dw3 dil3', 'dil3 dw7, dw7 dw3, id dw7'),
    ('avg id, dw5 dil3, dil3 dw5', 'dw7 max, dw7 avg, id max'),
    ('dw7 max, dw7 max, dw3 dw5', 'avg dw7, dil3 dw3, id id'),
    ('dil3 max, id max, dw7 dw7', 'dw7 dw7, dw5 dw3, id id'),
    ('dil3 dil3, dw5 dw7, dw5 dw7', 'max dw5, avg avg, dw3 dw7'),
    ('dw7 dil3, dw5 max, id id', 'max max, dw3 avg, avg dil3'),
    ('dw5 id, dw3 id, dw3 dw7', 'dw3 id, dw5 dw7, dw5 dw7'),
    ('dw7 avg, dw7 dw5, dw3 dw5', 'dil3 id, avg dil3, dil3 dw3'),
    ('dw5 dil3, avg dw5, dw3 dw3', 'avg dw5, dw7 dw7, dil3 dw3'),
    ('max max, dw7 dw3, dw7 dil3', 'dw3 max, avg dw5, dw7 id'),
    ('dw3 dw7, max dil3, dw7 dil3', 'dw5 dil3, id dw3, dw7 dw3'),
    ('dil3 avg, max dw3, dil3 dil3', 'avg id, dw5 id, dw5 id'),
    ('dw5 id, dil3 dw5, avg avg', 'dil3 dw5, dw5 dw5, dw7 dw3'),
    ('dw7 dw5, dw5 dw5, dil3 dw3', 'id dil3, max dw7, dw3 dw7'),
    ('max dil3, id id, dw3 id', 'dw7 max, dw5 dw7, id dil3'),
    ('dil3 max, dw5 avg, avg dw7', 'dw5 avg, dw7 dw3, avg max'),
    ('dw7 dil3, id dw7, id dw7', 'dil3 max, dw3 dw7, max dw5'),
    ('max dil3, avg dw3, id dil3', 'max max, max dw5, id avg'),
    ('dil3 avg, dw7 dw3, avg dw3', 'dw3 avg, dw7 id, dil3 dil3'),
    ('dil3 max, max avg, dw7 id', 'dw7 dil3, dil3 id, avg max'),
    ('dw7 dw5, max dw7, max id', 'max id, avg dil3, max dw7'),
    ('id dw5, avg dw5, max dw5', 'dil3 dil3, dw7 avg, dil3 max'),
    ('dw3 id, avg dil3, dil3 dil3', 'dil3 dw3, avg avg, avg dw3'),
    ('dil3 dw7, max dw7, id max', 'max max, dw5 dw5, dw5 dil3'),
    ('dw3 dw7, dw7 dw3, avg id', 'max dw7, dw3 dw7, max max'),
    ('dw7 dw5, dw7 dw7, avg dw3', 'dw3 dw3, id dil3, avg dw3'),
    ('dw5 id, avg id, avg dw5', 'avg dw7, dw3 avg, avg max'),
    ('id dw3, avg dil3, id dw7', 'id avg, dw7 max, id dil3'),
    ('dw7 max, dw5 id, dw7 dil3', 'max dw7, dil3 max, dw7 dw7'),
    ('dw3 dw7, max dw3, id dw3', 'dw5 dw3, id dw3, dw5 id'),
    ('dil3 dw7, dil3 dw3, dil3 dw7', 'dw3 id, dw3 dil3, max id'),
    ('max id, id dw5, dw5 avg', 'dw3 dw7, avg id, avg dil3'),
    ('dw7 max, dw7 dw5, dil3 avg', 'dw7 dw3, dw7 dw5, dw5 dw5'),
    ('avg avg, avg avg, dil3 avg', 'dw7 id, dw5 id, id avg'),
    ('max dw7, id avg, dw5 id', 'id id, avg id, dw7 id'),
    ('dil3 dw3, dw7 max, id dw5', 'avg id, dw3 id, max avg'),
    ('dw7 dw7, avg dw5, avg dw3', 'max id, avg dw3, max max'),
    ('id id, avg dw7, id dw7', 'id max, avg dw5, avg dw7'),
    ('dil3 id, dw5 id, max dw5', 'dw7 dw5, dil3 dw7, id dil3'),
    ('max max, id avg, avg max', 'dil3 avg, id dw5, dw3 id'),
    ('dw7 dw7, dw5 dw7, dw7 avg', 'dil3 dw7, dw3 max, dw7 avg'),
    ('dil3 avg, dil3 max, dil3 dw3', 'dw7 dil3, id dil3, max dw5'),
    ('avg dil3, avg max, dw3 max', 'dil3 id, dw7 dil3, avg id'),
    ('max max, avg dw7, dw3 dw3', 'dw5 dil3, avg id, id dw3'),
    ('dw5 dil3, dw7 dil3, id max', 'max dw7, dw3 dw5, max id'),
    ('dw7 dw7, dw3 max, dil3 avg', 'max dw5, max max, dw5 max'),
    ('max dw5, id avg, dil3 dw3', 'dw5 dw3, dw7 dw3, dw7 dw7'),
    ('id dw3, avg dw5, dw7 dw7', 'id dw7, dw7 dw7, dw3 avg'),
    ('dw5 max, dw5 dw3, avg id', 'dw5 dw5, avg max, dw5 id'),
    ('dw3 max, dil3 dw3, max avg', 'id dw7, max dil3, dw3 dw3'),
    ('dw7 dw7, dw3 max, dw5 id', 'dw5 max, max dw3, dw3 dw7'),
)


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------

class FormatError(ValueError):
    pass


def _need(cond, where, what):
    if not cond:
        raise FormatError(f'{where}: {what}')


def _int(cfg, key, where, low=1):
    v = cfg.get(key)
    _need(isinstance(v, int) and not isinstance(v, bool) and v >= low, where, f'{key} {v!r} is not an integer >= {low}')
    return v


LAYER_FIELDS = {
    'ConvLayer': ('kernel_size', 'stride', 'dilation', 'groups', 'bias', 'has_shuffle', 'in_channels', 'out_channels'),
    'DepthConvLayer': ('kernel_size', 'stride', 'dilation', 'groups', 'bias', 'has_shuffle', 'in_channels',
                       'out_channels'),
    'PoolingLayer': ('pool_type', 'kernel_size', 'stride', 'in_channels', 'out_channels'),
    'IdentityLayer': ('in_channels', 'out_channels'),
    'LinearLayer': ('in_features', 'out_features', 'bias'),
}


def check_layer(cfg, where, C_in=None):
    """Check one layer config; returns its output channels (None for a ZeroLayer)."""
    _need(isinstance(cfg, dict), where, f'a layer must be a JSON object, got {type(cfg).__name__}')
    name = cfg.get('name')
    if name == 'ZeroLayer':
        _need(set(cfg) == {'name', 'stride'}, where, 'a ZeroLayer has exactly the fields name and stride')
        _int(cfg, 'stride', where)
        return None
    known = ', '.join(list(LAYER_FIELDS) + ['ZeroLayer'])
    _need(name in LAYER_FIELDS, where, f'unknown layer name {name!r} (known: {known})')
    fields = ('name',) + LAYER_FIELDS[name] + tuple(COMMON)
    missing, extra = [f for f in fields if f not in cfg], [f for f in cfg if f not in fields]
    _need(not missing, where, f'{name} lacks {", ".join(missing)}')
    _need(not extra, where, f'{name} has unknown fields {", ".join(extra)}')
    _need(isinstance(cfg['use_bn'], bool), where, f'use_bn {cfg["use_bn"]!r} is not true or false')
    _need(cfg['act_func'] in (None, 'relu'), where, f'act_func {cfg["act_func"]!r} is not null or "relu"')
    rate = cfg['dropout_rate']
    _need(isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate < 1, where,
          f'dropout_rate {rate!r} is not in [0, 1)')
    _need(cfg['ops_order'] in ORDERS, where, f'ops_order {cfg["ops_order"]!r} is not one of {", ".join(ORDERS)}')
    c_in, c_out = ('in_features', 'out_features') if name == 'LinearLayer' else ('in_channels', 'out_channels')
    n_in, n_out = _int(cfg, c_in, where), _int(cfg, c_out, where)
    _need(C_in is None or n_in == C_in, where, f'{c_in} {n_in} but its input has {C_in} channels')
    for key in ('kernel_size', 'stride', 'dilation', 'groups'):
        if key in cfg:
            _int(cfg, key, where)
    for key in ('bias', 'has_shuffle'):
        if key in cfg:
            _need(isinstance(cfg[key], bool), where, f'{key} {cfg[key]!r} is not true or false')
    if name in ('ConvLayer', 'DepthConvLayer'):
        g = cfg['groups']
        _need(n_out % g == 0 and (name == 'DepthConvLayer' or n_in % g == 0), where,
              f'groups {g} does not divide its channels {n_in} -> {n_out}')
    if name in ('PoolingLayer', 'IdentityLayer'):
        _need(n_in == n_out, where, f'{name} cannot change channels ({n_in} -> {n_out})')
    if name == 'PoolingLayer':
        _need(cfg['pool_type'] in ('avg', 'max'), where, f'pool_type {cfg["pool_type"]!r} is not avg or max')
    return n_out


def _node_fields(node, where):
    _need(isinstance(node, dict) and node.get('name') == 'TreeNode', where, 'is not a TreeNode')
    fields = {'name', 'in_channels', 'out_channels', 'split_type', 'merge_type', 'has_branch_bn',
              'path_drop_rate', 'edges', 'child_nodes'}
    _need(set(node) == fields, where, f'a TreeNode has exactly the fields {", ".join(sorted(fields))}')
    _need(isinstance(node['edges'], list) and isinstance(node['child_nodes'], list)
          and len(node['edges']) == len(node['child_nodes']) and node['edges'], where,
          'edges and child_nodes must be lists of the same non-zero length')
    _need(node['path_drop_rate'] == 0, where, 'path_drop_rate must be 0 (train.py --drop_path_prob drops paths)')


def parse_half(node, C, where):
    """(edges as (op, from, to), leaves) of a half's tree of C channels; nodes numbered breadth first."""
    edges, queue, count = [], [(node, 0, where)], 1
    while queue:
        node, src, where = queue.pop(0)
        _node_fields(node, where)
        n = len(node['edges'])
        _need(node['in_channels'] == C and node['out_channels'] == C, where, f'channels must be {C}, as its half')
        _need(node['split_type'] == ('copy' if n > 1 else None) or n == 1 and node['split_type'] == 'copy', where,
              'a node of a half must copy its input to its edges (split_type "copy", or null for one edge)')
        _need(node['merge_type'] == ('add' if n > 1 else None) or n == 1 and node['merge_type'] == 'add', where,
              'a node of a half must add its branches (merge_type "add", or null for one edge)')
        _need(not node['has_branch_bn'], where, 'has_branch_bn is only supported on the split node')
        for k, (layer, child) in enumerate(zip(node['edges'], node['child_nodes'])):
            at = f'{where}.edges[{k}]'
            check_layer(layer, at, C)
            op = candidate_of(layer, C)
            shown = json.dumps({k: v for k, v in layer.items() if k not in ('name', 'in_channels', 'out_channels')})
            _need(op is not None, at, f'a {layer["name"]} ({shown}) is not one of the candidates '
                  f'{", ".join(CANDIDATES)} or a ZeroLayer')
            edges.append((op, src, count))
            if child is not None:
                queue.append((child, count, f'{where}.child_nodes[{k}]'))
            count += 1
    leaves = sorted({d for _, _, d in edges} - {s for _, s, _ in edges})
    return edges, leaves


def parse_block(block, C_in, where):
    """The parts of a ResidualTreeBlock, checked: dict(shortcut, in_bottle, root, split, halves,
    branch_bn, out_bottle, final_bn, channels)."""
    fields = {'name', 'cell_drop_rate', 'final_bn', 'shortcut', 'in_bottle', 'out_bottle', 'cell'}
    _need(set(block) == fields, where, f'a ResidualTreeBlock has exactly the fields {", ".join(sorted(fields))}')
    _need(block['cell_drop_rate'] == 0, where, 'cell_drop_rate must be 0 (train.py --drop_path_prob drops paths)')
    _need(isinstance(block['final_bn'], bool), where, 'final_bn is not true or false')
    C = check_layer(block['in_bottle'], f'{where}.in_bottle', C_in)
    root = block['cell']
    _node_fields(root, f'{where}.cell')
    _need(len(root['edges']) == 1 and root['in_channels'] == C, f'{where}.cell',
          f'the cell root must have one edge and {C} input channels (its in_bottle\'s)')
    C_root = check_layer(root['edges'][0], f'{where}.cell.edges[0]', C)
    split = root['child_nodes'][0]
    at = f'{where}.cell.child_nodes[0]'
    _node_fields(split, at)
    _need(split['split_type'] == 'split' and split['merge_type'] == 'add' and len(split['edges']) == 2, at,
          'the node after the cell root must split its channels between two edges and add them')
    halves = [C_root // 2 + C_root % 2, C_root // 2]
    _need(split['in_channels'] == C_root and split['out_channels'] == halves[0] == halves[1], at,
          f'the split node must read the root\'s {C_root} channels and give two equal halves')
    trees = []
    for k, (edge, child) in enumerate(zip(split['edges'], split['child_nodes'])):
        _need(edge == identity(halves[k]), f'{at}.edges[{k}]', 'the split node\'s edges must be plain IdentityLayers')
        _need(child is not None, f'{at}.child_nodes[{k}]', 'each half needs a tree')
        trees.append(parse_half(child, halves[k], f'{at}.child_nodes[{k}]'))
    _need(root['out_channels'] == halves[0], f'{where}.cell', f'out_channels must be {halves[0]}')
    C_out = check_layer(block['out_bottle'], f'{where}.out_bottle', halves[0])
    C_short = check_layer(block['shortcut'], f'{where}.shortcut', C_in)
    _need(block['shortcut']['name'] in ('IdentityLayer', 'PoolingLayer'), f'{where}.shortcut',
          'a shortcut is an IdentityLayer or a PoolingLayer')
    _need(C_short <= C_out, where, f'the shortcut\'s {C_short} channels exceed the block\'s {C_out}')
    return dict(shortcut=block['shortcut'], in_bottle=block['in_bottle'], root=root['edges'][0],
                halves=trees, width=halves[0], branch_bn=split['has_branch_bn'], out_bottle=block['out_bottle'],
                final_bn=block['final_bn'], channels=C_out)


def parse(config):
    """The network of a config, checked: a list of ('layers', [layer config, ...]) for a TransitionBlock
    and ('tree', parse_block(...)) for a ResidualTreeBlock, then ('classifier', layer config)."""
    _need(isinstance(config, dict) and config.get('name') == 'PyramidTreeNet', 'config',
          'not a PyramidTreeNet config (a JSON object with "name": "PyramidTreeNet")')
    _need(set(config) == {'name', 'blocks', 'classifier'}, 'config',
          'a PyramidTreeNet config has exactly the fields name, blocks, classifier')
    _need(isinstance(config['blocks'], list) and config['blocks'], 'config', 'blocks must be a non-empty list')
    units, C = [], 3
    for i, block in enumerate(config['blocks']):
        where = f'blocks[{i}]'
        _need(isinstance(block, dict), where, 'a block must be a JSON object')
        if block.get('name') == 'TransitionBlock':
            _need(set(block) == {'name', 'layers'} and isinstance(block['layers'], list), where,
                  'a TransitionBlock has exactly the fields name and layers (a list)')
            for k, layer in enumerate(block['layers']):
                _need(isinstance(layer, dict) and layer.get('name') != 'LinearLayer', f'{where}.layers[{k}]',
                      'a TransitionBlock holds convolution, pooling and identity layers')
                C = check_layer(layer, f'{where}.layers[{k}]', C)
                _need(C is not None, f'{where}.layers[{k}]', 'a ZeroLayer cannot be a transition layer')
            units.append(('layers', block['layers']))
        elif block.get('name') == 'ResidualTreeBlock':
            units.append(('tree', parse_block(block, C, where)))
            C = units[-1][1]['channels']
        else:
            _need(False, where, f'unknown block name {block.get("name")!r} (known: TransitionBlock, ResidualTreeBlock)')
    classifier = config['classifier']
    _need(isinstance(classifier, dict) and classifier.get('name') == 'LinearLayer', 'classifier',
          'must be a LinearLayer')
    check_layer(classifier, 'classifier', C)
    return units + [('classifier', classifier)]


def load(path):
    """The config in a JSON file, parsed; ValueError naming the file and the fault."""
    config = genotypes.read_json(path, 'network config')
    try:
        parse(config)
    except FormatError as e:
        raise ValueError(f'network config {path}: {e}') from None
    return config


def text(config):
    """The file text of a config (checked first)."""
    parse(config)
    return json.dumps(config, indent=1) + '\n'


def proxylessnas_g():
    """The config of ProxylessNAS-G."""
    return network_config(16, 84, 18, [[from_short(h) for h in block] for block in PROXYLESSNAS_G])
