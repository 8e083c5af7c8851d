"""BayesNAS switches, curvature of the loss w.r.t. switches, and the HARD prior.

Self-contained (imports only torch): copy it into any PyTorch CNN.

    Switch(shape=(), init=1.0)
        y = x * (s * mask). `s` broadcasts over x: () for an operation or an edge, (C, 1, 1) for the
        filters of a conv, (C,) for the neurons of a linear layer. Pruned entries have s = mask = 0;
        `switch.pruned` is True when all entries are, so the caller can skip what it scales.

    switch_curvature(model, batches, method='fisher') -> {switch name: tensor shaped like s}
        Diagonal curvature of the mean per-sample cross-entropy w.r.t. every Switch entry, over all
        samples of `batches` (an iterable of (inputs, targets); targets are not used: all three
        estimators take expectations under the model's own predictive distribution). The model is put
        in eval mode for the pass (BatchNorm on running statistics, no dropout), so samples are
        independent and the network is a fixed function; its modes are restored afterwards.
          'ggn'        exact diagonal of the generalised Gauss-Newton matrix, one backward per class.
          'fisher'     Monte-Carlo Fisher: one backward with labels drawn from the model; unbiased for
                       the 'ggn' diagonal.
          'recursive'  the BayesNAS layer-wise recursion (Becker & LeCun style): a diagonal curvature
                       P is propagated backwards through squared layer coefficients, dropping
                       off-diagonal terms. Run as one backward pass through the network's "squared
                       twin" (see the section below), at about the cost of a training step. Behind a
                       global average pool it drops the cross terms between positions, so on networks
                       that pool it is far below 'ggn' in scale (docs/design.md, "Design notes").

    update_group(w, h, gamma, lam) -> (gamma_new, omega, cov)
        The Laplace / re-weighting update of one group (members w, curvatures h).

    HardPrior(model, lam, group_of=None, parent=None, inflow=None)
        The hierarchical ARD state of all switches: penalty() (the term to add to the loss) or
        proximal_step(lr) (the same penalty as a group soft-threshold after each optimiser step),
        update(curv), prune(threshold), table(), state_dict(), load_state_dict(). Build it after the
        model has moved to its device.

    ProxAdam(prior, lr)
        Adam for the switches with the prior's penalty as a proximal step of the same per-switch size:
        groups the loss does not hold up reach exactly 0 within an epoch (see the class).

The update (per group g with members c, prior variance gamma, temperature lam):

    C_c    = 1 / (1/gamma + h_c/lam)                 posterior variance of member c
    omega² = sum_c h_c / (lam + gamma h_c)           re-weighting of the group-l1 penalty
    gamma  = ||w_g||_2 / omega

or, with update(curv, rule='evidence'), gamma maximises the Laplace evidence of the group,
prod_c N(w_c; 0, gamma + lam / h_c) (type-II maximum likelihood, as in ARD/sparse Bayesian learning;
see _evidence): a one-member group keeps gamma = w^2 - lam/h when h w^2 > lam and goes to 0 otherwise,
so the curvature takes part in every pruning decision; omega and C then follow from that gamma.

then the HARD couplings (a child's variance cannot exceed its parent's; an edge's cannot exceed the
variance flowing into the node it leaves): gamma_child <- 1/(1/gamma_child + 1/gamma_parent).
prune(threshold) removes every group whose coupled gamma is 0 or below the threshold.

Numerical floors: omega is floored at OMEGA_FLOOR, so a group whose members have zero curvature (the
loss does not depend on them) gets a huge but finite gamma = ||w||/OMEGA_FLOOR when w != 0, and exactly
0 when w = 0. Covariances use the form gamma*lam/(lam + gamma*h), finite for gamma = 0 and h = 0.
Curvatures are clamped at 0 (all three estimators are non-negative up to rounding).
"""
import math
from collections import defaultdict, deque

import torch
import torch.nn as nn
import torch.nn.functional as F

OMEGA_FLOOR = 1e-12
RULES = ('reweight', 'evidence')


# ----------------------------------------------------------------------------------------------------
# Switch
# ----------------------------------------------------------------------------------------------------

class Switch(nn.Module):
    """y = s * x with a learnable scale s that broadcasts over x; entries can be pruned (frozen at 0).

    Switch.mask_version grows whenever some switch's mask may have changed (prune_, load_state_dict),
    so a caller that skips pruned work can cache what it skips instead of reading masks back from the
    device on every forward pass. Change masks through prune_ (or a state dict), not in place."""

    mask_version = 0

    def __init__(self, shape=(), init=1.0):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.s = nn.Parameter(torch.full(shape, float(init)))
        self.register_buffer('mask', torch.ones(shape))
        self.register_load_state_dict_post_hook(lambda module, keys: Switch._masks_changed())

    @staticmethod
    def _masks_changed():
        Switch.mask_version += 1

    @property
    def pruned(self):
        """True when every entry is pruned: the caller may skip what this switch scales."""
        return bool((self.mask == 0).all())

    def value(self):
        return self.s * self.mask

    def prune_(self, where):
        """Zero and freeze the entries where `where` (bool, shaped like s) is True."""
        with torch.no_grad():
            self.mask[where] = 0
            self.s[where] = 0
        Switch._masks_changed()

    def forward(self, x):
        return x * self.value()


