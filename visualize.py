"""What a search writes about its cell: the genotype files (genotype.json, and genotype.py for DARTS)
and the cell pictures, one arc diagram per cell type of the space (spaces.Space.pictures).

    visualize.write_genotype(genotype, run_dir, note)   # -> the line that names the genotype
    visualize.plot_genotype(genotype, run_dir)          # cell_normal.png, cell_reduce.png / cell.png / ...
    visualize.plot_cell(edges, concat, 'cell.png', 'normal cell', inputs=(0, 1))

search.py and derive.py write through it; train.py reads what it wrote.
"""
from collections import defaultdict
from pathlib import Path

import genotypes
import spaces
import utils


def outputs(space):
    """The files a derivation writes in the space."""
    literal = ('genotype.py',) if space.name == 'darts' else ()
    return ('genotype.json',) + literal + tuple(file for file, _, _ in space.pictures)


# ----------------------------------------------------------------------------------------------------
# Where the files go
# ----------------------------------------------------------------------------------------------------

def _written(path, write):
    """write(path); an OSError (disk full, no permission, a folder in the way) becomes one line."""
    try:
        write(path)
    except OSError as e:
        raise utils.UserError(f'cannot write {path}: {e.strerror or e}') from e


def output_dir(out_dir):
    """out_dir as a Path, created if needed; UserError when it is a file or cannot be created."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise utils.UserError(f'output directory {out_dir} exists and is not a directory')
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise utils.UserError(f'cannot create output directory {out_dir}: {e.strerror or e}') from e
    return out_dir


def write_genotype(genotype, out_dir, note):
    """genotype.json and, for a DARTS genotype, genotype.py (a comment line, then the literal), each
    written atomically; returns the line that names the genotype (spaces.describe)."""
    out_dir = output_dir(out_dir)
    space = spaces.space_of(genotype)
    line, text = space.describe(genotype), space.text(genotype)
    _written(out_dir / 'genotype.json', lambda p: utils.write_text_atomic(p, text))
    if space.name == 'darts':
        _written(out_dir / 'genotype.py', lambda p: utils.write_text_atomic(p, f'# {note}\n{line}\n'))
    return line


def save_figure(fig, path, dpi):
    """The figure as a PNG, atomically, so a reader never finds a torn picture."""
    _written(Path(path), lambda p: utils.save_figure_atomic(fig, p, dpi=dpi))


def new_figure(width, height):
    # A bare Figure renders through the Agg canvas on savefig: no pyplot state, no display needed.
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height))


# A cell picture is an arc diagram: every node on one line in genotype order (0 c_{k-2}, 1 c_{k-1},
# 2, 3, ..., then c_{k}), so an edge's arc spans exactly the nodes between its ends and never runs
# through a node. Edges into intermediate nodes arc above the line, one arrow per edge labelled with
# all of its operations; the dashed arcs into the output run below it, unlabelled.
ARC_RAD, OUT_RAD = -0.6, 0.35       # matplotlib arc3 bends: negative bends a rightward arc upwards
LABEL_FONT, NODE_FONT, TITLE_FONT = 8, 10, 11
LABEL_PAD, NODE_PAD = 0.25, 0.35    # box padding, in units of the font size (matplotlib's convention)
DPI = 110
SPOTS = (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78)  # where along its arc a label may sit, best first
TITLE_INCHES = 0.45
START_SCALE = 1.2                   # inches between neighbouring nodes in the smallest picture
GROWTH, TRIES = 1.15, 16            # the figure grows until every label finds a clear spot


def short_name(op):
    """'sep_conv_3x3' -> 'sep 3x3', 'max_pool_3x3' -> 'max 3x3', 'skip_connect' -> 'skip': short
    enough to stack seven of them in one label."""
    if op == 'skip_connect':
        return 'skip'
    words = op.split('_')
    return ' '.join(words[:1] + [w for w in words[1:] if w not in ('conv', 'pool')])


def _edge_labels(edges):
    """{(src, dst): label}: the edge's operations, one short name per line, repeats counted."""
    by_edge = defaultdict(list)
    for op, src, dst in edges:
        by_edge[(src, dst)].append(op)
    order = {op: i for i, op in enumerate(genotypes.OPERATIONS)}
    labels = {}
    for edge, ops in by_edge.items():
        counts = {op: ops.count(op) for op in sorted(set(ops), key=lambda o: (order.get(o, len(order)), o))}
        labels[edge] = '\n'.join(short_name(op) + (f' x{n}' if n > 1 else '') for op, n in counts.items())
    return labels


