"""BONAS (Shi et al., NeurIPS 2020): Bayesian optimisation over cells with a graph-network surrogate.

    python tabular.py --method bonas --oracle TABLE.csv     # NAS-Bench-201, the table as the oracle

Every iteration, from the cells queried so far:
  1. each cell becomes a graph whose nodes are its operations (plus input and output nodes and a
     global node that every node feeds), labelled one-hot by operation;
  2. a graph convolutional network (--gcn_epochs of Adam, trained from scratch) maps a graph to the
     accuracy through a sigmoid head; its loss is a squared error weighted by exp(y - 1), which
     makes the good cells, the ones the search is after, count more;
  3. Bayesian linear regression on the frozen embeddings of the global node, against logit(accuracy),
     with the prior precision alpha and the noise precision beta that maximise the evidence
     (MacKay's fixed-point iteration), gives a Gaussian predictive in logit space, whose mean and
     variance the probit approximation carries through the sigmoid back to accuracies;
  4. the k unseen cells of the pool (every cell of the space) with the highest upper confidence
     bound, mean + kappa * deviation, are queried together (in tabular mode looked up; with weight
     sharing, trained together in one supernet).
The first --warm_start cells are drawn at random.

Where it departs from the authors' code (pipilurj/BONAS), and why:
  * the variance through the sigmoid: the paper takes sigmoid(z)^2 as sigmoid(a (z + b)), whose
    error leaves the deviation of sigmoid(z) far above Monte Carlo's where the logit variance is
    small, and by an amount that rises and falls with the mean, so that UCB would favour some
    predicted accuracies over others for no reason; here the second moment of the same probit
    approximation is computed exactly (Owen's T), which tests/test_bonas.py holds to Monte Carlo;
    the released get_ucb also writes `^`, exclusive-or in numpy, for powers;
  * the regression gets a constant feature: embeddings after ReLU are non-negative, and without it
    the prior shrinks the offset of the logits (around 1 for good cells) towards 0;
  * the graph convolutions carry no bias: BatchNorm after each one removes any shift anyway;
  * Adam's learning rate is ten times the authors': a search's training set of a few dozen to a few
    hundred cells fills one or two batches, so an epoch is one or two steps, and at the authors'
    rate the surrogate barely leaves its initialisation (its rank correlation with the table stays
    lower, and on the NAS-Bench-201 table the search finds worse cells: compare.py measures both).

The encodings (both spaces) round-trip: decode_nb201(encode_nb201(a)) == a, and likewise for DARTS
genotypes, so a weight-sharing evaluator can take the graphs the method proposes.
"""
import math
from collections import namedtuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import genotypes
from tabular import NB201_EDGES, Proposal

# A cell as a graph: adj[i][j] = 1 when node i feeds node j; ops[i] is node i's label.
Graph = namedtuple('Graph', 'adj ops')



# ----------------------------------------------------------------------------------------------------
# Cells as graphs
# ----------------------------------------------------------------------------------------------------

NB201_LABELS = ['input', 'output'] + genotypes.NB201_OPERATIONS
# 'none' stays a label: a DARTS genotype may name it, and it must survive the round trip.
DARTS_LABELS = ['input', 'output'] + genotypes.OPERATIONS
DARTS_PAIRS = 8                                  # (op, input) pairs of a DARTS cell: two per node
DARTS_CELL_NODES = 2 + DARTS_PAIRS + 1           # two inputs, the pairs, the output


def _adjacency(n, edges):
    adj = np.zeros((n, n), dtype=np.int8)
    for s, d in edges:
        adj[s, d] = 1
    return adj


def _nb201_structure():
    """The adjacency every NAS-Bench-201 graph shares: node 0 the input, node 1 + e the op of edge e,
    the last node the output. An op on edge (s, d) reads the ops on the edges into node s (or the
    input when s is 0) and feeds the ops on the edges out of d (or the output when d is the last)."""
    out = len(NB201_EDGES) + 1
    links = []
    for e, (s, d) in enumerate(NB201_EDGES):
        links += [(0, 1 + e)] if s == 0 else [(1 + f, 1 + e) for f, (_, dd) in enumerate(NB201_EDGES) if dd == s]
        if d == genotypes.NB201_NODES - 1:
            links.append((1 + e, out))
    return _adjacency(out + 1, links)


NB201_ADJ = _nb201_structure()


def encode_nb201(arch):
    """The graph of a NAS-Bench-201 string (ValueError for a malformed one)."""
    ops = [op for op, _, _ in genotypes.nb201_edges(arch)]
    return Graph(NB201_ADJ.copy(), ['input'] + ops + ['output'])


