"""Random search: each iteration queries one cell drawn uniformly from those not yet queried.

    python tabular.py --method random_search --oracle TABLE.csv

The baseline every NAS method must beat; on a table its expected best of n queries is the expected
maximum of n distinct cells drawn without replacement.
"""
from tabular import Proposal


class RandomSearch:
    """propose(history, n): one random unseen cell (the global python generator draws it)."""

    def __init__(self, space):
        self.space = space

    def propose(self, history, n):
        return [Proposal(c) for c in self.space.random_unseen({r['cell'] for r in history}, 1)]
