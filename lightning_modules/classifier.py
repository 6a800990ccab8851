"""Transfer classifier over torchvision backbones (or a small CNN), any init, any fine-tune policy."""

from __future__ import annotations

import math
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightning_modules.graph_step import adam_step, check_trainer, compile_whole, trainable
from lightning_modules.nets.backbones import apply_finetune, build_backbone, load_init_checkpoint
from xfergan.evaluation.metrics import ClassificationMetrics
from xfergan.schema import ClassifierConfig

_D = ClassifierConfig()  # the schema is the one source of defaults


def gather_shards(module: pl.LightningModule, t: torch.Tensor) -> torch.Tensor:
    """Every rank's evaluation shard (rank r holds items r, r+W, ...; see ShardSampler) -> the
    whole set in dataset order, on every rank. Shards may differ in length by one: they are
    padded for the collective, and the padding is dropped again."""
    world = module.trainer.world_size
    n = torch.tensor([len(t)], device=module.device)
    sizes = module.all_gather(n).flatten().tolist()
    m = max(sizes)
    pad = torch.zeros((m - len(t), *t.shape[1:]), dtype=t.dtype, device=module.device)
    g = module.all_gather(torch.cat([t.to(module.device), pad]))  # [W, m, ...]
    total = sum(sizes)
    out = torch.empty((total, *t.shape[1:]), dtype=t.dtype, device=module.device)
    for r in range(world):
        out[r::world] = g[r, : sizes[r]]
    return out.cpu()


