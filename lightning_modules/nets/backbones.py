"""Classifier backbones: any torchvision classification model by name (torchvision.models
.get_model), split into `body` (image -> feature vector) and `head` (dropout + linear), with
`blocks` (input -> output order) for partial fine-tuning; the first convolution adapted to the
input's channels. ImageNet weights come from TORCH_HOME only: nothing downloads behind the
user's back, and a missing file is one line naming it."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from xfergan.errors import UserError
from xfergan.io import safe_torch_load

# names with a hand-made split into blocks; any other torchvision.models name works generically
BACKBONES = ("mobilenet_v2", "resnet18", "resnet50", "densenet169", "small_cnn")
# smallest input each backbone accepts (its stride-32 trunk must keep at least one pixel)
MIN_IMAGE_SIZE = {
    "mobilenet_v2": 32,
    "resnet18": 32,
    "resnet50": 32,
    "densenet169": 32,
    "small_cnn": 16,
}


class SmallCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU x2, maxpool), global average pool. Fast on a CPU."""

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
                nn.MaxPool2d(2),
            )

        w = width
        self.blocks = nn.ModuleList([block(in_channels, w), block(w, 2 * w), block(2 * w, 4 * w)])
        self.out_features = 4 * w

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x.mean(dim=(2, 3))


class Backbone(nn.Module):
    def __init__(
        self,
        body: nn.Module,
        blocks: list[nn.Module],
        features: int,
        num_classes: int,
        dropout: float,
    ):
        super().__init__()
        self.body = body
        self.blocks = blocks  # plain list: views into body, not registered twice
        self.num_features = features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        w = conv.weight.sum(dim=1, keepdim=True) if in_channels == 1 else conv.weight.mean(1, True)
        new.weight.copy_(
            w.expand(-1, in_channels, -1, -1) / (1 if in_channels == 1 else in_channels)
        )
    return new


def weights_file(name: str, weights: str, key: str = "model.weights") -> tuple[Path, str]:
    """(where torchvision's ImageNet file for `name`/`weights` must be, its download URL);
    `key` is the setting that names the weights, in the error."""
    from urllib.parse import urlparse

    try:
        enum = torchvision.models.get_model_weights(name)
        w = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except (KeyError, ValueError):
        raise UserError(
            f"{key}={weights!r} is not a weights name of {name} (see "
            f"torchvision.models.get_model_weights('{name}'))"
        ) from None
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return hub / Path(urlparse(w.url).path).name, w.url


def _torchvision(
    name: str,
    weights: str | None,
    key: str = "model.backbone",
    without: str = "model.init=scratch",
) -> nn.Module:
    """A torchvision classifier by name with its weights from TORCH_HOME; `key` (the backbone
    setting; its weights are the `weights` beside it) and `without` (how to run without the
    weights) name the settings of whoever asks, in its errors."""
    if name not in torchvision.models.list_models(module=torchvision.models):
        import difflib

        close = difflib.get_close_matches(name, torchvision.models.list_models(), n=3)
        raise UserError(
            f"{key}={name!r} is not a torchvision classification model"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + "; use "
            + ("small_cnn or " if key == "model.backbone" else "")
            + "a name from torchvision.models.list_models()"
        )
    if weights is not None:
        path, url = weights_file(name, weights, key.rsplit(".", 1)[0] + ".weights")
        if not path.is_file():
            raise UserError(
                f"ImageNet weights for {name} ({weights}) are not in {path.parent}: put "
                f"{path.name} there (from {url}), set TORCH_HOME, or use {without}"
            )
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"cannot load ImageNet weights {name}/{weights}: {msg}") from None


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent = model.get_submodule(dotted.rsplit(".", 1)[0]) if "." in dotted else model
    setattr(parent, dotted.rsplit(".", 1)[-1], new)