def _arc_point(a, b, rad, t):
    """The point at parameter t of matplotlib's arc3 curve from a to b: a quadratic Bezier whose
    control point lies rad * |ab| to the right of the chord's midpoint. Valid in data coordinates
    because the cell figure scales x and y alike."""
    (x0, y0), (x1, y1) = a, b
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
    u = 1 - t
    return u * u * x0 + 2 * u * t * cx + t * t * x1, u * u * y0 + 2 * u * t * cy + t * t * y1


def _draw_nodes(ax, pos, fed, inputs):
    """One boxed name per node, numbered as in the genotype; a node without operations into it
    (dead) is dashed and grey."""
    names = {0: '0  $c_{k-2}$', 1: '1  $c_{k-1}$'} if len(inputs) == 2 else {0: '0  $c_{k-1}$'}
    names['out'] = '$c_{k}$'
    texts = []
    for n, (x, y) in pos.items():
        dead = n not in fed and n not in ('out',) + tuple(inputs)
        face = 'lightblue' if n in inputs else 'palegoldenrod' if n == 'out' else 'white' if dead else 'lightgray'
        name = f'{n}\n(dead)' if dead else names.get(n, str(n))
        texts.append(ax.text(x, y, name, ha='center', va='center', fontsize=NODE_FONT - 2 * dead, zorder=3,
                             color='0.5' if dead else 'k', bbox=dict(
                                 boxstyle=f'round,pad={NODE_PAD}', fc=face, ec='0.5' if dead else 'k',
                                 ls='--' if dead else '-')))
    return texts


def _draw_arcs(ax, pos, labels, concat):
    """The arrows, coloured by source node so that a label's box matches its arc; returns the label
    artists (placed later) with the points along their arcs where they may go."""
    from matplotlib import colormaps
    from matplotlib.patches import FancyArrowPatch
    colors = colormaps['tab10']
    items = []
    for (src, dst), label in labels.items():
        color = colors(src % 10)
        ax.add_patch(FancyArrowPatch(pos[src], pos[dst], connectionstyle=f'arc3,rad={ARC_RAD}', zorder=1,
                                     arrowstyle='-|>', mutation_scale=13, color=color, lw=1.5,
                                     shrinkA=11, shrinkB=11))
        text = ax.text(0, 0, label, fontsize=LABEL_FONT, ha='center', va='center', zorder=4, linespacing=1.15,
                       bbox=dict(boxstyle=f'round,pad={LABEL_PAD}', fc='white', ec=color, lw=1.0))
        items.append((text, [_arc_point(pos[src], pos[dst], ARC_RAD, t) for t in SPOTS]))
    for n in concat:
        ax.add_patch(FancyArrowPatch(pos[n], pos['out'], connectionstyle=f'arc3,rad={OUT_RAD}', zorder=1,
                                     arrowstyle='-|>', mutation_scale=11, color='0.55', ls='--', lw=1.1,
                                     shrinkA=11, shrinkB=11))
    # The tallest labels first: they need the roomiest spots.
    return sorted(items, key=lambda item: -item[0].get_text().count('\n'))


def _padded(text, renderer, pad):
    """The display box of a text's (rounded) box: its extent grown by pad font sizes and a pixel."""
    grow = pad * text.get_fontsize() * text.figure.dpi / 72 + 1
    return text.get_window_extent(renderer).padded(grow)


def _clash(box, others, bounds):
    """How badly box sits: the area it shares with others plus the area outside bounds (pixels)."""
    from matplotlib.transforms import Bbox
    shared = sum(max(0, min(box.x1, o.x1) - max(box.x0, o.x0)) * max(0, min(box.y1, o.y1) - max(box.y0, o.y0))
                 for o in others)
    inside = Bbox.intersection(box, bounds)
    return shared + box.width * box.height - (inside.width * inside.height if inside else 0)


