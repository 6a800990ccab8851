"""K networks of one architecture run as one (torch.func.stack_module_state + functional_call +
vmap): each keeps its own parameters and buffers (BatchNorm statistics, spectral norm's u and
v), stacked on a leading dim of size K, and a call maps inputs [K, B, ...] to outputs
[K, B, ...] with one kernel per layer for all K, where K separate networks launch K.

Spectral norm (torch.nn.utils.parametrizations) updates its vectors with `out=` writes, which
vmap cannot batch; the stack computes the same power iteration itself (one step per call in
training mode, as the parametrization does on each access) and hands functional_call the
normalized weight of a copy of the network with the parametrization removed.

Two lowerings of one call, the same arithmetic: `vmap` (one kernel per layer for all K: grouped
convolutions) and `loop` (network k's layers on its own slices, one after another). A GPU step
of these small networks waits on kernel launches, so `auto` takes vmap there; a CPU step waits
on arithmetic, where oneDNN's grouped convolutions are slower than K plain ones (measured on the
2-core CPU, paper_table3_full's G and D, K=4: G's last 3x3 convolution's backward 4x, the whole
step 0.81x of 4 separate steps), so `auto` takes loop there."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state
from torch.nn.utils import parametrize


def _spectral_norms(net: nn.Module) -> dict[str, nn.Module]:
    """{module name: its spectral-norm parametrization} for every spectral-normed weight."""
    out = {}
    for name, m in net.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            plist = m.parametrizations.weight
            if len(plist) != 1 or not hasattr(plist[0], "_u"):
                raise TypeError(f"{name}: only spectral norm is supported as a parametrization")
            out[name] = plist[0]
    return out


def _unparametrize(m: nn.Module) -> None:
    """`m` (a copy) as its plain class with a plain `weight`. Not remove_parametrizations: it
    deletes the property from the parametrized class, which deepcopies share with the original."""
    original = m.parametrizations.weight.original
    del m._modules["parametrizations"]
    m.__class__ = type(m).__bases__[0]
    m.weight = nn.Parameter(original.detach().clone())


def _sn_weight(w, u, v, dim: int, eps: float, iters: int, training: bool):
    """One network's spectral-normed weight (inside vmap); in training, `iters` power-iteration
    steps written into u and v first (torch.nn.utils.parametrizations._SpectralNorm)."""
    mat = w if dim == 0 else w.movedim(dim, 0)
    mat = mat.flatten(1)
    if training:
        with torch.no_grad():
            for _ in range(iters):
                u.copy_(F.normalize(mat @ v, dim=0, eps=eps))
                v.copy_(F.normalize(mat.mH @ u, dim=0, eps=eps))
    # copies, as the parametrization takes: the next call's update must not change what this
    # call's backward needs (D runs on real and fake images before one backward)
    u, v = u.clone(), v.clone()
    sigma = (u * (mat @ v)).sum()
    return w / sigma


class Stacked(nn.Module):
    """`nets` (same class and shapes, each its own values) as one module. Parameters are `p.<i>`
    and buffers `b.<i>` (stacked: [K, ...]); `param_names` and `buffer_names` give their plain
    network's state_dict keys (`unstack`)."""

    LOWERINGS = ("auto", "vmap", "loop")

    def __init__(self, nets: list[nn.Module], lowering: str = "auto"):
        super().__init__()
        if lowering not in self.LOWERINGS:
            raise ValueError(f"lowering must be one of {self.LOWERINGS}, not {lowering!r}")
        self.lowering = lowering
        params, buffers = stack_module_state(nets)
        self.k = len(nets)
        self.param_names = list(params)
        self.buffer_names = list(buffers)
        self.p = nn.ParameterList(
            [
                nn.Parameter(params[n], requires_grad=params[n].requires_grad)
                for n in self.param_names
            ]
        )
        self.b = nn.Module()  # buffers by index (state_dict keys may not hold dots)
        for i, n in enumerate(self.buffer_names):
            self.b.register_buffer(str(i), buffers[n])
        base = copy.deepcopy(nets[0])
        self._sn = {}  # module name -> (dim, eps, n_power_iterations)
        for name, sn in _spectral_norms(base).items():
            self._sn[name] = (sn.dim, sn.eps, sn.n_power_iterations)
            _unparametrize(base.get_submodule(name))
        self._base = [base.to("meta")]  # a template only: every tensor comes from the stack
        self._base[0].train(nets[0].training)
        self.train(nets[0].training)

    def train(self, mode: bool = True):
        super().train(mode)
        self._base[0].train(mode)
        return self

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stacked tensors under the plain network's state_dict names."""
        out = dict(zip(self.param_names, self.p))
        out.update(zip(self.buffer_names, self.b.buffers()))
        return out

    def unstack(self, i: int) -> dict[str, torch.Tensor]:
        """Network i's state_dict (copies)."""
        return {n: t[i].detach().clone() for n, t in self.tensors().items()}

    def _one(self, tensors: dict[str, torch.Tensor], *args):
        """One network's call (inside vmap): spectral norms computed, the rest passed as is."""
        state = dict(tensors)
        for name, (dim, eps, iters) in self._sn.items():
            pre = f"{name}.parametrizations.weight." if name else "parametrizations.weight."
            w = state.pop(pre + "original")
            u, v = state.pop(pre + "0._u"), state.pop(pre + "0._v")
            key = f"{name}.weight" if name else "weight"
            state[key] = _sn_weight(w, u, v, dim, eps, iters, self.training)
        return functional_call(self._base[0], state, args)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """args [K, B, ...] -> outputs [K, B, ...]: network k on args[k]."""
        lowering = self.lowering
        if lowering == "auto":
            lowering = "vmap" if args[0].is_cuda else "loop"
        tensors = self.tensors()
        if lowering == "vmap":
            return torch.vmap(self._one, randomness="error")(tensors, *args)
        # slices are views: BatchNorm's statistics and the power iteration write into the stack
        return torch.stack(
            [
                self._one({n: t[i] for n, t in tensors.items()}, *(a[i] for a in args))
                for i in range(self.k)
            ]
        )


__all__ = ["Stacked"]