def decode_nb201(graph):
    """The string of an encode_nb201 graph; ValueError for any other graph."""
    adj, ops = graph
    if np.asarray(adj).shape != NB201_ADJ.shape or not (np.asarray(adj) == NB201_ADJ).all() \
            or ops[0] != 'input' or ops[-1] != 'output':
        raise ValueError('not the graph of a NAS-Bench-201 cell')
    return genotypes.nb201_string([(op, s, d) for op, (s, d) in zip(ops[1:-1], NB201_EDGES)])


def _darts_cell_links(cell, concat, base):
    """Links of one DARTS cell whose nodes start at `base`: inputs base, base + 1, pair i at
    base + 2 + i, the output last. A pair reading intermediate node m reads both ops of m."""
    pair = lambda i: base + 2 + i
    links = []
    for i, (_, src) in enumerate(cell):
        links += [(base + src, pair(i))] if src < 2 else [(pair(2 * (src - 2) + j), pair(i)) for j in (0, 1)]
    out = base + DARTS_CELL_NODES - 1
    return links + [(pair(2 * (node - 2) + j), out) for node in concat for j in (0, 1)]


def encode_darts(genotype):
    """The graph of a DARTS genotype in the pairs form with four intermediate nodes: the normal cell's
    nodes, then the reduction cell's, whose two inputs read the normal cell's output (as in the
    network, where a reduction cell follows normal cells; it also tells the two cells apart)."""
    g = genotypes.canonical(genotype)
    for which, cell in (('normal', g.normal), ('reduce', g.reduce)):
        if genotypes.cell_form(cell) != 'pairs' or len(cell) != DARTS_PAIRS:
            raise ValueError(f'{which} cell: BONAS encodes DARTS cells of {DARTS_PAIRS} (op, input) pairs')
    links = _darts_cell_links(g.normal, g.normal_concat, 0)
    links += _darts_cell_links(g.reduce, g.reduce_concat, DARTS_CELL_NODES)
    normal_out = DARTS_CELL_NODES - 1
    links += [(normal_out, DARTS_CELL_NODES), (normal_out, DARTS_CELL_NODES + 1)]
    ops = []
    for cell in (g.normal, g.reduce):
        ops += ['input', 'input'] + [op for op, _ in cell] + ['output']
    return Graph(_adjacency(2 * DARTS_CELL_NODES, links), ops)


