"""The search spaces, one class each: what search.py, derive.py and train.py need to know of each space.

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
of Cells) to model_search.py, and a subclass of Space below: what search.py, derive.py and
stability.py need (candidates, nodes, supernet, derivation, pictures, edges) and what train.py needs
(its defaults and checks, named and stored genotypes, the network built from them). Scripts ask the
space for what differs between spaces.
"""
import genotypes
import model_search
import proxyless


class Space:
    """What every script needs to know of a search space; a subclass per space. Class attributes:

    name            --space NAME
    candidates      the ops behind op switches on every edge, in switch order
    inputs          a cell's input nodes
    outputs         the nodes that form a cell's output; None: every live node
    cell_types      the cells of a tied supernet, one set of switch groups each; None: the network
                    names its cells (gamma.json's cell_type)
    tie             default of search.py --tie
    one_op_per_edge the derivation keeps the strongest surviving op of an edge, or all of them
    may_be_empty    a cell may lose every op (its block still computes)
    layers, layers_means, batch_size   search.py's defaults of --layers (and what it counts), --batch_size
    lam, switch_lr  search.py's defaults of --lambda and --switch_lr (docs/results.md: how they were chosen)
    pictures        the cell pictures derive.py draws: (file, cell_type, title)
    train_defaults  train.py's defaults that differ from DARTS's recipe
    """
    name = None
    candidates = inputs = outputs = cell_types = None
    tie = one_op_per_edge = may_be_empty = False
    layers = batch_size = None
    layers_means = ''
    lam = switch_lr = None
    pictures = ()
    train_defaults = {}

    def __repr__(self):
        return f'<space {self.name}>'

    # -- the search ------------------------------------------------------------------------------------

    def supernet(self, net):
        """net (dict: C, layers, alpha, classes, tie) -> the model_search.SwitchNetwork."""
        raise NotImplementedError

    def genotype(self, cells, net):
        """({cell_type: (kept (op, from, to), concat)}, net) -> the space's genotype."""
        raise NotImplementedError

    def cell(self, genotype, cell_type):
        """(edges (op, from, to), output nodes) of one cell of a genotype, or None: no such cell."""
        raise NotImplementedError

    def edges(self, cell_type):
        """Every (from, to) edge of a cell of this type."""
        raise NotImplementedError

    def owns(self, genotype):
        """Whether a genotype (as genotypes.load_file returns it) is of this space."""
        raise NotImplementedError

    def describe(self, genotype):
        """The line that names a genotype."""
        raise NotImplementedError

    def text(self, genotype):
        """The text of its genotype.json."""
        return genotypes.json_text(genotype)

    # -- retraining (train.py); each raises ValueError in one line ---------------------------------------

    def named(self, arch):
        """--arch NAME -> genotype."""
        raise NotImplementedError

    def read(self, path):
        """--genotype PATH -> genotype."""
        found, genotype = genotypes.load_file(path)
        if found != self.name:
            raise ValueError(f'{path} holds a cell of the {found} space; pass --space {found}')
        return genotype

    def check_train(self, given, dataset):
        """The flags train.py was given (a dict) that this space cannot honour."""

    def train_rules(self, a):
        """(ok, message) for train.py's network-size flags."""
        return []

    def stored(self, genotype, args, num_classes):
        """The checkpoint's fields for the network train.py builds."""
        return dict(init_channels=args.init_channels, layers=args.layers, auxiliary=args.auxiliary)

    def network(self, config):
        """Those fields (with dataset, num_classes) -> (genotype, nn.Module)."""
        raise NotImplementedError

    def network_line(self, config, genotype):
        """(the log's 'network:' line, the network's shape) of a retraining."""
        return (self.describe(genotype), f'{config["layers"]} {self.layers_means}, '
                                         f'{config["init_channels"]} channels')

    def run_name(self, arch):
        """The short name of a run of --arch NAME (for the run directory)."""
        return arch


def _cifar10_only(name, dataset, why):
    if dataset != 'cifar10':
        raise ValueError(f'--space {name} trains on CIFAR-10 only ({why})')


