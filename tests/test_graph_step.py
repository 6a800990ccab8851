"""gan.compile=graph and model.compile=graph: the GAN's whole step (D steps, G step, both
Adams, the EMA, the step count) and the classifier's training step (forward, backward, AdamW)
as one function of tensors each, traced as one graph (fullgraph=True: a graph break is an
error). On CUDA that graph is replayed as a CUDA graph, which needs a GPU; here the CPU checks
that each function traces whole and equals the eager step. Compiled with the aot_eager backend
(Dynamo's trace and AOTAutograd, no C++ code generation: inductor takes minutes on 2 cores),
which draws random numbers as eager does, so both sides see the same noise, augmentations,
class shuffles and dropout masks."""

from __future__ import annotations

import copy
import csv
import types

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from tasks import run_task
from tests.conftest import FAST, GAN_FAST, compose, small_gan
from xfergan.errors import UserError

_COMPILE = torch.compile  # (tests below replace torch.compile)


def _aot_eager(monkeypatch) -> CompileCounterWithBackend:
    """torch.compile as the module calls it, on the aot_eager backend; counts its graphs."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def compile(f, **kw):
        assert kw.get("fullgraph") is True and kw.get("dynamic") is False, kw
        return _COMPILE(f, backend=counter, fullgraph=True, dynamic=False)

    monkeypatch.setattr(torch, "compile", compile)
    return counter


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding: within 1e-5 of the tensor's largest value (or 1e-4 of each)."""
    return torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5 * b.abs().max().item())


def _train(model, x, y, steps: int):
    torch.manual_seed(1)
    opt_g, opt_d = model.configure_optimizers()
    losses = torch.stack([torch.stack(model.gan_step(x, y, opt_g, opt_d)) for _ in range(steps)])
    return losses, (opt_g, opt_d)


def test_the_graph_step_equals_the_eager_step_eagerly_and_traced_whole(monkeypatch):
    """Four steps from the same weights and the same draws: the eager step (`_update`, Adam,
    update_ema), the graph step's function run eagerly, and the same function compiled with
    fullgraph=True (one graph for all four steps: no break, no recompile) give the same losses,
    G, D, EMA (weights, BatchNorm statistics, spectral norm's vectors), Adam state and counts.
    Two D steps, DiffAugment, mode seeking, minibatch-std; the EMA copies G before
    ema_start_step, copies it at its first average, then averages."""
    torch.manual_seed(0)
    eager = small_gan(3, 28, d_steps=2, ema_start_step=2, ema_decay=0.9)
    x, y = torch.rand(12, 1, 28, 28) * 2 - 1, torch.arange(12) % 3
    graph = copy.deepcopy(eager)
    graph.hparams.compile = "graph"
    traced = copy.deepcopy(graph)
    g0 = copy.deepcopy(eager.G.state_dict())

    ref, ref_opts = _train(eager, x, y, 4)
    monkeypatch.setattr(torch, "compile", lambda f, **kw: f)  # the function itself, eagerly
    runs = {"graph": (graph, *_train(graph, x, y, 4))}
    counter = _aot_eager(monkeypatch)
    runs["traced"] = (traced, *_train(traced, x, y, 4))
    assert counter.frame_count == 1 and counter.op_count > 100, vars(counter)

    assert any(not torch.equal(g0[k], v) for k, v in eager.G.state_dict().items())
    for name, (m, losses, opts) in runs.items():
        assert torch.allclose(losses, ref, rtol=1e-4, atol=1e-5), (name, losses, ref)
        assert m._steps == int(m.steps) == 4 and m._ema_n == int(m.ema.n_averaged) == 3, name
        for k, v in eager.state_dict().items():  # G, D, EMA: weights and buffers, the counts
            assert _close(m.state_dict()[k], v), (name, k)
        for opt, opt_ref in zip(opts, ref_opts):
            for p, p_ref in zip(opt.param_groups[0]["params"], opt_ref.param_groups[0]["params"]):
                for k, v in opt_ref.state[p_ref].items():
                    assert _close(opt.state[p][k], v), (name, k)


