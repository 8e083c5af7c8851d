"""The search spaces as data: what search.py, derive.py and train.py need to know of each space.

    darts   DARTS's cells: two input nodes, four intermediate nodes concatenated into the output, seven
            candidate ops on each of the 14 edges; normal and reduction cells in a stack of cells.
    nb201   NAS-Bench-201's cell: one input node, three nodes, the last one the output, four candidate
            ops on each of the 6 edges; one cell, in three stages joined by residual blocks.
    proxyless  the tree cells of Path-Level EAS in every residual block of a PyramidNet, searched in
            the network that is retrained (no proxy): seven candidate ops on each of the 6 edges of
            each of the two half trees of a block; every block its own cells (proxyless.py).

All three are served by one cell implementation (model_search.Cell) in both uses, supernet and
retrained network. To add a space: its operations to operations.OPS, its genotype format to
genotypes.py, its macro networks (a model_search.SwitchNetwork and an evaluation network, both made
of Cells) to model_search.py, and a Space below: what search.py and derive.py need (candidates,
nodes, supernet, derivation, pictures) and what train.py needs (named and stored genotypes, the
network built from them).
"""
from typing import Callable, NamedTuple, Optional

import genotypes
import model_search
import proxyless


class Space(NamedTuple):
    name: str
    candidates: list                # the ops behind op switches on every edge, in switch order
    inputs: tuple                   # a cell's input nodes
    outputs: Optional[tuple]        # the nodes that form a cell's output; None: every live node
    cell_types: Optional[tuple]     # the cells of a tied supernet, one set of switch groups each;
                                    # None: the network names its cells (gamma.json's cell_type)
    tie: bool                       # default of search.py --tie
    one_op_per_edge: bool           # derivation keeps the strongest surviving op of an edge, or all
    may_be_empty: bool              # a cell may lose every op (its block still computes)
    layers: int                     # default --layers of the search
    layers_means: str               # what --layers counts
    batch_size: int                 # default --batch_size of the search
    lam: float                      # default --lambda of the search (docs/results.md: how it was chosen)
    switch_lr: float                # default --switch_lr of the search (docs/results.md: how it was chosen)
    supernet: Callable              # net (dict: C, layers, alpha, classes, tie) -> model_search.SwitchNetwork
    genotype: Callable              # ({cell_type: (kept (op, from, to), concat)}, net) -> the space's genotype
    pictures: tuple                 # the cell pictures derive.py draws: (file, cell_type, title)
    cell: Callable                  # (genotype, cell_type) -> (edges (op, from, to), output nodes) or None
    describe: Callable              # genotype -> the line that names it
    text: Callable                  # genotype -> the text of its genotype.json
    # What train.py retrains (each raises ValueError in one line):
    named: Callable                 # --arch NAME -> genotype
    read: Callable                  # --genotype PATH -> genotype
    stored: Callable                # (genotype, args, num_classes) -> the checkpoint's fields for the network
    network: Callable               # those fields (with dataset, num_classes) -> (genotype, nn.Module)


def _darts_genotype(cells, net):
    return genotypes.Genotype(normal=cells['normal'][0], normal_concat=cells['normal'][1],
                              reduce=cells['reduce'][0], reduce_concat=cells['reduce'][1])


def _nb201_genotype(cells, net):
    return genotypes.nb201_string(cells['normal'][0])


def _proxyless_genotype(cells, net):
    """The network config of the derived trees: pruned template edges become ZeroLayers."""
    N = net['layers']

    def half(block, k):
        kept = {(s, d): op for op, s, d in cells[proxyless.cell_name(block, k, N, net['tie'])][0]}
        return [(kept.get((s, d), 'none'), s, d) for s, d in proxyless.TEMPLATE]

    trees = [[half(block, k) for k in range(2)] for block in range(3 * N)]
    return proxyless.network_config(net['C'], net['alpha'], N, trees, net['classes'])


def _darts_cell(genotype, cell_type):
    return genotypes.cell_edges(getattr(genotype, cell_type)), list(getattr(genotype, f'{cell_type}_concat'))


def _proxyless_cell(config, cell_type):
    """'b5h1' is half 1 of tree block 5, 's2h0' half 0 of the first block of stage 2 (None when the
    network has no such block)."""
    blocks = [u for kind, u in proxyless.parse(config) if kind == 'tree']
    index, half = int(cell_type[1:cell_type.index('h')]), int(cell_type[-1])
    if cell_type[0] == 's':     # a stage starts at the first block and where the shortcut pools
        starts = [i for i, b in enumerate(blocks) if i == 0 or b['shortcut']['name'] == 'PoolingLayer']
        index = starts[index - 1] + 1 if index <= len(starts) else None
    if index is None or not 1 <= index <= len(blocks):
        return None
    edges, leaves = blocks[index - 1]['halves'][half]
    return [e for e in edges if e[0] != 'none'], leaves


def _proxyless_describe(config):
    trees = [u for kind, u in proxyless.parse(config) if kind == 'tree']
    ops = sum(op != 'none' for b in trees for edges, _ in b['halves'] for op, _, _ in edges)
    return f'PyramidTreeNet: {len(trees)} tree blocks, {ops} operations on their {12 * len(trees)} edges'


# ----------------------------------------------------------------------------------------------------
# Retraining: named and stored genotypes, and the networks built from them
# ----------------------------------------------------------------------------------------------------