def _generic(m: nn.Module, in_channels: int) -> tuple[nn.Module, list[nn.Module], int]:
    """Any torchvision classifier: the first Conv2d adapted to the input channels, the last
    Linear (the ImageNet head) replaced by Identity, so the model returns its features."""
    convs = [(n, c) for n, c in m.named_modules() if isinstance(c, nn.Conv2d)]
    linears = [(n, c) for n, c in m.named_modules() if isinstance(c, nn.Linear)]
    if not convs or not linears:
        raise UserError("this backbone has no Conv2d input layer or no Linear head to replace")
    _replace(m, convs[0][0], _adapt_first_conv(convs[0][1], in_channels))
    head_name, head = linears[-1]
    _replace(m, head_name, nn.Identity())
    feats = getattr(m, "features", None)
    blocks = list(feats) if isinstance(feats, nn.Sequential) else list(m.children())
    return m, blocks, head.in_features


def build_backbone(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    init: str = "imagenet",
    weights: str = "DEFAULT",
    dropout: float = 0.2,
    width: int = 32,
) -> Backbone:
    tv_weights = weights if init == "imagenet" else None
    if name == "small_cnn":
        if init == "imagenet":
            raise UserError("small_cnn has no ImageNet weights; use model.init=scratch")
        body = SmallCNN(in_channels, width)
        return Backbone(body, list(body.blocks), body.out_features, num_classes, dropout)
    m = _torchvision(name, tv_weights)
    if name == "mobilenet_v2":
        m.features[0][0] = _adapt_first_conv(m.features[0][0], in_channels)
        body = nn.Sequential(m.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return Backbone(body, list(m.features), m.last_channel, num_classes, dropout)
    if name.startswith("resnet"):
        m.conv1 = _adapt_first_conv(m.conv1, in_channels)
        stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
        layers = [stem, m.layer1, m.layer2, m.layer3, m.layer4]
        body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return Backbone(body, layers, m.fc.in_features, num_classes, dropout)
    if name == "densenet169":
        m.features.conv0 = _adapt_first_conv(m.features.conv0, in_channels)
        body = nn.Sequential(
            m.features, nn.ReLU(inplace=False), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        return Backbone(body, list(m.features), m.classifier.in_features, num_classes, dropout)
    body, blocks, features = _generic(m, in_channels)
    return Backbone(body, blocks, features, num_classes, dropout)


def load_init_checkpoint(net: Backbone, path: str) -> dict[str, int]:
    """Start from any earlier checkpoint (pre-train on related data, then fine-tune): loads every
    tensor whose name and shape fit; the head is skipped when the class count differs."""
    blob = safe_torch_load(path, "init checkpoint")
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"init checkpoint {path} holds no state_dict")
    prefixes = ("net.", "model.net.", "model.")
    own = net.state_dict()
    matched, skipped = {}, []
    for k, v in state.items():
        key = k
        for p in prefixes:
            if key.startswith(p) and key[len(p) :] in own:
                key = key[len(p) :]
                break
        if key in own and hasattr(v, "shape") and own[key].shape == v.shape:
            matched[key] = v
        elif key in own:
            skipped.append(key)
    body_keys = [k for k in own if k.startswith("body.")]
    n_body = sum(k.startswith("body.") for k in matched)
    if n_body < 0.5 * len(body_keys):
        raise UserError(
            f"checkpoint {path} does not fit this model: only {n_body} of {len(body_keys)} backbone "
            "tensors match by name and shape; use a checkpoint of the same model.backbone"
        )
    net.load_state_dict(matched, strict=False)
    return {"loaded": len(matched), "skipped": len(skipped), "total": len(own)}


def apply_finetune(net: Backbone, policy: str, last_n: int = 2) -> None:
    """full: train everything; head: train only the head; last_n: the head and the last N blocks."""
    if policy not in ("full", "head", "last_n"):
        raise UserError(f"model.finetune={policy!r}: use full, head or last_n")
    for p in net.parameters():
        p.requires_grad = policy == "full"
    if policy == "full":
        return
    trainable = [net.head] + (net.blocks[-last_n:] if policy == "last_n" and last_n > 0 else [])
    for m in trainable:
        for p in m.parameters():
            p.requires_grad = True
