"""NAS-Bench-201 accuracies of cells, read from a benchmark file: a CSV table (one row per cell, or per
cell and seed) or the official NATS-Bench topology file (with the nats_bench package).

The search never reads it. search.py and derive.py print the line of a derived cell (--benchmark),
and the tabular methods' oracle (tabular.py) reads the table, by definition the one thing a tabular
search may read of it.

A CSV table: the architecture column is the first whose header starts with 'arch', the accuracy
columns those whose header contains 'acc'; several rows of one architecture (seeds) are averaged.
"""
import csv
import math
from pathlib import Path

import utils


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _mean(values):
    return None if any(v is None for v in values) else sum(values) / len(values)


def read_table(path, what='benchmark table'):
    """(accuracy columns, {arch: {column: mean value, None where a row holds no number}}, {arch: its
    rows}) of a CSV table; `what` names the table in errors."""
    try:
        with open(path, newline='') as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise utils.UserError(f'cannot read {what} {path}: {getattr(e, "strerror", None) or e}') from e
    if not rows:
        raise utils.UserError(f'{what} {path} is empty')
    header = [h.strip() for h in rows[0]]
    arch = next((i for i, h in enumerate(header) if h.lower().startswith('arch')), None)
    if arch is None:
        raise utils.UserError(f'{what} {path} has no column of architecture strings (a header starting '
                              f'with "arch"); its columns: {", ".join(header)}')
    columns = [i for i, h in enumerate(header) if 'acc' in h.lower() and i != arch]
    if not columns:
        raise utils.UserError(f'{what} {path} has no accuracy column (a header containing "acc"); its '
                              f'columns: {", ".join(header)}')
    found = {}
    for line, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise utils.UserError(f'{what} {path}, line {line}: {len(row)} fields, the header has {len(header)}')
        found.setdefault(row[arch].strip(), []).append([_number(row[i]) for i in columns])
    table = {cell: {header[i]: _mean([r[j] for r in rows_of_cell]) for j, i in enumerate(columns)}
             for cell, rows_of_cell in found.items()}
    return [header[i] for i in columns], table, {cell: len(r) for cell, r in found.items()}


def _csv_lookup(path, arch):
    _, table, counts = read_table(path)
    if arch not in table:
        raise utils.UserError(f'{arch} is not in benchmark table {path} ({sum(counts.values())} rows)')
    values = {k: v for k, v in table[arch].items() if v is not None}
    if not values:
        raise utils.UserError(f'benchmark table {path}: the accuracy columns of {arch} hold no numbers')
    return values, counts[arch]


def _nats_lookup(path, arch):
    """{'<data set> <metric>': value} of arch from the official NATS-Bench topology file (200 epochs)."""
    try:
        from nats_bench import create
    except ImportError:
        raise utils.UserError(f'{path} is not a .csv table, and reading the NATS-Bench API file needs the '
                              f'nats_bench package (pip install nats_bench)') from None
    try:
        api = create(str(path), 'tss', fast_mode=True, verbose=False)
        index = api.query_index_by_arch(arch)
        infos = [] if index is None or index < 0 else [
            (dataset, api.get_more_info(index, dataset, hp='200', is_random=False))
            for dataset in ('cifar10-valid', 'cifar10')]
    except Exception as e:      # nats_bench fails in its own ways on a file that is not its format
        raise utils.UserError(f'{path} is not a .csv table nor a NATS-Bench topology file nats_bench '
                              f'can read: {type(e).__name__}: {e}') from e
    if not infos:
        raise utils.UserError(f'{arch} is not in the NATS-Bench file {path}')
    values = {f'{dataset} {metric}': float(info[metric]) for dataset, info in infos
              for metric in ('valid-accuracy', 'test-accuracy') if isinstance(info.get(metric), (int, float))}
    return values, 1


def lookup(path, arch):
    """The line that reports arch's accuracies in the benchmark file at path (a .csv table, or the
    NATS-Bench API file when nats_bench is installed)."""
    path = Path(path)
    if not path.exists():
        raise utils.UserError(f'benchmark file {path} does not exist')
    values, rows = (_csv_lookup if path.suffix.lower() == '.csv' else _nats_lookup)(path, arch)
    mean = f' (mean of {rows} rows)' if rows > 1 else ''
    return f'# benchmark {path.name}{mean}: ' + ', '.join(f'{k} {v:.2f}' for k, v in values.items())


def check(path, space):
    """Before any work: --benchmark only for NAS-Bench-201, and only with a file that is there."""
    if path is None:
        return
    if space.name != 'nb201':
        raise utils.UserError(f'--benchmark looks up NAS-Bench-201 cells; this is a {space.name} search')
    if not Path(path).exists():
        raise utils.UserError(f'benchmark file {path} does not exist')