def test_the_graph_step_trains_and_resumes_through_the_task_as_the_eager_step(
    tmp_path, monkeypatch
):
    """task=gan with gan.compile=graph (Lightning, CSV logger), stopped after the first of two
    epochs and resumed: each fit runs its steps as one graph, the resumed epoch logs the losses
    of the uninterrupted eager run's second epoch, and ends where that run ends (weights,
    buffers, EMA, Adam state: the state the graph step made is Adam's own)."""
    import tasks.gan
    from tests.test_gan import _StopAfter

    args = FAST + GAN_FAST + ["task=gan", "gan.epochs=2", "dataset.n_per_class=4"]
    args += ["logger=csv", "trainer.log_every_n_steps=1", "gan.eval_n_per_class=0"]
    run_task(compose(args, tmp_path / "eager"))
    graph = args + ["gan.compile=graph"]
    counter = _aot_eager(monkeypatch)
    build = tasks.gan.build_callbacks
    with monkeypatch.context() as m:
        m.setattr(tasks.gan, "build_callbacks", lambda *a: [*build(*a), _StopAfter(1)])
        assert run_task(compose(graph, tmp_path / "graph"))["gan/steps"] == 2
    assert run_task(compose(graph + ["resume=true"], tmp_path / "graph"))["gan/steps"] == 4
    assert counter.frame_count == 2, vars(counter)  # one graph a fit: no break, no recompile

    losses = {}
    for run in ("eager", "graph"):
        rows = list(csv.DictReader(open(tmp_path / run / "csv" / "metrics.csv")))
        losses[run] = torch.tensor(
            [[float(r["gan/loss_d"]), float(r["gan/loss_g"])] for r in rows if r["gan/loss_d"]]
        )
    # the resumed fit's log (its own metrics.csv): the eager run's last two steps
    assert losses["graph"].shape == (2, 2) and losses["eager"].shape == (4, 2)
    assert torch.allclose(losses["graph"], losses["eager"][2:], rtol=1e-4, atol=1e-5), losses
    a, b = (torch.load(tmp_path / r / "checkpoints" / "last.ckpt") for r in ("eager", "graph"))
    assert int(b["state_dict"]["steps"]) == 4
    for k, v in a["state_dict"].items():
        assert _close(b["state_dict"][k], v), k
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        for i, state in opt_a["state"].items():
            for k, v in state.items():
                assert _close(opt_b["state"][i][k].cpu(), v.cpu()), (i, k)


