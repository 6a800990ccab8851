"""Host reads inside a training step: each one (`.item()`, `float(t)`, `if t:`, `torch.unique`,
boolean masks...) makes the CPU wait for the accelerator, so the next step's kernels cannot be
queued while this one runs. `HostReads` counts them where they happen, on any device (a test on
the CPU sees the same calls a GPU run would make)."""

from __future__ import annotations

import collections
import traceback

from torch.overrides import TorchFunctionMode

# calls that read a tensor's values on the host, or whose output size depends on them
_READS = {
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "unique",
    "_unique2",
    "nonzero",
    "masked_select",
    "any",
    "all",
    "bincount",  # a GPU reads the input's maximum back to size its output
}


# torch keeps an optimizer's `step` counters on the host (unless capturable or fused), so reading
# them is no device sync
_HOST_SIDE = ("torch/optim/optimizer.py",)


class HostReads(TorchFunctionMode):
    """`with HostReads() as r: step()`; then `r.count` and `r.where` ({(call, file:line): n})."""

    def __init__(self, ignore: tuple[str, ...] = _HOST_SIDE):
        super().__init__()
        self.ignore = ignore
        self.where: collections.Counter = collections.Counter()

    @property
    def count(self) -> int:
        return sum(self.where.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _READS:
            frame = traceback.extract_stack(limit=2)[0]  # the line that made the call
            if not any(i in frame.filename for i in self.ignore):
                self.where[(name, f"{frame.filename}:{frame.lineno}")] += 1
        return func(*args, **(kwargs or {}))