def _switches(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Switch)]


def switch_parameters(model):
    """The switches' scales, in module order: what the proximal optimiser (ProxAdam) trains."""
    return [m.s for _, m in _switches(model)]


def weight_parameters(model):
    """Every parameter of model but the switches' scales."""
    switches = {id(p) for p in switch_parameters(model)}
    return [p for p in model.parameters() if id(p) not in switches]


# ----------------------------------------------------------------------------------------------------
# Curvature: entry point
# ----------------------------------------------------------------------------------------------------

METHODS = ('ggn', 'fisher', 'recursive')


def switch_curvature(model, batches, method='fisher'):
    """Diagonal curvature of the mean cross-entropy w.r.t. every Switch entry (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown curvature method {method!r}; choose one of {', '.join(METHODS)}")
    switches = _switches(model)
    total = {name: torch.zeros_like(sw.s, dtype=torch.float64) for name, sw in switches}
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    model.eval()
    n = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(device, non_blocking=True)
            sums = _ESTIMATORS[method](model, switches, x)
            for name, value in sums.items():
                total[name] += value.double()
            n += x.shape[0]
    finally:
        for m, mode in modes.items():
            m.train(mode)
    if n == 0:
        raise ValueError('switch_curvature needs at least one sample')
    return {name: (t / n).clamp_min(0).to(sw.s.dtype) for (name, sw), t in zip(switches, total.values())}


# ----------------------------------------------------------------------------------------------------
# 'ggn' and 'fisher': per-sample switch gradients
# ----------------------------------------------------------------------------------------------------
# A scalar switch's per-sample gradient is cheap: give each switch a per-sample copy of s (a leaf of
# shape (N, *s.shape), broadcast over the sample's own tensor), and one backward pass yields all the
# per-sample gradients at once - no per-sample autograd.

class _PerSample:
    """Patches every Switch to use per-sample copies of s for the duration of a `with` block."""

    def __init__(self, switches, batch_size):
        self.switches, self.n = switches, batch_size
        self.leaves = {name: [] for name, _ in switches}

    def __enter__(self):
        for name, sw in self.switches:
            sw.forward = self._forward(name, sw)
        return self

    def __exit__(self, *exc):
        for _, sw in self.switches:
            del sw.forward

    def _forward(self, name, sw):
        def forward(x):
            leaf = sw.value().detach().expand(self.n, *sw.s.shape).clone().requires_grad_()
            self.leaves[name].append(leaf)
            view = leaf.reshape((self.n,) + (1,) * (x.dim() - 1 - sw.s.dim()) + tuple(sw.s.shape))
            return x * view
        return forward

    def grads(self, out, grad_out, retain):
        """Per-sample gradients (N, *s.shape) of <out, grad_out> for every switch that was called."""
        called = [(name, leaves) for name, leaves in self.leaves.items() if leaves]
        flat = [leaf for _, leaves in called for leaf in leaves]
        g = torch.autograd.grad(out, flat, grad_out, retain_graph=retain, allow_unused=True)
        result, i = {}, 0
        for name, leaves in called:       # a switch called several times sums its calls' gradients
            parts = [t if t is not None else torch.zeros_like(leaf) for t, leaf in zip(g[i:i + len(leaves)], leaves)]
            result[name] = sum(parts)
            i += len(leaves)
        return result


def _softmax(logits):
    # At least fp32 (logits may come out of bf16 layers); fp64 models keep fp64 throughout.
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return torch.softmax(logits.detach().to(dtype), dim=1).to(logits.dtype)


def _ggn(model, switches, x):
    # Hessian of softmax cross-entropy w.r.t. logits: diag(p) - pp^T = sum_c q_c q_c^T with
    # q_c = sqrt(p_c) (e_c - p). Seeding the backward pass with q_c gives J^T q_c per sample; the GGN
    # diagonal is the sum over c of its squares.
    with _PerSample(switches, x.shape[0]) as ps:
        logits = model(x)
        if not ps.leaves or not any(ps.leaves.values()):
            return {}
        p = _softmax(logits)
        k = p.shape[1]
        sums = defaultdict(float)
        eye = torch.eye(k, dtype=p.dtype, device=p.device)
        for c in range(k):
            q = p[:, c:c + 1].sqrt() * (eye[c] - p)
            for name, g in ps.grads(logits, q, retain=c < k - 1).items():
                sums[name] = sums[name] + g.square().sum(0)
    return dict(sums)


def _fisher(model, switches, x):
    with _PerSample(switches, x.shape[0]) as ps:
        logits = model(x)
        if not any(ps.leaves.values()):
            return {}
        p = _softmax(logits)
        y = torch.multinomial(p.float(), 1).squeeze(1)
        # d CE_n / d logits_n = p_n - e_{y_n}; seeding with it gives each sample's own gradient.
        seed = (p - F.one_hot(y, p.shape[1]).to(p.dtype)).to(logits.dtype)
        return {name: g.square().sum(0) for name, g in ps.grads(logits, seed, retain=False).items()}


# ----------------------------------------------------------------------------------------------------
# 'recursive': one backward pass through the squared twin of the network
# ----------------------------------------------------------------------------------------------------
# For a layer y = A x (A fixed at the current input: conv, linear, eval BN, pooling, the ReLU mask,
# max-pool routing) the recursion is P_x = (A∘A)^T P_y, and a switch y = s·o gets curvature
# sum(o² ⊙ P_y) and passes P_o = s² P_y. If every leaf module is replaced by its squared map u -> (A∘A) u
# and the model's own forward is re-run on u, then the backward pass of that "twin" computes exactly
# (A∘A)^T applied layer by layer, and autograd does the bookkeeping of the model's glue code: fan-out
# sums the P it gets back, sums pass P to both operands, concatenations split it. A switch's twin is
# u -> s² u + tau ⊙ o², with tau = 0 a leaf whose gradient is the switch's curvature.
#
# Pass 1 (no grad) records what the twin needs from the real activations: ReLU masks, max-pool
# arg-max indices, switch inputs o². Pass 2 runs the twin on u = 0 (the twin is linear in u and tau, so
# only tau matters). Both passes call the leaves in the same order (eval mode, fixed function), so the
# recordings are consumed first-in first-out.


def _bn_scale(m):
    if m.running_var is None:
        raise TypeError(f'{type(m).__name__} without running statistics is not a fixed per-sample map '
                        f'in eval mode; the recursive curvature needs track_running_stats=True')
    scale = torch.rsqrt(m.running_var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight
    return scale.detach()


def _bn_twin(m, u, rec):
    scale2 = _bn_scale(m).square()
    return u * scale2.reshape((1, -1) + (1,) * (u.dim() - 2))


def _maxpool_record(m, x):
    _, idx = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
    return idx


def _maxpool_twin(m, u, idx):
    n, c = u.shape[:2]
    return u.reshape(n, c, -1).gather(2, idx.reshape(n, c, -1)).reshape(idx.shape)


def _avgpool_twin(m, u, rec):
    # avg_pool's coefficients are 1/d (d = divisor of each window); squared: avg_pool(u) / d.
    if m.divisor_override:
        return F.avg_pool2d(u, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                            m.divisor_override) / m.divisor_override
    out = F.avg_pool2d(u, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
    return out / _pool_divisor(m, u.shape[-2:], u)


def _pool_divisor(m, hw, like):
    """The divisor avg_pool2d uses at each output position (window size, or its in-image part)."""
    if m.count_include_pad:
        if m.ceil_mode:     # windows overhanging the padded image have smaller divisors: not handled
            raise TypeError('recursive curvature: AvgPool2d with count_include_pad=True and '
                            'ceil_mode=True is not supported')
        kh, kw = (m.kernel_size, m.kernel_size) if isinstance(m.kernel_size, int) else m.kernel_size
        return kh * kw
    # Without count_include_pad the divisor is the number of in-image elements of each window.
    ones = torch.ones((1, 1) + tuple(hw), dtype=like.dtype, device=like.device)
    return F.avg_pool2d(ones, m.kernel_size, m.stride, m.padding, m.ceil_mode, True, 1)


def _adaptive_avg_twin(m, u, rec):
    out = F.adaptive_avg_pool2d(u, m.output_size)
    h, w = u.shape[-2:]
    oh, ow = out.shape[-2:]
    return out / (_adaptive_sizes(h, oh, u)[:, None] * _adaptive_sizes(w, ow, u)[None, :])


def _adaptive_sizes(size, out, like):
    i = torch.arange(out, device=like.device)
    start = torch.div(i * size, out, rounding_mode='floor')
    end = torch.div((i + 1) * size + out - 1, out, rounding_mode='floor')
    return (end - start).to(like.dtype)


def _check_zero_padding(m):
    if getattr(m, 'padding_mode', 'zeros') != 'zeros':
        raise TypeError(f'{type(m).__name__} with padding_mode={m.padding_mode!r} is not supported '
                        f'by the recursive curvature (only zero padding)')


def _conv_twin(m, u, rec):
    _check_zero_padding(m)
    return F.conv2d(u, m.weight.detach().square(), None, m.stride, m.padding, m.dilation, m.groups)


def _linear_twin(m, u, rec):
    return F.linear(u, m.weight.detach().square())


def _relu_record(m, x):
    return x > 0


def _relu_twin(m, u, mask):
    return u * mask


def _self_twin(m, u, rec):
    return m.__class__.forward(m, u)


def _switch_record(m, x):
    return x.detach().square()


# leaf type -> (what pass 1 records from the leaf's input, or None; the squared map u -> (A∘A) u)
_TWINS = {
    nn.Conv2d: (None, _conv_twin),
    nn.Linear: (None, _linear_twin),
    nn.BatchNorm1d: (None, _bn_twin),
    nn.BatchNorm2d: (None, _bn_twin),
    nn.ReLU: (_relu_record, _relu_twin),
    nn.MaxPool2d: (_maxpool_record, _maxpool_twin),
    nn.AvgPool2d: (None, _avgpool_twin),
    nn.AdaptiveAvgPool2d: (None, _adaptive_avg_twin),
    nn.ZeroPad2d: (None, _self_twin),
    nn.Identity: (None, _self_twin),
    nn.Flatten: (None, _self_twin),
    nn.Dropout: (None, _self_twin),     # identity in eval mode
}


def register_twin(cls, twin, record=None):
    """Teach the recursion a new leaf type: twin(module, u, recorded) -> (A∘A) u, where `recorded` is
    what record(module, input) returned in the ordinary forward pass (None when record is None)."""
    _TWINS[cls] = (record, twin)


def _twin_of(m):
    if isinstance(m, Switch):
        return _switch_record, None
    if getattr(type(m), 'twin_is_self', False):
        return None, _self_twin
    for cls in type(m).__mro__:
        if cls in _TWINS:
            return _TWINS[cls]
    raise TypeError(f'recursive curvature: unsupported leaf module {type(m).__name__}; '
                    f'use supported layers or hessian.register_twin({type(m).__name__}, ...)')


def _leaves(model):
    leaves = []
    for name, m in model.named_modules():
        if isinstance(m, Switch) or not any(True for _ in m.children()):
            leaves.append(m)
        elif any(True for _ in m.parameters(recurse=False)):
            raise TypeError(f'recursive curvature: module {name or type(m).__name__} '
                            f'({type(m).__name__}) has children and parameters of its own; the '
                            f'recursion only sees leaf modules')
    return leaves


def _recursive(model, switches, x):
    leaves = [(m,) + _twin_of(m) for m in _leaves(model)]
    records = {m: deque() for m, record, _ in leaves if record is not None}

    # Pass 1: the ordinary forward, recording masks, indices and switch inputs.
    handles = [m.register_forward_pre_hook(lambda mod, inp, rec=record: records[mod].append(rec(mod, inp[0])))
               for m, record, _ in leaves if record is not None]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    p = _softmax(logits)
    seed = p * (1 - p)                  # diagonal of the softmax cross-entropy Hessian

    # Pass 2: the squared twin on u = 0, switches adding tau ⊙ o².
    taus = {sw: torch.zeros_like(sw.s, requires_grad=True) for _, sw in switches}
    for m, record, twin in leaves:
        m.forward = _patched(m, twin, records.get(m), taus)
    try:
        with torch.enable_grad():
            u_logits = model(torch.zeros_like(x))
            if not u_logits.requires_grad:          # no switch was called: nothing to measure
                return {}
            grads = torch.autograd.grad(u_logits, list(taus.values()), seed, allow_unused=True)
    finally:
        for m, _, _ in leaves:
            del m.forward
    return {name: (g if g is not None else torch.zeros_like(sw.s))
            for (name, sw), g in zip(switches, grads)}


def _patched(m, twin, queue, taus):
    if isinstance(m, Switch):
        tau = taus[m]

        def forward(u):
            return u * m.value().detach().square() + tau * queue.popleft()
        return forward

    def forward(u):
        return twin(m, u, queue.popleft() if queue is not None else None)
    return forward


_ESTIMATORS = {'ggn': _ggn, 'fisher': _fisher, 'recursive': _recursive}


# ----------------------------------------------------------------------------------------------------
# The Laplace / re-weighting update
# ----------------------------------------------------------------------------------------------------

def group_sum(values, gid, n_groups):
    """Sums over the last dimension by group: out[..., g] = sum of values[..., i] with gid[i] == g."""
    return values.new_zeros(values.shape[:-1] + (n_groups,)).index_add(values.dim() - 1, gid, values)


def _update(w, h, gamma_m, lam_m, gid, n_groups):
    """Vectorised update of all groups: members w, h (flat), their group's gamma and lam, group ids."""
    h = h.clamp_min(0)
    cov = gamma_m * lam_m / (lam_m + gamma_m * h)
    omega = group_sum(h / (lam_m + gamma_m * h), gid, n_groups).sqrt().clamp_min(OMEGA_FLOOR)
    norm = group_sum(w * w, gid, n_groups).sqrt()
    return norm / omega, omega, cov