class Darts(Space):
    """DARTS's cells: two input nodes, four intermediate nodes concatenated into the output, seven
    candidate ops on each of the 14 edges; normal and reduction cells in a stack of cells."""
    name, candidates, inputs, outputs = 'darts', genotypes.CANDIDATES, (0, 1), None
    cell_types, tie, one_op_per_edge, may_be_empty = ('normal', 'reduce'), True, False, False
    layers, layers_means, batch_size, lam, switch_lr = 8, 'cells', 64, 0.01, 0.002
    pictures = (('cell_normal.png', 'normal', 'normal cell'), ('cell_reduce.png', 'reduce', 'reduce cell'))

    def supernet(self, net):
        return model_search.Network(net['C'], net['classes'], net['layers'], tie=net['tie'])

    def genotype(self, cells, net):
        return genotypes.Genotype(normal=cells['normal'][0], normal_concat=cells['normal'][1],
                                  reduce=cells['reduce'][0], reduce_concat=cells['reduce'][1])

    def cell(self, genotype, cell_type):
        return genotypes.cell_edges(getattr(genotype, cell_type)), list(getattr(genotype, f'{cell_type}_concat'))

    def edges(self, cell_type):
        return [(s, d) for d in range(2, 6) for s in range(d)]

    def owns(self, genotype):
        return isinstance(genotype, genotypes.Genotype)

    def describe(self, genotype):
        return genotypes.to_literal(genotype)

    def named(self, arch):
        return genotypes.from_name(arch)

    def train_rules(self, a):
        return [(a.init_channels >= 2 and a.init_channels % 2 == 0,
                 f'--init_channels must be even and positive (factorized reductions split it in two '
                 f'halves), got {a.init_channels}'),
                (a.layers >= 3, f'--layers must be at least 3 (two of them are reduction cells), got {a.layers}')]

    def stored(self, genotype, args, num_classes):
        return dict(super().stored(genotype, args, num_classes), genotype=genotypes.canonical(genotype)._asdict())

    def network(self, config):
        genotype = genotypes.Genotype(**config['genotype'])
        cls = model_search.NetworkImageNet if config['dataset'] == 'imagenet' else model_search.NetworkCIFAR
        return genotype, cls(config['init_channels'], config['num_classes'], config['layers'],
                             config['auxiliary'], genotype)

    def network_line(self, config, genotype):
        return genotypes.to_literal(genotype, 'Retrained'), super().network_line(config, genotype)[1]


class NB201(Space):
    """NAS-Bench-201's cell: one input node, three nodes, the last one the output, four candidate ops
    on each of the 6 edges; one cell, in three stages joined by residual blocks."""
    name, candidates, inputs = 'nb201', genotypes.NB201_CANDIDATES, (0,)
    outputs = (genotypes.NB201_NODES - 1,)
    cell_types, tie, one_op_per_edge, may_be_empty = ('normal',), True, True, False
    layers, layers_means, batch_size, lam, switch_lr = 5, 'cells per stage', 64, 0.005, 0.01
    pictures = (('cell.png', 'normal', 'NAS-Bench-201 cell'),)
    # NAS-Bench-201's recipe, the one behind its table: CIFAR-10 only, 16 channels, 5 cells per stage.
    train_defaults = dict(arch=None, epochs=200, batch_size=256, learning_rate=0.1, lr_schedule='cosine',
                          nesterov=True, weight_decay=5e-4, init_channels=16, layers=5, auxiliary=False,
                          cutout=False, drop_path_prob=0.0, grad_clip=0.0)

    def supernet(self, net):
        return model_search.NB201Search(net['C'], net['layers'], net['classes'], tie=net['tie'])

    def genotype(self, cells, net):
        return genotypes.nb201_string(cells['normal'][0])

    def cell(self, arch, cell_type):
        return genotypes.nb201_cell(arch), list(model_search.NB201_OUTPUT)

    def edges(self, cell_type):
        return [(s, d) for d in range(1, genotypes.NB201_NODES) for s in range(d)]

    def owns(self, genotype):
        return isinstance(genotype, str)

    def describe(self, arch):
        return arch

    def named(self, arch):
        genotypes.nb201_edges(arch)
        return arch

    def check_train(self, given, dataset):
        _cifar10_only(self.name, dataset, "the benchmark's other data sets are not supported")
        if given.get('auxiliary'):
            raise ValueError('--auxiliary: the NAS-Bench-201 network has no auxiliary head')
        if 'arch' not in given and 'genotype' not in given:
            raise ValueError("--space nb201 needs --arch '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|' or "
                             "--genotype RUN/genotype.json")

    def train_rules(self, a):
        return [(a.init_channels >= 1, f'--init_channels must be positive, got {a.init_channels}'),
                (a.layers >= 1, f'--layers (cells per stage) must be at least 1, got {a.layers}')]

    def stored(self, arch, args, num_classes):
        return dict(super().stored(arch, args, num_classes), arch=arch)

    def network(self, config):
        return config['arch'], model_search.NB201Network(config['init_channels'], config['layers'],
                                                         config['num_classes'], config['arch'])

    def run_name(self, arch):
        return 'nb201'


