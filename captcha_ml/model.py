"""ResNet-18 feature extractor + CTC sequence head. A plain nn.Module: no accelerate, no mlflow."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from .config import FREEZE_STAGES, ModelConfig


DEPTHS = ("layer2", "layer3", "layer4")  # the last ResNet-18 stage kept (128/256/512 channels)
# train.freeze: how many leading feature modules each value keeps fixed ("stem": conv1, bn1,
# relu, maxpool; "layer1": those and layer1).
FREEZE = dict(zip(FREEZE_STAGES, (0, 4, 5), strict=True))


class CaptchaNet(nn.Module):
    """Image (B, C, H, W) -> per-column log-probabilities (B, T, num_classes), blank = 0.

    ``depth`` names the last ResNet-18 stage kept (layer2: 0.7M parameters, layer3: 2.8M,
    layer4: 11.2M). The stem and layer1/layer2 keep their strides; layer3 and layer4 downsample
    only the height, so a 200-pixel-wide input leaves 25 horizontal positions for CTC, enough
    for long labels with repeated symbols. The remaining height is averaged away.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, depth: str = "layer3",
                 head: str = "linear", hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        net = resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if depth not in DEPTHS:
            raise ValueError(f"model.depth must be one of {', '.join(DEPTHS)} (got {depth!r})")
        stages = [net.layer1, net.layer2, net.layer3, net.layer4][:DEPTHS.index(depth) + 2]
        for layer in stages[2:]:
            _height_only_stride(layer)
        self.features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *stages)
        channels = stages[-1][-1].conv2.out_channels
        self.dropout = nn.Dropout(dropout)
        self.rnn = None
        if head == "lstm":
            self.rnn = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
            channels = 2 * hidden
        self.classifier = nn.Linear(channels, num_classes)
        self.frozen = 0  # leading modules of self.features kept fixed (`freeze`)

    def freeze(self, upto: str) -> "CaptchaNet":
        """Keep the feature stages up to ``upto`` (a FREEZE key; "": none) fixed: no gradients,
        and their batch norms in eval mode (running statistics kept) even while training.
        Nothing below them needs a backward pass, so a training step is cheaper (the stem and
        layer1 are most of layer2-deep ResNet's compute at full resolution)."""
        if upto not in FREEZE:
            raise ValueError(f"freeze must be one of {', '.join(map(repr, FREEZE))} (got {upto!r})")
        self.frozen = FREEZE[upto]
        for i, module in enumerate(self.features):
            for p in module.parameters():
                p.requires_grad_(i >= self.frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "CaptchaNet":
        super().train(mode)
        for module in self.features[:self.frozen]:
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 log_softmax: CTC is unstable in half precision.
        return self.classifier(self.columns(x)).float().log_softmax(dim=-1)

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """The per-time-step features (B, T, C) the classifier reads (`fit.fonts` compares
        glyphs by them)."""
        f = self.features(x).mean(dim=2)  # (B, C, T)
        f = self.dropout(f.transpose(1, 2))  # (B, T, C)
        if self.rnn is not None:
            f, _ = self.rnn(f)
        return f

    def output_length(self, width: int) -> int:
        """Number of CTC time steps for an input of this width."""
        return output_length(width)


def output_length(width: int) -> int:
    """CTC time steps for an input width: conv1, maxpool and layer2 each halve it (ceil)."""
    return -(-width // 8)


def _height_only_stride(layer: nn.Sequential) -> None:
    """Make a ResNet stage downsample height by 2 but keep the width."""
    block = layer[0]
    block.conv1.stride = (2, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (2, 1)


def channels_last(model: nn.Module) -> nn.Module:
    """The model with its 4-d weights in NHWC memory order (oneDNN's fast convolution layout
    on CPUs, tensor-core friendly on GPUs); the values and the saved state are unchanged."""
    return model.to(memory_format=torch.channels_last)


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int) -> CaptchaNet:
    model = CaptchaNet(num_classes, in_channels, cfg.depth, cfg.head, cfg.hidden, cfg.dropout)
    if cfg.imagenet_weights:
        load_imagenet(model, cfg.imagenet_weights)
    return model


def load_imagenet(model: CaptchaNet, path: str | Path) -> None:
    """Initialise the feature extractor from a local torchvision resnet18 state dict."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ImageNet weights {p} not found; download resnet18 weights "
                                "(torchvision resnet18-f37072fd.pth) on a machine with internet "
                                "or set model.imagenet_weights to empty")
    state = torch.load(p, map_location="cpu", weights_only=True)
    conv1 = state.get("conv1.weight")
    first = model.features[0]
    if conv1 is not None and first.in_channels == 1:
        # Grey input: sum the RGB filters, which keeps the response to a grey image.
        state["conv1.weight"] = conv1.sum(dim=1, keepdim=True)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    mapped = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in names and names.index(head) < len(model.features):
            mapped[f"features.{names.index(head)}.{rest}"] = value
    missing, _ = model.load_state_dict(mapped, strict=False)
    missing_features = [k for k in missing if k.startswith("features.")]
    if missing_features:
        raise ValueError(f"{p}: not a torchvision resnet18 state dict "
                         f"(missing {missing_features[:3]}...)")