def _evidence(w, h, lam_m, gid, n_groups, grid=48, steps=40):
    """Type-II maximum likelihood gamma of every group under the Laplace approximation.

    Each member's tempered likelihood is taken as a Gaussian around its trained value w_c with
    precision h_c / lam, so the evidence of gamma is prod_c N(w_c; 0, gamma + v_c), v_c = lam / h_c.
    It is largest at some gamma in [0, max_c w_c^2] (its slope is negative beyond). For one member it
    is gamma = max(0, w^2 - v): the group is pruned (gamma = 0) when h w^2 <= lam, i.e. when the loss
    the switch is worth lies within the temperature. Several members (tied cells) can make it
    multimodal, so the maximum is located on a log grid (and at 0), then refined by bisection of the
    slope; all groups at once.

    h w^2 is unchanged when a switch is rescaled along a direction the loss does not see (w -> a w,
    h -> h / a^2), so the decision does not depend on where along such a direction training ended.
    A member with h = 0 tells nothing about gamma (v = inf) and adds nothing."""
    h = h.clamp_min(0)
    inv_v = h / lam_m                                   # 1 / v_c, 0 where the loss ignores the member
    w2 = w * w

    def log_evidence(gamma):                            # gamma: (..., n_groups); up to a constant
        a = inv_v / (1 + gamma[..., gid] * inv_v)       # 1 / (gamma + v), finite for v = inf
        return group_sum(torch.log(a.clamp_min(1e-300)) * (inv_v > 0) - w2 * a, gid, n_groups)

    def slope(gamma):
        a = inv_v / (1 + gamma[..., gid] * inv_v)
        return group_sum(w2 * a * a - a, gid, n_groups)

    top = torch.zeros(n_groups, dtype=w.dtype, device=w.device).scatter_reduce_(0, gid, w2, 'amax')
    frac = torch.logspace(-9, 0, grid, dtype=w.dtype, device=w.device)
    points = torch.cat([torch.zeros(1, n_groups, dtype=w.dtype, device=w.device), frac[:, None] * top], 0)
    best = log_evidence(points).argmax(0)               # (n_groups,), 0 means gamma = 0
    cols = torch.arange(n_groups, device=w.device)
    lo = points[(best - 1).clamp_min(0), cols]
    hi = points[(best + 1).clamp_max(grid), cols]
    for _ in range(steps):
        mid = (lo + hi) / 2
        up = slope(mid) > 0
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    refined = (lo + hi) / 2
    keep = (best > 0) & (log_evidence(refined) >= log_evidence(torch.zeros_like(refined)))
    return torch.where(keep, refined, torch.zeros_like(refined))


