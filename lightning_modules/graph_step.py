"""What a training step traced as one graph is made of (gan.compile=graph): gradients from
torch.autograd.grad instead of .backward() (no .grad to set, no requires_grad to switch), Adam
applied to torch.optim's own state by plain tensor arithmetic, and the compile itself:
fullgraph=True (a graph break is an error), static shapes, on CUDA captured as CUDA graphs.

A module's procedure is one function that its eager path and its captured path share, so the
two are compared step for step (tests/test_graph_step.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def trainable(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's parameters that require grad, in its order."""
    return [p for group in opt.param_groups for p in group["params"] if p.requires_grad]


@torch.no_grad()
def adam_step(opt: torch.optim.Optimizer, grads: Sequence[torch.Tensor]) -> None:
    """One step of `opt` (torch.optim.Adam or AdamW) with `grads` (one per `trainable(opt)`), on
    the optimizer's own state: Adam's arithmetic in its capturable form (the bias corrections
    from the step count as a tensor: no host read), so a traced graph holds it. The state stays
    Adam's (checkpoints, resume and the eager path read it); `adam_state` makes it first."""
    grads = iter(grads)
    for group in opt.param_groups:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        wd, decoupled = group["weight_decay"], group.get("decoupled_weight_decay", False)
        for p in [p for p in group["params"] if p.requires_grad]:
            g, state = next(grads), opt.state[p]
            if wd and decoupled:  # AdamW
                p.mul_(1 - lr * wd)
            elif wd:
                g = g.add(p, alpha=wd)
            step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
            step += 1
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / (1 - beta2**step).sqrt()).add_(eps)
            p.sub_(lr / (1 - beta1**step) * m / denom)


def adam_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """torch.optim.Adam's per-parameter state, made where Adam has not made it yet (as its lazy
    init does, the step count on the parameter's device as with capturable=True); returns the
    state's tensors (and a learning rate held as a tensor). Adam or AdamW without amsgrad or
    maximize: what adam_step computes."""
    from xfergan.errors import UserError

    if not isinstance(opt, torch.optim.Adam):
        raise UserError(f"a graph step applies Adam or AdamW, not {type(opt).__name__}")
    tensors = []
    for group in opt.param_groups:
        if group["amsgrad"] or group["maximize"]:
            raise UserError("a graph step applies Adam or AdamW without amsgrad or maximize")
        params = [p for p in group["params"] if p.requires_grad]
        if isinstance(group["lr"], torch.Tensor) and params:  # on the device (a resumed state
            group["lr"] = group["lr"].to(params[0].device)  # loads it on the CPU)
            tensors.append(group["lr"])
        for p in params:
            state = opt.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            tensors += [state["step"], state["exp_avg"], state["exp_avg_sq"]]
    return tensors


def compile_whole(
    fn: Callable, module: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]
) -> Callable:
    """`fn` (a step of `module` that steps `optimizers` with adam_step) compiled whole:
    fullgraph=True, static shapes (a batch of another size is a graph of its own). On CUDA as
    CUDA graphs (mode="reduce-overhead"), which replay on fixed memory: the module's weights and
    buffers and the optimizers' state (made here where Adam has not made it yet) are marked
    static. Dynamo traces torch.autograd.grad with its trace_autograd_ops, set around each call
    (torch >= 2.11)."""
    state = [t for opt in optimizers for t in adam_state(opt)]
    cuda = next(module.parameters()).device.type == "cuda"
    if cuda:
        for t in [*state, *module.parameters(), *module.buffers()]:
            torch._dynamo.mark_static_address(t)
    mode = {"mode": "reduce-overhead"} if cuda else {}
    step = torch.compile(fn, fullgraph=True, dynamic=False, **mode)
    return torch._dynamo.config.patch(trace_autograd_ops=True)(step)


def check_trainer(trainer, setting: str, instead: str) -> None:
    """A step that runs autograd and the optimizer itself (no strategy hooks, no loss scaling,
    no clipping) refuses, in one line, what it would silently skip: several devices, fp16 loss
    scaling, gradient clipping; a graph step also an older torch."""
    from xfergan.errors import UserError

    if setting.endswith("=graph") and not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        raise UserError(
            f"{setting} needs torch >= 2.11 (this is {torch.__version__}: Dynamo cannot trace "
            f"autograd.grad); use {instead}"
        )
    if trainer is None:
        return
    if trainer.world_size > 1:
        raise UserError(f"{setting} trains on one device; with several use {instead}")
    if "16-mixed" == str(trainer.precision):
        raise UserError(
            f"{setting} has no fp16 loss scaling; use trainer.precision=bf16-mixed or 32-true"
        )
    if getattr(trainer, "gradient_clip_val", None):
        raise UserError(f"{setting} has no gradient clipping; set trainer.gradient_clip_val=null")
