"""Transfer classifier over torchvision backbones (or a small CNN), any init, any fine-tune policy."""

from __future__ import annotations

import math
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightning_modules.metrics import ClassificationMetrics
from lightning_modules.nets.backbones import apply_finetune, build_backbone, load_init_checkpoint


class ClassifierModule(pl.LightningModule):
    def __init__(
        self,
        backbone: str,
        num_classes: int,
        in_channels: int = 3,
        init: str = "imagenet",
        weights: str = "DEFAULT",
        finetune: str = "full",
        finetune_last_n: int = 2,
        dropout: float = 0.2,
        width: int = 32,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        class_names: list[str] | None = None,
        input_spec: dict[str, Any] | None = None,
        **_ignored: Any,
    ):
        super().__init__()
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
                f"{s}_metrics": ClassificationMetrics(num_classes, names)
                for s in ("train", "val", "test")
            }
        )
        self.test_outputs: dict[str, list[torch.Tensor]] = {}

    def configure_model(self) -> None:
        if self.hparams.compile and not getattr(self, "_compiled", False):
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
        model = cls(**hp)
        try:
            model.load_state_dict(blob["state_dict"])
        except RuntimeError as e:
            raise UserError(
                f"checkpoint {path} does not fit its own model: {str(e)[:200]}"
            ) from None
        return model.eval()

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(
            logits, y, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing
        )
        probs = logits.detach().float().softmax(dim=1)
        self.stage_metrics[f"{stage}_metrics"].update(probs, y)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=stage != "test",
            batch_size=len(y),
            sync_dist=stage != "train",
        )
        if stage == "test":
            self.test_outputs["probs"].append(probs.cpu())
            self.test_outputs["labels"].append(y.cpu())
            if len(batch) > 2:
                self.test_outputs["groups"].append(batch[2].cpu())
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self(batch[0]).float().softmax(dim=1)

    def on_test_epoch_start(self) -> None:
        self.test_outputs = {"probs": [], "labels": [], "groups": []}

    def _epoch_end(self, stage: str) -> None:
        m = self.stage_metrics[f"{stage}_metrics"]
        if m.acc.update_count == 0:
            return
        values = m.compute(stage)
        self.log_dict(values, prog_bar=False, sync_dist=True)
        if stage != "train":
            self.log(f"{stage}/acc_bar", values[f"{stage}/acc"], prog_bar=True, logger=False)
        m.reset()

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")
        if self.trainer.world_size > 1:  # DDP: every rank saw a shard; gather all predictions
            for k, v in self.test_outputs.items():
                if v:
                    g = self.all_gather(torch.cat(v).to(self.device))
                    self.test_outputs[k] = [g.reshape(-1, *g.shape[2:]).cpu()]

    def collected_test_outputs(self) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v) for k, v in self.test_outputs.items() if v}

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt_cfg = dict(self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "lr": 1e-3})
        opt = hydra.utils.instantiate(opt_cfg, params=params)
        sch = dict(self.hparams.scheduler or {})
        name = sch.get("name", "none")
        if name == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(sch.get("warmup_epochs", 0)) * steps_per_epoch
        if name == "cosine":
            floor = float(sch.get("min_lr_ratio", 0.01))

            def f(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                t = (step - warmup) / max(1, total - warmup)
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        elif name == "step":
            size, gamma = (
                int(sch.get("step_size", 10)) * steps_per_epoch,
                float(sch.get("gamma", 0.1)),
            )

            def f(step: int) -> float:
                return (step + 1) / warmup if step < warmup else gamma ** (step // size)

        else:
            from xfergan.errors import UserError

            raise UserError(f"model.scheduler.name={name!r}: use cosine, step or none")
        lr = torch.optim.lr_scheduler.LambdaLR(opt, f)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": lr, "interval": "step"}}