def update_group(w, h, gamma, lam):
    """One group's update: returns (gamma_new, omega, cov) (see the module docstring)."""
    w, h = torch.as_tensor(w).flatten(), torch.as_tensor(h).flatten().to(torch.as_tensor(w).dtype)
    gamma_m = torch.as_tensor(gamma, dtype=w.dtype).expand_as(w)
    lam_m = torch.as_tensor(lam, dtype=w.dtype).expand_as(w)
    gid = torch.zeros_like(w, dtype=torch.long)
    gamma_new, omega, cov = _update(w, h, gamma_m, lam_m, gid, 1)
    return gamma_new[0], omega[0], cov


def couple(a, b):
    """Effective variance of two variances in series: 1/(1/a + 1/b), 0 when either is 0."""
    s = a + b
    return torch.where(s > 0, a * b / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))


# ----------------------------------------------------------------------------------------------------
# HARD prior state
# ----------------------------------------------------------------------------------------------------

class HardPrior:
    """Hierarchical ARD prior over the switches of a model.

    model     every Switch in model.named_modules() with a group key is managed.
    lam       temperature lambda: a float, or a callable key -> float.
    group_of  callable switch name -> group key (str), or None to leave the switch out. Default: the
              name. A switch with several entries gives one group per entry, keyed f'{key}[{i}]'.
              Switches with the same key are the members of one group (positions tied across cells).
    parent    {child key: parent key}: a child's effective variance never exceeds its parent's.
    inflow    {edge key: [keys of the edges entering the edge's source node]}: an edge's variance is
              coupled to the summed effective variance Gamma of the edges into its source node
              (absent or [] for input nodes, Gamma = inf). An edge's contribution to Gamma is its
              coupled variance, capped by the summed variance of its children (ops) when it has any.

    Initial state gamma = 1, omega = 1. update() computes gamma_raw by the Laplace update and gamma by
    the couplings; prune() applies the threshold to gamma and the structural dependency.
    """

    def __init__(self, model, lam, group_of=None, parent=None, inflow=None):
        group_of = group_of or (lambda name: name)
        self.parent = dict(parent or {})
        self.inflow = {k: list(v) for k, v in (inflow or {}).items() if v}
        self.switches, self.keys, members = [], [], defaultdict(list)
        index, gids = {}, []
        for name, sw in _switches(model):
            key = group_of(name)
            if key is None:
                continue
            numel = sw.s.numel()
            keys = [key] if numel == 1 else [f'{key}[{i}]' for i in range(numel)]
            ids = []
            for i, k in enumerate(keys):
                if k not in index:
                    index[k] = len(self.keys)
                    self.keys.append(k)
                ids.append(index[k])
                members[k].append((name, i))
            self.switches.append((name, sw))
            gids.append(torch.tensor(ids, dtype=torch.long))
        for k in list(self.parent) + [p for p in self.parent.values()] + list(self.inflow):
            if k not in index:
                raise KeyError(f'HardPrior: coupling names unknown group {k!r}')
        self.index, self.members = index, dict(members)
        device = self.switches[0][1].s.device if self.switches else torch.device('cpu')
        self.gid = torch.cat(gids).to(device) if gids else torch.zeros(0, dtype=torch.long)
        g = len(self.keys)
        lam_of = lam if callable(lam) else (lambda key: lam)
        f64 = dict(dtype=torch.float64, device=device)      # few numbers: keep the state exact
        self.lam = torch.tensor([float(lam_of(k)) for k in self.keys], **f64)
        if (self.lam <= 0).any():
            raise ValueError('HardPrior: lambda must be > 0')
        self.gamma = torch.ones(g, **f64)
        self.gamma_raw = torch.ones(g, **f64)
        self.omega = torch.ones(g, **f64)
        self.pruned = torch.zeros(g, dtype=torch.bool, device=device)
        # What derivation needs to revisit the last decision: each group's effective gamma when it
        # was pruned, and the prune() call (1, 2, ...) that pruned it (0: alive).
        self.gamma_at_prune = torch.zeros(g, **f64)
        self.pruned_at = torch.zeros(g, dtype=torch.long, device=device)
        self.rounds = 0
        self.cov = torch.ones(len(self.gid), **f64)
        self.h = torch.zeros(len(self.gid), **f64)
        self.children = defaultdict(list)
        for c, p in self.parent.items():
            self.children[p].append(c)
        self._order = self._topological_order()

    # -- flat views ----------------------------------------------------------------------------------

    def _flat_w(self):
        return torch.cat([sw.value().flatten() for _, sw in self.switches]) if self.switches else self.gamma[:0]

    def norms(self, w=None):
        w = self._flat_w() if w is None else w
        return group_sum(w * w, self.gid, len(self.keys)).sqrt()

    # -- training ------------------------------------------------------------------------------------

    def penalty(self):
        """lam * sum_g omega_g * ||w_g||_2 over unpruned groups (differentiable w.r.t. the switches)."""
        # Raw s, not s * mask: pruned groups weigh 0 below, and one concatenation of the parameters
        # is far fewer kernels than a product per switch (a supernet has hundreds).
        w = torch.cat([sw.s.flatten() for _, sw in self.switches]) if self.switches else self.gamma[:0]
        # sqrt has an infinite derivative at 0: the tiny offset keeps the gradient finite there.
        norm = (group_sum(w * w, self.gid, len(self.keys)) + 1e-24).sqrt()
        weight = torch.where(self.pruned, 0.0, self.lam * self.omega).to(w.dtype)
        return (weight * norm).sum()

    @torch.no_grad()
    def proximal_step(self, lr):
        """Apply the penalty as a proximal step after an optimiser step with learning rate lr:
        w_g <- w_g * max(0, 1 - lr * lam_g * omega_g / ||w_g||) (group soft-thresholding).

        It minimises the same objective as adding penalty() to the loss, but lets a group reach
        exactly 0 (where gamma = ||w|| / omega = 0 prunes it) instead of oscillating around 0.
        lr is a number, or a tensor with one step size per group (as ProxAdam gives)."""
        if not self.switches:
            return
        w = torch.cat([sw.s.flatten() for _, sw in self.switches])
        norm = group_sum(w * w, self.gid, len(self.keys)).sqrt()
        step = (lr * self.lam * self.omega).to(w)
        shrink = (1 - step / norm.clamp_min(1e-30)).clamp_min(0)[self.gid]
        params = [sw.s for _, sw in self.switches]
        # One fused multiply for all switches: a supernet has hundreds of them.
        torch._foreach_mul_(params, [f.view(p.shape) for f, p in zip(shrink.split([p.numel() for p in params]), params)])

    # -- update --------------------------------------------------------------------------------------

    def update(self, curv, rule='reweight'):
        """Update gamma, omega and the posterior variances from curvatures, then the couplings.

        rule 'reweight': gamma = ||w|| / omega with omega from the current gamma (the paper's
        re-weighted group-l1 update, module docstring). rule 'evidence': gamma maximises the Laplace
        evidence of the group (_evidence), then omega and the posterior variances follow from it."""
        if rule not in RULES:
            raise ValueError(f"unknown update rule {rule!r}; choose one of {', '.join(RULES)}")
        with torch.no_grad():
            w = self._flat_w().to(self.gamma.dtype)
            h = torch.cat([curv[name].detach().flatten().to(w) if name in curv else torch.zeros_like(w[:sw.s.numel()])
                           for name, sw in self.switches]) if self.switches else w
            lam_m, n = self.lam[self.gid], len(self.keys)
            if rule == 'evidence':
                gamma = _evidence(w, h, lam_m, self.gid, n)
                _, omega, cov = _update(w, h, gamma[self.gid], lam_m, self.gid, n)
            else:
                gamma, omega, cov = _update(w, h, self.gamma[self.gid], lam_m, self.gid, n)
            gamma[self.pruned] = 0
            self.gamma_raw, self.omega, self.cov, self.h = gamma, omega, cov, h.clamp_min(0)
            self.gamma = self._couple(gamma.clone())

    def _topological_order(self):
        """Keys in an order where parents and inflow edges (with their children) come first."""
        deps = defaultdict(set)
        for c, p in self.parent.items():
            deps[c].add(p)
        for e, ins in self.inflow.items():
            for i in ins:
                deps[e].add(i)
                deps[e].update(self.children.get(i, ()))
        order, state = [], {}

        def visit(k):
            if state.get(k) == 2:
                return
            if state.get(k) == 1:
                raise ValueError(f'HardPrior: couplings form a cycle through {k!r}')
            state[k] = 1
            for d in deps.get(k, ()):
                visit(d)
            state[k] = 2
            order.append(k)

        for k in list(self.parent) + list(self.inflow) + [p for p in self.parent.values()]:
            visit(k)
        return order

    def _edge_flow(self, gamma, key):
        """What an edge contributes to Gamma of the node it enters."""
        i = self.index[key]
        kids = self.children.get(key)
        if not kids:
            return gamma[i]
        return torch.minimum(gamma[i], sum(gamma[self.index[c]] for c in kids))

    def _couple(self, gamma):
        for key in self._order:
            i = self.index[key]
            if key in self.inflow:
                big_gamma = sum(self._edge_flow(gamma, e) for e in self.inflow[key])
                gamma[i] = couple(gamma[i], big_gamma)
            if key in self.parent:
                gamma[i] = couple(gamma[i], gamma[self.index[self.parent[key]]])
        return gamma

    # -- pruning -------------------------------------------------------------------------------------

    def prune(self, threshold):
        """Prune groups whose effective gamma < threshold or is 0 (a prior variance of 0 holds the
        switch at 0), then everything that depends on a pruned group: children of pruned parents,
        edges all of whose children are pruned, and outgoing edges of nodes whose incoming edges are
        all pruned. Returns the keys newly pruned."""
        before = self.pruned.clone()
        dead = self.pruned | (self.gamma < threshold) | (self.gamma == 0)
        for key in self._order:
            i = self.index[key]
            if key in self.inflow and all(dead[self.index[e]] for e in self.inflow[key]):
                dead[i] = True
            if key in self.parent and dead[self.index[self.parent[key]]]:
                dead[i] = True
            kids = self.children.get(key)
            if kids and all(dead[self.index[c]] for c in kids):
                dead[i] = True
        # An edge killed because its children died must take its children with it (and vice versa).
        for key in self._order:
            if key in self.parent and dead[self.index[self.parent[key]]]:
                dead[self.index[key]] = True
        newly = dead & ~before
        self.gamma_at_prune = torch.where(newly, self.gamma, self.gamma_at_prune)
        self.rounds += 1
        self.pruned_at = torch.where(newly, torch.full_like(self.pruned_at, self.rounds), self.pruned_at)
        self.pruned = dead
        self.gamma = torch.where(dead, torch.zeros_like(self.gamma), self.gamma)
        member_dead = dead[self.gid]
        start = 0
        for _, sw in self.switches:
            n = sw.s.numel()
            where = member_dead[start:start + n].reshape(sw.s.shape).to(sw.s.device)
            if where.any():
                sw.prune_(where)
            start += n
        return [k for k, b, a in zip(self.keys, before.tolist(), dead.tolist()) if a and not b]

    # -- reporting and checkpoints -------------------------------------------------------------------

    def table(self):
        """One row per group: key, gamma (effective), gamma_raw, omega, norm, curvature (mean over
        members), curvatures (each member's, in the order of members), cov (posterior variance,
        mean), lam, pruned, gamma_at_prune (the effective gamma when it was pruned; gamma while
        alive), pruned_at (the prune() call that pruned it, None while alive), members [(switch
        name, flat index)]."""
        with torch.no_grad():
            norm = self.norms()
        n = group_sum(torch.ones_like(self.h), self.gid, len(self.keys)).clamp_min(1)
        h_mean = group_sum(self.h.to(n), self.gid, len(self.keys)) / n
        cov_mean = group_sum(self.cov.to(n), self.gid, len(self.keys)) / n
        member_h = defaultdict(list)
        for g, h in zip(self.gid.tolist(), self.h.tolist()):
            member_h[g].append(h)
        rows = []
        for i, key in enumerate(self.keys):
            rows.append(dict(key=key, gamma=float(self.gamma[i]), gamma_raw=float(self.gamma_raw[i]),
                             omega=float(self.omega[i]), norm=float(norm[i]), curvature=float(h_mean[i]),
                             curvatures=member_h[i],
                             cov=float(cov_mean[i]), lam=float(self.lam[i]), pruned=bool(self.pruned[i]),
                             gamma_at_prune=float(self.gamma_at_prune[i] if self.pruned[i] else self.gamma[i]),
                             pruned_at=int(self.pruned_at[i]) if self.pruned[i] else None,
                             members=[list(m) for m in self.members[key]]))
        return rows

    def state_dict(self):
        return dict(keys=list(self.keys), gamma=self.gamma.clone(), gamma_raw=self.gamma_raw.clone(),
                    omega=self.omega.clone(), pruned=self.pruned.clone(), cov=self.cov.clone(),
                    h=self.h.clone(), lam=self.lam.clone(), gamma_at_prune=self.gamma_at_prune.clone(),
                    pruned_at=self.pruned_at.clone(), rounds=self.rounds)

    def load_state_dict(self, state):
        if list(state['keys']) != self.keys:
            raise ValueError('HardPrior state does not match this model: its switch groups differ')
        for k in ('gamma', 'gamma_raw', 'omega', 'pruned', 'cov', 'h', 'lam', 'gamma_at_prune', 'pruned_at'):
            setattr(self, k, state[k].clone().to(getattr(self, k).device))
        self.rounds = state['rounds']



