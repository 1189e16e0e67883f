"""A dispatch mode that measures the largest tensor any aten op makes (for memory-bounded tests)."""

import torch
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode


class LargestTensor(TorchDispatchMode):
    """Records in ``numel`` the most elements of any tensor an aten op returns, factories such as
    ``eye`` and the ops of a backward included: a bound on it is a bound on what was allocated."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out
