"""Regularised evolution (Real et al., AAAI 2019): tournament selection, mutation, and the oldest
member leaves the population.

    python tabular.py --method rea --oracle TABLE.csv --population 10 --tournament 3

The population is the --population cells queried last: the first ones are random, and from then on
each query adds a child and removes the oldest member, so the population never needs storing apart
from the history. Each iteration draws --tournament members at random (without replacement), takes
the best as the parent and queries a mutation of it: one edge's op changed to another op.

A child already queried is mutated again from the same parent (a few tries, then a random unseen
cell), as is usual on a table: a repeated cell would use up a query of the budget but train nothing.
"""
import random

from tabular import Proposal

# Mutations of the parent tried before an unseen random cell is taken: a NAS-Bench-201 cell has
# a few dozen neighbours, so this many tries hit an unseen one unless almost all have been queried.
TRIES = 50


class REA:
    """propose(history, n): one cell, random while the history is shorter than the population, then
    a mutation of a tournament's winner (the global python generator draws both)."""

    def __init__(self, space, population, tournament):
        self.space, self.population, self.tournament = space, population, tournament

    def parent(self, history):
        """The best of `tournament` members drawn from the population (the last `population` queries)."""
        members = random.sample(history[-self.population:], self.tournament)
        return max(members, key=lambda r: r['value'])['cell']

    def propose(self, history, n):
        seen = {r['cell'] for r in history}
        if len(history) < self.population:
            return [Proposal(c) for c in self.space.random_unseen(seen, 1)]
        parent = self.parent(history)
        for _ in range(TRIES):
            child = self.space.mutate(parent)
            if child not in seen:
                return [Proposal(child)]
        return [Proposal(c) for c in self.space.random_unseen(seen, 1)]