def _decode_darts_cell(adj, ops, base):
    pair_of = lambda node: node - base - 2       # node -> its pair's index
    cell = []
    for i in range(DARTS_PAIRS):
        node = base + 2 + i
        feeds = [int(s) for s in np.flatnonzero(adj[:, node])]
        if len(feeds) == 1 and feeds[0] - base in (0, 1):
            src = feeds[0] - base
        else:
            nodes = {2 + pair_of(s) // 2 for s in feeds}
            if len(feeds) != 2 or len(nodes) != 1 or not all(0 <= pair_of(s) < DARTS_PAIRS for s in feeds):
                raise ValueError(f'node {node} reads neither one input nor the two ops of one node')
            src = nodes.pop()
        cell.append((ops[node], src))
    out = base + DARTS_CELL_NODES - 1
    concat = sorted({2 + pair_of(int(s)) // 2 for s in np.flatnonzero(adj[:, out])})
    return cell, concat


def decode_darts(graph):
    """The Genotype of an encode_darts graph, read from its links; ValueError for any other graph."""
    adj, ops = np.asarray(graph.adj), graph.ops
    if adj.shape != (2 * DARTS_CELL_NODES,) * 2 or len(ops) != 2 * DARTS_CELL_NODES:
        raise ValueError('not the graph of a DARTS genotype')
    normal, normal_concat = _decode_darts_cell(adj, ops, 0)
    reduce, reduce_concat = _decode_darts_cell(adj, ops, DARTS_CELL_NODES)
    return genotypes.canonical(genotypes.Genotype(normal, normal_concat, reduce, reduce_concat))


ENCODERS = {'nb201': (encode_nb201, NB201_LABELS), 'darts': (encode_darts, DARTS_LABELS)}


def tensors(graphs, labels):
    """(x [B, N+1, L+1], adj [B, N+1, N+1]) for the GCN: one-hot labels with one more label for the
    global node (the last node), and the adjacency transposed so that row i sums over the nodes that
    feed node i, itself included; every node feeds the global node."""
    n, size = len(graphs[0].ops), len(labels) + 1
    index = {label: i for i, label in enumerate(labels)}
    x = torch.zeros(len(graphs), n + 1, size)
    adj = torch.zeros(len(graphs), n + 1, n + 1)
    codes = torch.tensor([[index[op] for op in g.ops] for g in graphs])
    x[:, :n].scatter_(2, codes.unsqueeze(-1), 1)
    adj[:, :n, :n] = torch.from_numpy(np.stack([np.asarray(g.adj) for g in graphs])).float().transpose(1, 2)
    x[:, n, size - 1] = 1
    adj[:, n, :] = 1
    adj[:, torch.arange(n + 1), torch.arange(n + 1)] = 1
    return x, adj


# ----------------------------------------------------------------------------------------------------
# The surrogate: a graph convolutional network
# ----------------------------------------------------------------------------------------------------

class GCN(nn.Module):
    """Graph convolutions (adj @ h W), each followed by BatchNorm over the nodes of the batch and
    ReLU; the global node's last state is the embedding, and a linear layer and a sigmoid map it to
    an accuracy in (0, 1)."""

    def __init__(self, features, width=64, layers=4):
        super().__init__()
        self.convs = nn.ModuleList(nn.Linear(features if i == 0 else width, width, bias=False)
                                   for i in range(layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(layers))
        self.head = nn.Linear(width, 1)

    def embed(self, x, adj):
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = adj @ conv(h)
            h = F.relu(norm(h.transpose(1, 2)).transpose(1, 2))
        return h[:, -1]

    def forward(self, x, adj):
        return torch.sigmoid(self.head(self.embed(x, adj))).squeeze(-1)


def weighted_mse(pred, y):
    """Squared error weighted by exp(y - 1) (the authors' code): the better a cell, the more its
    error counts."""
    return (torch.exp(y - 1) * (pred - y) ** 2).mean()


def train_gcn(x, adj, y, epochs, lr=1e-2, batch_size=128):
    """A GCN trained from scratch on (x, adj) -> y in (0, 1), with Adam on shuffled mini-batches (the
    global torch generator draws the initial weights and the order); the module docstring says why
    the learning rate departs from the authors'."""
    gcn = GCN(x.shape[-1])
    optimizer = torch.optim.Adam(gcn.parameters(), lr=lr)
    gcn.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            weighted_mse(gcn(x[idx], adj[idx]), y[idx]).backward()
            optimizer.step()
    return gcn.eval()


@torch.no_grad()
def embeddings(gcn, x, adj, chunk=4096):
    return torch.cat([gcn.embed(x[i:i + chunk], adj[i:i + chunk]) for i in range(0, len(x), chunk)])


# ----------------------------------------------------------------------------------------------------
# Bayesian linear regression with evidence-maximised precisions
# ----------------------------------------------------------------------------------------------------

Posterior = namedtuple('Posterior', 'mean cov alpha beta iterations converged')


def posterior(phi, t, alpha, beta):
    """(mean, covariance) of the weights under the prior N(0, I / alpha) and noise precision beta:
    S = (alpha I + beta Phi^T Phi)^-1, m = beta S Phi^T t."""
    cov = np.linalg.inv(alpha * np.eye(phi.shape[1]) + beta * phi.T @ phi)
    return beta * cov @ phi.T @ t, cov


def evidence_fit(phi, t, alpha=1.0, beta=1.0, iterations=500, rtol=1e-6):
    """The posterior at the alpha and beta that maximise the evidence, by MacKay's fixed point:
    gamma = sum_i l_i / (alpha + l_i) over the eigenvalues l_i of beta Phi^T Phi (the number of
    well-determined weights), alpha = gamma / |m|^2, 1 / beta = |t - Phi m|^2 / (N - gamma)."""
    phi, t = np.asarray(phi, dtype=np.float64), np.asarray(t, dtype=np.float64)
    eig = np.clip(np.linalg.eigvalsh(phi.T @ phi), 0, None)
    tiny = np.finfo(np.float64).tiny
    for i in range(1, iterations + 1):
        m, _ = posterior(phi, t, alpha, beta)
        gamma = float(np.sum(beta * eig / (alpha + beta * eig)))
        # The floors keep a perfect fit or an all-zero mean from dividing by zero.
        new_alpha = gamma / max(float(m @ m), tiny)
        new_beta = max(len(t) - gamma, tiny) / max(float(np.sum((t - phi @ m) ** 2)), tiny)
        done = abs(new_alpha - alpha) <= rtol * alpha and abs(new_beta - beta) <= rtol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    mean, cov = posterior(phi, t, alpha, beta)
    return Posterior(mean, cov, alpha, beta, i, done)


def log_evidence(phi, t, alpha, beta):
    """log p(t | alpha, beta) of the model (Bishop, eq. 3.86): what evidence_fit maximises."""
    phi, t = np.asarray(phi, dtype=np.float64), np.asarray(t, dtype=np.float64)
    n, m_dim = phi.shape
    m, cov = posterior(phi, t, alpha, beta)
    e = beta / 2 * np.sum((t - phi @ m) ** 2) + alpha / 2 * m @ m
    return (m_dim / 2 * math.log(alpha) + n / 2 * math.log(beta) - e
            + 0.5 * np.linalg.slogdet(cov)[1] - n / 2 * math.log(2 * math.pi))


def predictive(post, phi):
    """(mean, variance) of the predictive distribution at the rows of phi: m^T phi, 1/beta + phi^T S phi."""
    phi = np.asarray(phi, dtype=np.float64)
    return phi @ post.mean, 1 / post.beta + np.einsum('ij,jk,ik->i', phi, post.cov, phi)


# ----------------------------------------------------------------------------------------------------
# From logits back to accuracies, and the acquisition
# ----------------------------------------------------------------------------------------------------

def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def sigmoid_moments(mu, var):
    """(mean, variance) of sigmoid(z) for z ~ N(mu, var), by the probit approximation sigmoid(z) ~
    Phi(l z), l^2 = pi / 8. The mean is sigmoid(mu / sqrt(1 + pi var / 8)). The second moment of
    Phi(l z) is a bivariate normal probability, Phi2(h, h; r) with h = l mu / sqrt(1 + l^2 var) and
    r = l^2 var / (1 + l^2 var), which Owen's T function gives: Phi(h) - 2 T(h, 1 / sqrt(1 + 2 l^2 var))."""
    mu, var = np.asarray(mu, dtype=np.float64), np.asarray(var, dtype=np.float64)
    mean = _sigmoid(mu / np.sqrt(1 + math.pi * var / 8))
    l2 = math.pi / 8
    h = math.sqrt(l2) * mu / np.sqrt(1 + l2 * var)
    p = _ndtr(h)
    second = p - 2 * owens_t(h, 1 / np.sqrt(1 + 2 * l2 * var))
    # The variance of the probit model itself: mixing in the sigmoid's mean would add its own error.
    return mean, np.clip(second - p ** 2, 0, None)


def _ndtr(x):
    return torch.special.ndtr(torch.as_tensor(x, dtype=torch.float64)).numpy()


_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(24)


def owens_t(h, a):
    """Owen's T(h, a) = 1/(2 pi) int_0^a exp(-h^2 (1 + x^2) / 2) / (1 + x^2) dx, for 0 <= a <= 1, by
    Gauss-Legendre quadrature (the integrand is smooth there: a few dozen nodes reach double precision)."""
    h, a = np.broadcast_arrays(np.asarray(h, dtype=np.float64), np.asarray(a, dtype=np.float64))
    x = a[..., None] * (_NODES + 1) / 2                     # the nodes mapped onto [0, a]
    f = np.exp(-h[..., None] ** 2 * (1 + x * x) / 2) / (1 + x * x)
    return a / 2 * (f * _WEIGHTS).sum(-1) / (2 * math.pi)


def ucb_top(mean, std, kappa, seen, k):
    """Indices of the k cells with the highest mean + kappa * std among those not in `seen` (a bool
    mask); ties go to the lower index."""
    score = np.where(seen, -np.inf, mean + kappa * std)
    order = np.argsort(-score, kind='stable')
    return [int(i) for i in order[:min(k, int((~seen).sum()))]]


# ----------------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------------

def logit(p, eps=1e-4):
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))


class BONAS:
    """propose(history, n): the next cells to query, at most n. The history (dicts with 'cell' and
    'value', an accuracy in percent) is the method's whole state: the surrogate is retrained from
    scratch every iteration, and the random choices come from the global generators."""

    def __init__(self, space, k, warm_start, kappa, gcn_epochs):
        self.space, self.k, self.warm_start, self.kappa, self.gcn_epochs = space, k, warm_start, kappa, gcn_epochs
        encode, self.labels = ENCODERS[space.name]
        self.pool = space.cells()
        self.index = {cell: i for i, cell in enumerate(self.pool)}
        # Every cell of the pool encoded once; the surrogate reads its training cells from here too.
        self.x, self.adj = tensors([encode(c) for c in self.pool], self.labels)

    def propose(self, history, n):
        if len(history) < self.warm_start:
            seen = {r['cell'] for r in history}
            return [Proposal(c) for c in self.space.random_unseen(seen, min(n, self.warm_start - len(history)))]
        rows = torch.tensor([self.index[r['cell']] for r in history])
        y = np.array([r['value'] for r in history]) / 100
        gcn = train_gcn(self.x[rows], self.adj[rows], torch.tensor(y, dtype=torch.float32), self.gcn_epochs)
        phi = self._features(embeddings(gcn, self.x, self.adj))
        post = evidence_fit(phi[rows.numpy()], logit(y))
        mean, var = sigmoid_moments(*predictive(post, phi))
        std = np.sqrt(var)
        mask = np.zeros(len(self.pool), dtype=bool)
        mask[rows.numpy()] = True
        return [Proposal(self.pool[i], 100 * float(mean[i]), 100 * float(std[i]))
                for i in ucb_top(mean, std, self.kappa, mask, min(n, self.k))]

    @staticmethod
    def _features(emb):
        return np.concatenate([emb.double().numpy(), np.ones((len(emb), 1))], axis=1)