def test_the_graph_step_counts_its_steps_and_checkpoints_while_it_trains_as_the_eager_step(
    tmp_path, monkeypatch
):
    """gan.compile=graph steps the raw optimizers inside its graph, so Lightning never saw a
    step: trainer.global_step stayed 0, ModelCheckpoint (which skips a step it already saved)
    wrote no epoch checkpoint while training, and a run killed mid-way had nothing to resume
    from. Now it counts what the eager step counts (d_steps D steps + one G step a batch), and
    writes the same checkpoints at the same steps."""
    import pytorch_lightning as pl

    import tasks.gan

    seen: dict[str, list[int]] = {}

    class Steps(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            seen.setdefault(str(module.hparams.compile), []).append(trainer.global_step)

    args = FAST + GAN_FAST + ["task=gan", "gan.epochs=3", "dataset.n_per_class=4", "logger=none"]
    args += ["gan.eval_n_per_class=0", "gan.checkpoint_every_n_steps=1", "gan.d_steps=2"]
    build = tasks.gan.build_callbacks
    monkeypatch.setattr(tasks.gan, "build_callbacks", lambda *a: [*build(*a), Steps()])
    run_task(compose(args, tmp_path / "eager"))
    _aot_eager(monkeypatch)
    run_task(compose(args + ["gan.compile=graph"], tmp_path / "graph"))
    assert seen["graph"] == seen["None"] and seen["None"][-1] > 0, seen
    ckpts = {
        run: sorted(p.name for p in (tmp_path / run / "checkpoints").glob("*.ckpt"))
        for run in ("eager", "graph")
    }
    assert ckpts["graph"] == ckpts["eager"] and len(ckpts["eager"]) == 4, ckpts  # 3 + last
    for name in ckpts["eager"]:
        a, b = (torch.load(tmp_path / r / "checkpoints" / name) for r in ("eager", "graph"))
        assert a["global_step"] == b["global_step"], name


def test_the_graph_step_refuses_several_devices_and_fp16_loss_scaling():
    m = small_gan(3, 28, compile="graph")
    m._trainer = types.SimpleNamespace(world_size=2, precision="32-true")
    with pytest.raises(UserError, match="gan.compile=graph trains on one device"):
        m.setup("fit")
    m._trainer = types.SimpleNamespace(world_size=1, precision="16-mixed")
    with pytest.raises(UserError, match="gan.compile=graph has no fp16 loss scaling"):
        m.setup("fit")
    with pytest.raises(UserError, match="gan.compile='graphs'"):
        small_gan(3, 28, compile="graphs")


def _classifier(compile):
    from lightning_modules.classifier import ClassifierModule

    torch.manual_seed(0)
    return ClassifierModule(
        "small_cnn",
        3,
        in_channels=1,
        init="scratch",
        width=8,
        dropout=0.3,
        label_smoothing=0.1,
        scheduler={"name": "none"},
        compile=compile,
    )


def _batch(device):
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 3
    return types.SimpleNamespace(x=x.to(device), y=y.to(device), soft=None, group=None)


def _classifier_steps(m, batch, steps: int):
    """`steps` training steps: Lightning's automatic ones (loss, backward, the optimizer's
    step) or the graph step; the losses, the optimizer and the training metrics."""
    opt = m.configure_optimizers()
    torch.manual_seed(1)
    losses = []
    for _ in range(steps):
        if m.automatic_optimization:
            loss = m._step(batch, "train")
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            loss = m.graph_step(batch, opt)
        losses.append(loss.detach())
    return opt, torch.stack(losses), m.stage_metrics["train_metrics"].compute("t")


def test_the_classifier_graph_step_equals_the_eager_step_eagerly_and_traced_whole(monkeypatch):
    """model.compile=graph: three training steps (small CNN with BatchNorm and dropout, AdamW
    with weight decay) as Lightning's eager step takes them (loss, backward, AdamW.step), as the
    graph step's function run eagerly and compiled with fullgraph=True (one graph): the same
    losses, weights, BatchNorm statistics, AdamW state and training metrics."""
    batch = _batch("cpu")
    runs = {}
    for name in ("eager", "graph", "traced"):
        m = _classifier(False if name == "eager" else "graph")
        if name == "graph":
            monkeypatch.setattr(torch, "compile", lambda f, **kw: f)
        if name == "traced":
            counter = _aot_eager(monkeypatch)
        runs[name] = (m, *_classifier_steps(m, batch, 3))
    assert counter.frame_count == 1 and counter.op_count > 20, vars(counter)

    ref, ref_opt, ref_losses, ref_metrics = runs.pop("eager")
    init = _classifier(False).state_dict()
    assert not torch.equal(ref.state_dict()["net.head.1.weight"], init["net.head.1.weight"])
    for name, (m, opt, losses, metrics) in runs.items():
        assert torch.allclose(losses, ref_losses, rtol=1e-5, atol=1e-6), (name, losses)
        for k, v in ref.state_dict().items():
            assert _close(m.state_dict()[k], v), (name, k)
        for p, p_ref in zip(opt.param_groups[0]["params"], ref_opt.param_groups[0]["params"]):
            for k, v in ref_opt.state[p_ref].items():
                assert _close(opt.state[p][k], v), (name, k)
        assert metrics == pytest.approx(ref_metrics, rel=1e-5), name


def test_the_classifier_graph_step_trains_through_the_task_as_the_eager_step(tmp_path, monkeypatch):
    """task=classify with model.compile=graph (Lightning, manual optimization, the cosine
    schedule filling the learning-rate tensor): three steps in one graph, the same losses and
    the same test accuracy as the eager run's."""
    args = FAST + ["dataset.n_per_class=8", "trainer.max_steps=3", "dataset.batch_size=16"]
    args += ["dataset.val_per_class=2", "trainer.limit_test_batches=1"]  # 1,000 test images
    args += ["logger=csv", "trainer.log_every_n_steps=1"]
    runs = {}
    for mode in ("false", "graph"):
        counter = _aot_eager(monkeypatch)
        m = run_task(compose(args + [f"model.compile={mode}"], tmp_path / mode))
        rows = list(csv.DictReader(open(tmp_path / mode / "csv" / "metrics.csv")))
        losses = torch.tensor([float(r["train/loss_step"]) for r in rows if r["train/loss_step"]])
        runs[mode] = (losses, m)
    assert counter.frame_count == 1, vars(counter)  # the graph run's
    (ref, m_ref), (losses, m) = runs["false"], runs["graph"]
    assert m["global_step"] == m_ref["global_step"] == 3 and losses.shape == (3,)
    assert torch.allclose(losses, ref, rtol=1e-4, atol=1e-5), (losses, ref)
    assert m["test/acc"] == pytest.approx(m_ref["test/acc"], abs=1e-3)
    with pytest.raises(UserError, match="model.compile='graphs': use false, true or graph"):
        _classifier("graphs")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_on_a_gpu_both_graph_steps_replay_as_cuda_graphs_and_equal_the_eager_steps(
    monkeypatch, request
):
    """The GPU check (skipped on the CPU): each module compiles its step itself (inductor,
    mode="reduce-overhead", fullgraph=True), no input keeps it off CUDA graphs, and its losses
    and weights equal the eager step's (inductor's fallback_random: the same draws as eager)."""
    import torch._inductor.config as inductor
    from torch._dynamo.utils import counters

    patch = inductor.patch(fallback_random=True)  # undone by itself (see tests/test_gan.py)
    patch.__enter__()
    request.addfinalizer(lambda: patch.__exit__(None, None, None))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions, as here
    torch._dynamo.reset()
    counters.clear()
    calls = []
    monkeypatch.setattr(torch, "compile", lambda f, **kw: calls.append(kw) or _COMPILE(f, **kw))
    torch.manual_seed(0)
    eager = small_gan(3, 28, d_steps=2, ema_start_step=2, ema_decay=0.9).cuda()
    graph = copy.deepcopy(eager)
    graph.hparams.compile = "graph"
    x, y = (torch.rand(12, 1, 28, 28) * 2 - 1).cuda(), (torch.arange(12) % 3).cuda()
    (ref, _), (losses, _) = _train(eager, x, y, 4), _train(graph, x, y, 4)
    assert torch.allclose(losses, ref, rtol=1e-3, atol=1e-4), (losses, ref)
    for k, v in eager.state_dict().items():
        assert _close(graph.state_dict()[k], v), k
    batch = _batch("cuda")
    (_, ref, _), (_, losses, _) = [
        _classifier_steps(_classifier(c).cuda(), batch, 3) for c in (False, "graph")
    ]
    assert torch.allclose(losses, ref, rtol=1e-3, atol=1e-4), (losses, ref)
    assert calls == [{"fullgraph": True, "dynamic": False, "mode": "reduce-overhead"}] * 2, calls
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