def _read_cell(space):
    def read(path):
        found, genotype = genotypes.load_file(path)
        if found != space:
            raise ValueError(f'{path} holds a cell of the {found} space; pass --space {found}')
        return genotype
    return read


def _sized(args):
    return dict(init_channels=args.init_channels, layers=args.layers, auxiliary=args.auxiliary)


def _darts_network(config):
    genotype = genotypes.Genotype(**config['genotype'])
    cls = model_search.NetworkImageNet if config['dataset'] == 'imagenet' else model_search.NetworkCIFAR
    return genotype, cls(config['init_channels'], config['num_classes'], config['layers'], config['auxiliary'],
                         genotype)


def _nb201_named(arch):
    genotypes.nb201_edges(arch)
    return arch


def _nb201_network(config):
    return config['arch'], model_search.NB201Network(config['init_channels'], config['layers'],
                                                     config['num_classes'], config['arch'])


PROXYLESS_NAMES = {'ProxylessNAS_G': proxyless.proxylessnas_g}


def _proxyless_named(name):
    if name not in PROXYLESS_NAMES:
        raise ValueError(f'unknown proxyless network {name!r}; known: {", ".join(PROXYLESS_NAMES)}')
    return PROXYLESS_NAMES[name]()


def _proxyless_stored(config, args, num_classes):
    """The network config itself: it fixes widths and depth, and its classifier must fit the data."""
    classes = config['classifier']['out_features']
    if classes != num_classes:
        raise ValueError(f'the network config classifies into {classes} classes, the data set has {num_classes}')
    return dict(network=config)


SPACES = {
    'darts': Space(
        name='darts', candidates=genotypes.CANDIDATES, inputs=(0, 1), outputs=None,
        cell_types=('normal', 'reduce'), tie=True, one_op_per_edge=False, may_be_empty=False,
        layers=8, layers_means='cells', batch_size=64, lam=0.01, switch_lr=0.002,
        supernet=lambda net: model_search.Network(net['C'], net['classes'], net['layers'], tie=net['tie']),
        genotype=_darts_genotype,
        pictures=(('cell_normal.png', 'normal', 'normal cell'), ('cell_reduce.png', 'reduce', 'reduce cell')),
        cell=_darts_cell, describe=genotypes.to_literal, text=genotypes.json_text,
        named=genotypes.from_name, read=_read_cell('darts'),
        stored=lambda g, args, classes: dict(_sized(args), genotype=genotypes.canonical(g)._asdict()),
        network=_darts_network),
    'nb201': Space(
        name='nb201', candidates=genotypes.NB201_CANDIDATES, inputs=(0,), outputs=(genotypes.NB201_NODES - 1,),
        cell_types=('normal',), tie=True, one_op_per_edge=True, may_be_empty=False,
        layers=5, layers_means='cells per stage', batch_size=64, lam=0.005, switch_lr=0.01,
        supernet=lambda net: model_search.NB201Search(net['C'], net['layers'], net['classes'], tie=net['tie']),
        genotype=_nb201_genotype,
        pictures=(('cell.png', 'normal', 'NAS-Bench-201 cell'),),
        cell=lambda arch, cell_type: (genotypes.nb201_cell(arch), list(model_search.NB201_OUTPUT)),
        describe=lambda arch: arch, text=genotypes.json_text,
        named=_nb201_named, read=_read_cell('nb201'), stored=lambda g, args, classes: dict(_sized(args), arch=g),
        network=_nb201_network),
    # The paper's proxyless settings: batch 32, lr 0.1. lambda: nb201's, not calibrated here (docs/results.md).
    'proxyless': Space(
        name='proxyless', candidates=proxyless.CANDIDATES, inputs=(0,), outputs=tuple(proxyless.LEAVES),
        cell_types=None, tie=False, one_op_per_edge=True, may_be_empty=True,
        layers=18, layers_means='blocks per stage', batch_size=32, lam=0.005, switch_lr=0.01,
        supernet=lambda net: model_search.ProxylessSearch(net['C'], net['layers'], net['classes'], net['tie'],
                                                          net['alpha']),
        genotype=_proxyless_genotype,
        pictures=tuple((f'cell_s{s}h{k}.png', f's{s}h{k}', f'stage {s}, first block, half {k}')
                       for s in (1, 2, 3) for k in (0, 1)),
        cell=_proxyless_cell, describe=_proxyless_describe, text=proxyless.text,
        named=_proxyless_named, read=proxyless.load, stored=_proxyless_stored,
        network=lambda config: (config['network'], model_search.ProxylessNetwork(config['network']))),
}
NAMES = tuple(SPACES)


def get(name):
    """The Space called name; ValueError naming the known ones."""
    if name not in SPACES:
        raise ValueError(f'unknown search space {name!r}; known: {", ".join(NAMES)}')
    return SPACES[name]


def space_of(genotype):
    """The space a genotype belongs to, from its type."""
    if isinstance(genotype, str):
        return SPACES['nb201']
    return SPACES['proxyless'] if isinstance(genotype, dict) else SPACES['darts']


def cell_of(space, genotype, cell_type):
    """(edges as (op, from, to), concat) of one cell of a genotype of the space (None: no such cell)."""
    return space.cell(genotype, cell_type)


def describe(genotype):
    """The line that names a genotype: a Python literal for genotypes.py, the benchmark's string, or
    the size of a proxyless network's trees."""
    return space_of(genotype).describe(genotype)