def _place_labels(ax, renderer, items, obstacles):
    """Move every label to its first spot clear of the obstacles and of the labels placed before it
    (else to its least bad spot); True when every label found a clear one."""
    placed, clear = list(obstacles), True
    for text, spots in items:
        best = None
        for spot in spots:
            text.set_position(spot)
            box = _padded(text, renderer, LABEL_PAD)
            cost = _clash(box, placed, ax.bbox)
            if best is None or cost < best[0]:
                best = (cost, spot, box)
            if cost == 0:
                break
        text.set_position(best[1])
        placed.append(best[2])
        clear = clear and best[0] == 0
    return clear


def _fit(fig, ax, pos, labels, concat, scale):
    """Size the figure at `scale` inches per node spacing, x and y alike (so arcs keep their shape),
    with room above the highest arc for half the tallest label."""
    out_x = pos['out'][0]
    lowest = max([OUT_RAD * (out_x - pos[n][0]) / 2 for n in concat], default=0)
    tallest = max((label.count('\n') + 1 for label in labels.values()), default=1)
    label_half = (tallest * 1.15 * LABEL_FONT + 2 * LABEL_PAD * LABEL_FONT) / 72 / 2 / scale
    top = max((-ARC_RAD * (dst - src) / 2 for src, dst in labels), default=0) + label_half + 0.15
    bottom = -(lowest + 0.3)
    x0, x1 = -0.65, out_x + 0.65
    width, height = (x1 - x0) * scale, (top - bottom) * scale
    fig.set_size_inches(width, height + TITLE_INCHES)
    ax.set_position([0, 0, 1, height / (height + TITLE_INCHES)])
    ax.set_xlim(x0, x1)
    ax.set_ylim(bottom, top)


def plot_cell(cell, concat, path, title, inputs):
    """Draw one cell (DARTS pairs or triples) and save it to path (None: do not save); returns the
    Figure. One arrow per edge, labelled with all of its operations; nodes numbered as in the
    genotype; the figure grows with its labels until none overlaps another or a node."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import ScaledTranslation
    edges = genotypes.cell_edges(cell) if cell else []      # a proxyless half may be empty
    fed = {dst for _, _, dst in edges}
    last = max(fed | set(concat) | set(inputs))
    pos = {**{n: (float(n), 0.0) for n in range(last + 1)}, 'out': (last + 1.0, 0.0)}
    labels = _edge_labels(edges)
    fig = Figure(dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.axis('off')
    below_top = ScaledTranslation(0, -0.08, fig.dpi_scale_trans)
    fig.text(0.5, 1, f'{title}: {len(edges)} operation{"s" * (len(edges) != 1)} on {len(labels)} '
             f'edge{"s" * (len(labels) != 1)}', ha='center', va='top', fontsize=TITLE_FONT,
             transform=fig.transFigure + below_top)
    nodes = _draw_nodes(ax, pos, fed, inputs)
    items = _draw_arcs(ax, pos, labels, concat)
    scale = START_SCALE
    for _ in range(TRIES):
        _fit(fig, ax, pos, labels, concat, scale)
        renderer = fig.canvas.get_renderer()
        if _place_labels(ax, renderer, items, [_padded(t, renderer, NODE_PAD) for t in nodes]):
            break
        scale *= GROWTH
    if path is not None:
        save_figure(fig, path, dpi=DPI)
    return fig


def plot_genotype(genotype, out_dir):
    """The space's cell pictures (DARTS: cell_normal.png and cell_reduce.png; NAS-Bench-201: cell.png;
    proxyless: cell_sShK.png, the trees of each stage's first block) in out_dir; returns their
    Figures by cell type."""
    space = spaces.space_of(genotype)
    figures = {}
    for file, cell_type, title in space.pictures:
        cell = space.cell(genotype, cell_type)
        if cell is not None:        # a proxyless network may have fewer stages
            figures[cell_type] = plot_cell(*cell, Path(out_dir) / file, title, space.inputs)
    return figures
