"""BayesNAS switches (work in progress: Switch is final, the rest follows)."""
import torch
import torch.nn as nn


class Switch(nn.Module):
    """y = s * x with a learnable scale s that broadcasts over x; entries can be pruned (frozen at 0)."""

    def __init__(self, shape=(), init=1.0):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.s = nn.Parameter(torch.full(shape, float(init)))
        self.register_buffer('mask', torch.ones(shape))

    @property
    def pruned(self):
        """True when every entry is pruned: the caller may skip what this switch scales."""
        return bool((self.mask == 0).all())

    def value(self):
        return self.s * self.mask

    def forward(self, x):
        return x * self.value()
