"""The search spaces as data: what search.py, derive.py and train.py need to know of each space.

    darts   DARTS's cells: two input nodes, four intermediate nodes concatenated into the output, seven
            candidate ops on each of the 14 edges; normal and reduction cells in a stack of cells.
    nb201   NAS-Bench-201's cell: one input node, three nodes, the last one the output, four candidate
            ops on each of the 6 edges; one cell, in three stages joined by residual blocks.

Both are served by one cell implementation (model_search.Cell) in both uses, supernet and retrained
network. To add a space: its operations to operations.OPS, its genotype format to genotypes.py, its
macro networks (a model_search.SwitchNetwork and an evaluation network, both made of Cells) to
model_search.py, and a Space below.
"""
from typing import Callable, NamedTuple, Optional

import genotypes
import model_search


class Space(NamedTuple):
    name: str
    candidates: list                # the ops behind op switches on every edge, in switch order
    inputs: tuple                   # a cell's input nodes
    outputs: Optional[tuple]        # the nodes that form a cell's output; None: every live node
    cell_types: tuple               # the cells of a tied supernet, one set of switch groups each
    one_op_per_edge: bool           # derivation keeps the strongest surviving op of an edge, or all
    layers: int                     # default --layers of the search
    layers_means: str               # what --layers counts
    lam: float                      # default --lambda of the search (README: how it was chosen)
    supernet: Callable              # (C, layers, num_classes, tie) -> model_search.SwitchNetwork
    genotype: Callable              # {cell_type: (kept (op, from, to), concat)} -> the space's genotype
    pictures: tuple                 # the cell pictures derive.py draws: (file, cell_type, title)


def _darts_genotype(cells):
    return genotypes.Genotype(normal=cells['normal'][0], normal_concat=cells['normal'][1],
                              reduce=cells['reduce'][0], reduce_concat=cells['reduce'][1])


def _nb201_genotype(cells):
    return genotypes.nb201_string(cells['normal'][0])


SPACES = {
    'darts': Space(
        name='darts', candidates=genotypes.CANDIDATES, inputs=(0, 1), outputs=None,
        cell_types=('normal', 'reduce'), one_op_per_edge=False, layers=8, layers_means='cells',
        lam=0.002,
        supernet=lambda C, layers, num_classes, tie: model_search.Network(C, num_classes, layers, tie=tie),
        genotype=_darts_genotype,
        pictures=(('cell_normal.png', 'normal', 'normal cell'), ('cell_reduce.png', 'reduce', 'reduce cell'))),
    'nb201': Space(
        name='nb201', candidates=genotypes.NB201_CANDIDATES, inputs=(0,), outputs=(genotypes.NB201_NODES - 1,),
        cell_types=('normal',), one_op_per_edge=True, layers=5, layers_means='cells per stage',
        lam=0.005,
        supernet=lambda C, layers, num_classes, tie: model_search.NB201Search(C, layers, num_classes, tie=tie),
        genotype=_nb201_genotype,
        pictures=(('cell.png', 'normal', 'NAS-Bench-201 cell'),)),
}
NAMES = tuple(SPACES)


def get(name):
    """The Space called name; ValueError naming the known ones."""
    if name not in SPACES:
        raise ValueError(f'unknown search space {name!r}; known: {", ".join(NAMES)}')
    return SPACES[name]


def cell_of(space, genotype, cell_type):
    """(edges as (op, from, to), concat) of one cell of a genotype of the space."""
    if space.name == 'nb201':
        return genotypes.nb201_cell(genotype), list(model_search.NB201_OUTPUT)
    return genotypes.cell_edges(getattr(genotype, cell_type)), list(getattr(genotype, f'{cell_type}_concat'))


def describe(genotype):
    """The line that names a genotype: a Python literal for genotypes.py, or the benchmark's string."""
    return genotype if isinstance(genotype, str) else genotypes.to_literal(genotype)