# ----------------------------------------------------------------------------------------------------
# Training the switches: proximal Adam
# ----------------------------------------------------------------------------------------------------

class ProxAdam:
    """Adam on the loss for the switches of a HardPrior, then the prior's penalty as a group
    soft-threshold (HardPrior.proximal_step) with the same per-entry step size lr / (sqrt(v) + eps).

    One step size per switch for both parts makes this a diagonally preconditioned proximal gradient
    method: a group stops where ||d loss / d w_g|| = lam * omega_g, or at exactly 0 when the loss pulls
    it less than that, whatever its step size; the step sizes set the speed, not the result. That is
    what lets one epoch decide: how strongly the loss depends on a switch spans orders of magnitude
    (an op deep in a reduction cell, an input pixel, a neuron of the last hidden layer), and one plain
    SGD rate either leaves the weak switches where they started or makes the strong ones diverge.
    The switches get no weight decay: the prior is their regulariser. A group's step size is the
    smallest of its members' (tied switches), and pruned entries stay at 0.

    Usage: loss.backward(); opt.step() after the weights' own optimiser step; zero_grad() as usual.
    All switch entries are updated by a handful of fused operations, however many switches there are."""

    def __init__(self, prior, lr, betas=(0.9, 0.999), eps=1e-8):
        self.prior, self.lr, self.betas, self.eps = prior, lr, betas, eps
        self.params = [sw.s for _, sw in prior.switches]
        self.masks = [sw.mask for _, sw in prior.switches]
        self.sizes = [p.numel() for p in self.params]
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        if not self.params:
            return
        b1, b2 = self.betas
        self.t += 1
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        torch._foreach_lerp_(self.m, grads, 1 - b1)                  # m <- b1 m + (1 - b1) g
        torch._foreach_mul_(self.v, b2)
        torch._foreach_addcmul_(self.v, grads, grads, value=1 - b2)   # v <- b2 v + (1 - b2) g^2
        m = torch.cat([x.flatten() for x in self.m]) / (1 - b1 ** self.t)
        v = torch.cat([x.flatten() for x in self.v]) / (1 - b2 ** self.t)
        size = self.lr / (v.sqrt() + self.eps)
        torch._foreach_sub_(self.params, self._views(size * m))
        torch._foreach_mul_(self.params, self.masks)                  # pruned entries stay at 0
        prior = self.prior
        group = torch.full((len(prior.keys),), math.inf, dtype=torch.float64, device=size.device)
        group.scatter_reduce_(0, prior.gid.to(size.device), size.double(), 'amin')
        prior.proximal_step(group.to(prior.omega.device))

    def _views(self, flat):
        return [part.view(p.shape) for part, p in zip(flat.split(self.sizes), self.params)]

    def state_dict(self):
        return dict(t=self.t, m=[x.clone() for x in self.m], v=[x.clone() for x in self.v])

    def load_state_dict(self, state):
        if len(state['m']) != len(self.m):
            raise ValueError('ProxAdam state does not match these switches')
        self.t = state['t']
        for mine, saved in zip(self.m + self.v, state['m'] + state['v']):
            mine.copy_(saved)