class ClassifierModule(pl.LightningModule):
    def __init__(
        self,
        backbone: str,
        num_classes: int,
        in_channels: int = 3,
        init: str = _D.init,
        weights: str = _D.weights,
        finetune: str = _D.finetune,
        finetune_last_n: int = _D.finetune_last_n,
        dropout: float = _D.dropout,
        width: int = _D.width,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = _D.label_smoothing,
        class_weights: list[float] | None = None,
        channels_last: bool = _D.channels_last,
        compile: bool | str = _D.compile,
        class_names: list[str] | None = None,
        input_spec: dict[str, Any] | None = None,
    ):
        super().__init__()
        if compile not in (False, True, "graph"):
            from xfergan.errors import UserError

            raise UserError(f"model.compile={compile!r}: use false, true or graph")
        optimizer = dict(_D.optimizer if optimizer is None else optimizer)
        scheduler = dict(vars(_D.scheduler) if scheduler is None else scheduler)
        self.save_hyperparameters()
        from_ckpt = init not in ("imagenet", "scratch")
        self.net = build_backbone(
            backbone,
            num_classes,
            in_channels,
            "scratch" if from_ckpt else init,
            weights,
            dropout,
            width,
        )
        self.init_report = load_init_checkpoint(self.net, init) if from_ckpt else None
        apply_finetune(self.net, finetune, finetune_last_n)
        if class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float))
        else:
            self.class_weights = None
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        names = class_names or [str(i) for i in range(num_classes)]
        # keys are not "train"/"val"/"test": ModuleDict keys become attributes (train() exists)
        self.stage_metrics = torch.nn.ModuleDict(
            {
                f"{s}_metrics": ClassificationMetrics(num_classes, names, scores=s != "train")
                for s in ("train", "val", "test")
            }
        )
        # per-image outputs of the last val / test pass (probabilities, labels, groups)
        self.outputs: dict[str, dict[str, list[torch.Tensor]]] = {"val": {}, "test": {}}
        # which real images this model saw (datamodules.provenance.model_record), saved in every
        # checkpoint: what a run that uses the model as a teacher or init checks
        self.provenance: dict[str, Any] | None = None
        # model.compile=graph: the training step (forward, backward, optimizer) is one graph
        # that steps the optimizer itself (`_train_update`)
        self.automatic_optimization = compile != "graph"
        self._graph, self._graph_for = None, None

    def train(self, mode: bool = True):
        """Train mode, except for frozen BatchNorm layers (model.finetune=head|last_n): they keep
        normalizing with their running statistics (ImageNet's, or the init's), which a few-shot
        batch would otherwise overwrite while their weights stay frozen, so the head would train
        on batch statistics and be tested on others."""
        super().train(mode)
        if mode and self.hparams.get("finetune", "full") != "full":
            for m in self.net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in m.parameters(recurse=False)
                ):
                    m.eval()
        return self

    def setup(self, stage: str) -> None:
        if self.hparams.compile == "graph" and stage == "fit":
            check_trainer(self._trainer, "model.compile=graph", "model.compile=true")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["xfergan_provenance"] = self.provenance

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.provenance = checkpoint.get("xfergan_provenance", self.provenance)

    def configure_model(self) -> None:
        if self.hparams.compile is True and not getattr(self, "_compiled", False):
            self.net.compile()
            self._compiled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    @classmethod
    def load_safely(cls, path: str) -> ClassifierModule:
        """Rebuild a classifier from our checkpoint with `weights_only=True` (no ImageNet download:
        the checkpoint's weights replace the init)."""
        from xfergan.errors import UserError
        from xfergan.io import safe_torch_load

        blob = safe_torch_load(path, "classifier checkpoint")
        hp = dict(blob.get("hyper_parameters") or {})
        if "backbone" not in hp or "state_dict" not in blob:
            raise UserError(f"{path} is not a classifier checkpoint written by task=classify")
        hp.update(init="scratch", compile=False)
        # a semi-supervised classifier's checkpoint: its classifier (not its pool's sampler,
        # a generator it trained alongside)
        import inspect

        known = inspect.signature(ClassifierModule.__init__).parameters
        model = ClassifierModule(**{k: v for k, v in hp.items() if k in known})
        model.provenance = blob.get("xfergan_provenance")
        model.decision = blob.get("xfergan_decision")
        own = model.state_dict()
        state = {k: v for k, v in blob["state_dict"].items() if k in own}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(
                f"checkpoint {path} does not fit its own model: {str(e)[:200]}"
            ) from None
        return model.eval()

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits,
            target,
            weight=self.class_weights,
            label_smoothing=self.hparams.label_smoothing,
        )

    def _step(self, batch, stage: str) -> torch.Tensor:
        logits = self(batch.x)
        loss = self._loss(logits, self._target(batch, stage))
        self._record(batch, stage, logits.detach(), loss.detach())
        return loss

    @staticmethod
    def _target(batch, stage: str) -> torch.Tensor:
        """Soft targets (teacher probabilities; one-hot for real images) where the batch has
        them, in training; else the labels."""
        return batch.soft if batch.soft is not None and stage == "train" else batch.y

    def _record(self, batch, stage: str, logits: torch.Tensor, loss: torch.Tensor) -> None:
        """The step's metrics, accumulated on the device; val/test keep each image's output."""
        y = batch.y
        probs = logits.float().softmax(dim=1)
        metrics = self.stage_metrics[f"{stage}_metrics"]
        metrics.update(probs, y, loss.float(), len(y))
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        if stage in self.outputs:
            o = self.outputs[stage]
            o["probs"].append(probs.cpu())
            o["labels"].append(y.cpu())
            if batch.group is not None:
                o["groups"].append(batch.group.cpu())

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            return self._step(batch, "train")
        # Lightning's optimizer step counts the step (trainer.global_step: max_steps, the
        # schedule); the graph step runs as its closure and applies the update itself, so the
        # optimizer's own step finds no gradient left to apply
        opt = self.optimizers()
        opt.step(closure=lambda: self.graph_step(batch, opt.optimizer))
        scheduler = self.lr_schedulers()
        if scheduler is not None:  # every batch, as configure_optimizers asks
            scheduler.step()

    def graph_step(self, batch, opt: torch.optim.Optimizer) -> torch.Tensor:
        """model.compile=graph's training step: forward, backward and `opt`'s step as one
        graph (`_train_update`, compiled at its first call), the metrics after it."""
        if self._graph_for != id(opt):
            self._graph, self._graph_for = compile_whole(self._train_update, self, [opt]), id(opt)
        torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: a new step's outputs
        loss, logits = self._graph(batch.x, self._target(batch, "train"), opt)
        # a CUDA graph's outputs are overwritten by its next replay: the metrics and the
        # logged loss outlive the step
        loss, logits = loss.clone(), logits.clone()
        self._record(batch, "train", logits, loss)
        return loss

    def _train_update(self, x, target, opt) -> tuple[torch.Tensor, torch.Tensor]:
        """The training step as one function of tensors (model.compile=graph): `_step`'s forward
        and loss, the gradients from torch.autograd.grad and the optimizer's step by adam_step
        (Adam or AdamW; the learning rate a tensor the scheduler fills). Nothing is read back,
        so it traces as one graph (fullgraph=True) and replays as one CUDA graph;
        tests/test_graph_step.py compares it with Lightning's eager step."""
        logits = self(x)
        loss = self._loss(logits, target)
        adam_step(opt, torch.autograd.grad(loss, trainable(opt)))
        return loss.detach(), logits.detach()

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self(batch.x).float().softmax(dim=1)

    def on_test_epoch_start(self) -> None:
        self.outputs["test"] = {"probs": [], "labels": [], "groups": []}

    def on_validation_epoch_start(self) -> None:
        self.outputs["val"] = {"probs": [], "labels": [], "groups": []}

    def _epoch_end(self, stage: str) -> None:
        m = self.stage_metrics[f"{stage}_metrics"]
        if m.counts.update_count == 0:
            return
        values = m.compute(stage)  # torchmetrics syncs across DDP ranks: exact, no duplicates
        self.log_dict(values, prog_bar=False, sync_dist=True)
        if stage != "train":
            self.log(f"{stage}/acc_bar", values[f"{stage}/acc"], prog_bar=True, logger=False)
        m.reset()

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")
        self._gather("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")
        self._gather("test")

    def _gather(self, stage: str) -> None:
        if self.trainer.world_size > 1:  # DDP: every rank saw a shard; gather all predictions
            for k, v in self.outputs[stage].items():
                if v:
                    self.outputs[stage][k] = [gather_shards(self, torch.cat(v))]

    def collected_outputs(self, stage: str) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v) for k, v in self.outputs[stage].items() if v}

    def classifier_steps(self, trainer) -> int:
        """The classifier's optimizer steps so far (a module with other optimizers says)."""
        return trainer.global_step

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt_cfg = dict(self.hparams.optimizer or _D.optimizer)  # the schema's defaults
        opt = hydra.utils.instantiate(opt_cfg, params=params)
        if self.hparams.compile == "graph":  # one graph for every learning rate: a tensor that
            for group in opt.param_groups:  # the scheduler fills (from a number: no host read)
                group["initial_lr"] = group["lr"]
                group["lr"] = torch.tensor(group["lr"], device=self.device)
        sch = {**vars(_D.scheduler), **(self.hparams.scheduler or {})}
        name = sch["name"]
        if name == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(sch["warmup_epochs"]) * steps_per_epoch
        if name == "cosine":
            floor = float(sch["min_lr_ratio"])

            def f(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                t = (step - warmup) / max(1, total - warmup)
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        elif name == "step":
            size, gamma = (
                int(sch["step_size"]) * steps_per_epoch,
                float(sch["gamma"]),
            )

            def f(step: int) -> float:
                return (step + 1) / warmup if step < warmup else gamma ** (step // size)

        else:
            from xfergan.errors import UserError

            raise UserError(f"model.scheduler.name={name!r}: use cosine, step or none")
        lr = torch.optim.lr_scheduler.LambdaLR(opt, f)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": lr, "interval": "step"}}