class Proxyless(Space):
    """The tree cells of Path-Level EAS in every residual block of a PyramidNet, searched in the network
    that is retrained (no proxy): seven candidate ops on each of the 6 edges of each of the two half
    trees of a block; every block its own cells (proxyless.py). gamma.json names the cells: 'b5h1' is
    half 1 of tree block 5, 's2h0' half 0 of the first block of stage 2."""
    name, candidates, inputs, outputs = 'proxyless', proxyless.CANDIDATES, (0,), tuple(proxyless.LEAVES)
    cell_types, tie, one_op_per_edge, may_be_empty = None, False, True, True
    # The paper's proxyless settings: batch 32, lr 0.1. lambda: nb201's, not calibrated here (docs/results.md).
    layers, layers_means, batch_size, lam, switch_lr = 18, 'blocks per stage', 32, 0.005, 0.01
    pictures = tuple((f'cell_s{s}h{k}.png', f's{s}h{k}', f'stage {s}, first block, half {k}')
                     for s in (1, 2, 3) for k in (0, 1))
    # Path-Level EAS's recipe for its tree-cell PyramidNets (the network config fixes width and depth).
    train_defaults = dict(arch='ProxylessNAS_G', init_channels=None, layers=None, epochs=300, batch_size=64,
                          learning_rate=0.1, lr_schedule='cosine', nesterov=True, weight_decay=1e-4,
                          auxiliary=False, cutout=True, drop_path_prob=0.0, grad_clip=0.0)
    NAMED = {'ProxylessNAS_G': proxyless.proxylessnas_g}

    def supernet(self, net):
        return model_search.ProxylessSearch(net['C'], net['layers'], net['classes'], net['tie'], net['alpha'])

    def genotype(self, cells, net):
        """The network config of the derived trees: pruned template edges become ZeroLayers."""
        N = net['layers']

        def half(block, k):
            kept = {(s, d): op for op, s, d in cells[proxyless.cell_name(block, k, N, net['tie'])][0]}
            return [(kept.get((s, d), 'none'), s, d) for s, d in proxyless.TEMPLATE]

        trees = [[half(block, k) for k in range(2)] for block in range(3 * N)]
        return proxyless.network_config(net['C'], net['alpha'], N, trees, net['classes'])

    def cell(self, config, cell_type):
        blocks = [u for kind, u in proxyless.parse(config) if kind == 'tree']
        index, half = int(cell_type[1:cell_type.index('h')]), int(cell_type[-1])
        if cell_type[0] == 's':     # a stage starts at the first block and where the shortcut pools
            starts = [i for i, b in enumerate(blocks) if i == 0 or b['shortcut']['name'] == 'PoolingLayer']
            index = starts[index - 1] + 1 if index <= len(starts) else None
        if index is None or not 1 <= index <= len(blocks):
            return None
        edges, leaves = blocks[index - 1]['halves'][half]
        return [e for e in edges if e[0] != 'none'], leaves

    def edges(self, cell_type):
        return list(proxyless.TEMPLATE)

    def owns(self, genotype):
        return isinstance(genotype, dict)

    def describe(self, config):
        trees = [u for kind, u in proxyless.parse(config) if kind == 'tree']
        ops = sum(op != 'none' for b in trees for edges, _ in b['halves'] for op, _, _ in edges)
        return f'PyramidTreeNet: {len(trees)} tree blocks, {ops} operations on their {12 * len(trees)} edges'

    def text(self, config):
        return proxyless.text(config)

    def named(self, name):
        if name not in self.NAMED:
            raise ValueError(f'unknown proxyless network {name!r}; known: {", ".join(self.NAMED)}')
        return self.NAMED[name]()

    def read(self, path):
        return proxyless.load(path)

    def check_train(self, given, dataset):
        _cifar10_only(self.name, dataset, 'its networks are CIFAR-10 PyramidNets')
        for flag in ('init_channels', 'layers', 'auxiliary'):
            if flag in given:
                raise ValueError(f'--{flag} does not apply to --space proxyless: the network config fixes '
                                 f'widths and depth, and there is no auxiliary head')

    def stored(self, config, args, num_classes):
        """The network config itself: it fixes widths and depth, and its classifier must fit the data."""
        classes = config['classifier']['out_features']
        if classes != num_classes:
            raise ValueError(f'the network config classifies into {classes} classes, the data set has {num_classes}')
        return dict(network=config)

    def network(self, config):
        return config['network'], model_search.ProxylessNetwork(config['network'])

    def network_line(self, config, genotype):
        return self.describe(genotype), 'PyramidTreeNet'


SPACES = {space.name: space for space in (Darts(), NB201(), Proxyless())}
NAMES = tuple(SPACES)
PROXYLESS_NAMES = Proxyless.NAMED


def get(name):
    """The Space called name; ValueError naming the known ones."""
    if name not in SPACES:
        raise ValueError(f'unknown search space {name!r}; known: {", ".join(NAMES)}')
    return SPACES[name]


def space_of(genotype):
    """The space a genotype belongs to (each space knows its own kind of genotype)."""
    return next(space for space in SPACES.values() if space.owns(genotype))


def describe(genotype):
    """The line that names a genotype: a Python literal for genotypes.py, the benchmark's string, or
    the size of a proxyless network's trees."""
    return space_of(genotype).describe(genotype)
