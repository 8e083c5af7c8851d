"""visualize.py's cell pictures: one labelled arrow per edge, nodes numbered as in the genotype, labels
that do not overlap one another or a node, for DARTS pairs, dense triples and dead nodes."""
import itertools

import pytest

import genotypes
import visualize
from genotypes import CANDIDATES

EDGES = [(i, j) for j in range(2, 6) for i in range(j)]
PNG = b'\x89PNG\r\n\x1a\n'
INPUTS = (0, 1)              # a DARTS cell's input nodes


def dense_cell(per_edge):
    """The first per_edge[k] candidate ops on the k-th of the 14 DARTS edges, as triples."""
    return [(op, src, dst) for (src, dst), n in zip(EDGES, per_edge) for op in CANDIDATES[:n]]


FORTY = dense_cell([7, 2, 4, 3, 1, 5, 2, 2, 3, 1, 4, 2, 2, 2])


def boxes(fig):
    """Display boxes of every text's drawn box (labels and nodes), as the saved picture has them."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [t.get_bbox_patch().get_window_extent(renderer) for t in fig.axes[0].texts]


def assert_no_overlap(fig):
    drawn = boxes(fig)
    for a, b in itertools.combinations(drawn, 2):
        assert min(a.x1, b.x1) <= max(a.x0, b.x0) or min(a.y1, b.y1) <= max(a.y0, b.y0), (a, b)
    for box in drawn:
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), box


def labels(fig):
    """{text: count} of the edge labels (white boxes), leaving out the node boxes."""
    found = [t.get_text() for t in fig.axes[0].texts if t.get_bbox_patch().get_facecolor()[:3] == (1, 1, 1)
             and '(dead)' not in t.get_text()]
    return {text: found.count(text) for text in found}


def node_names(fig):
    return sorted(t.get_text() for t in fig.axes[0].texts if t.get_text() not in labels(fig))


def arrows(fig):
    return len(fig.axes[0].patches)


def test_a_40_op_cell_draws_one_labelled_arrow_per_edge_without_overlaps(tmp_path):
    assert len(FORTY) == 40
    fig = visualize.plot_cell(FORTY, [2, 3, 4, 5], tmp_path / 'cell.png', 'normal cell', INPUTS)
    data = (tmp_path / 'cell.png').read_bytes()
    assert data[:8] == PNG and len(data) > 30_000
    assert arrows(fig) == 14 + 4                            # 14 edges, 4 arcs into the output
    want = {'\n'.join(visualize.short_name(op) for op in CANDIDATES[:n])
            for n in [7, 2, 4, 3, 1, 5, 2, 2, 3, 1, 4, 2, 2, 2]}
    assert set(labels(fig)) == want and sum(labels(fig).values()) == 14
    assert_no_overlap(fig)
    assert '40 operations on 14 edges' in fig.texts[0].get_text()


def test_every_candidate_on_every_edge_still_has_no_overlaps(tmp_path):
    fig = visualize.plot_cell(dense_cell([7] * 14), [2, 3, 4, 5], tmp_path / 'cell.png', 'reduce cell', INPUTS)
    assert labels(fig) == {'\n'.join(visualize.short_name(op) for op in CANDIDATES): 14}
    assert_no_overlap(fig)
    # A denser cell needs a larger picture for its labels.
    small = visualize.plot_cell(genotypes.DARTS_V2.normal, [2, 3, 4, 5], None, 'normal cell', INPUTS)
    assert fig.get_size_inches()[0] > small.get_size_inches()[0]


def test_nodes_are_numbered_as_in_the_genotype_for_darts_pairs(tmp_path):
    fig = visualize.plot_cell(genotypes.DARTS_V2.normal, [2, 3, 4, 5], tmp_path / 'cell.png', 'normal cell', INPUTS)
    assert node_names(fig) == sorted(['0  $c_{k-2}$', '1  $c_{k-1}$', '2', '3', '4', '5', '$c_{k}$'])
    # DARTS_V2's normal cell has two ops on 0->2 and 1->2 each ... and one per edge: 8 edges.
    edges = {(src, dst) for _, src, dst in genotypes.cell_edges(genotypes.DARTS_V2.normal)}
    assert arrows(fig) == len(edges) + 4 and sum(labels(fig).values()) == len(edges)
    assert_no_overlap(fig)
    assert (tmp_path / 'cell.png').read_bytes()[:8] == PNG


def test_dead_nodes_keep_their_numbers_and_get_no_output_arc():
    cell = [('sep_conv_3x3', 0, 2), ('skip_connect', 1, 2), ('max_pool_3x3', 2, 5), ('avg_pool_3x3', 0, 5)]
    fig = visualize.plot_cell(cell, [2, 5], None, 'normal cell', INPUTS)
    names = node_names(fig)
    assert '3\n(dead)' in names and '4\n(dead)' in names and '2' in names and '5' in names
    assert arrows(fig) == 4 + 2
    assert_no_overlap(fig)


def test_an_edge_with_a_repeated_op_counts_it_in_one_label():
    fig = visualize.plot_cell([('sep_conv_3x3', 0, 2), ('sep_conv_3x3', 0, 2), ('skip_connect', 0, 2)], [2],
                           None, 'normal cell', INPUTS)
    assert labels(fig) == {'skip\nsep 3x3 x2': 1} and arrows(fig) == 2


@pytest.mark.parametrize('op, short', [
    ('sep_conv_3x3', 'sep 3x3'), ('dil_conv_5x5', 'dil 5x5'), ('max_pool_3x3', 'max 3x3'),
    ('avg_pool_3x3', 'avg 3x3'), ('skip_connect', 'skip'), ('none', 'none'), ('conv_7x1_1x7', 'conv 7x1 1x7'),
])
def test_short_names(op, short):
    assert visualize.short_name(op) == short


def test_plot_genotype_returns_both_figures_and_writes_both_pictures(tmp_path):
    figs = visualize.plot_genotype(genotypes.BayesNAS_0_007, tmp_path)
    assert sorted(figs) == ['normal', 'reduce']
    for cell_type, fig in figs.items():
        assert (tmp_path / f'cell_{cell_type}.png').read_bytes()[:8] == PNG
        assert_no_overlap(fig)
