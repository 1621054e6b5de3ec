"""CIFAR ResNets in plain torch: the 6n+2 family of He et al. (2016) and a CIFAR ResNet-18.

- ``resnet8/20/32/44/56/110``: "Deep Residual Learning for Image Recognition", section 4.2 (ResNet-8,
  one block per stage, is not in the paper: a cheap proxy model for ``edloss adapt``):
  a 3x3 conv with 16 channels, three stages of n basic blocks at 16/32/64 channels (32x32,
  16x16, 8x8), global average pooling and a linear layer; 0.27M (ResNet-20) to 1.7M
  (ResNet-110) parameters. Shortcuts default to **option A**, as in the paper: identity, and
  where the shape changes, stride-2 subsampling with the new channels zero-padded (no
  parameters). ``shortcut="B"`` uses a 1x1 conv + batch norm projection there instead.
- ``resnet18``: the common CIFAR adaptation of the ImageNet ResNet-18 (3x3 stride-1 stem, no
  max-pool, four stages at 64/128/256/512 channels, option-B projection shortcuts); 11M
  parameters, the usual "ResNet-18 on CIFAR" of loss-function papers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> (block counts per stage, stage widths, default shortcut)
ARCHITECTURES: dict[str, tuple[tuple[int, ...], tuple[int, ...], str]] = {
    **{f"resnet{6 * n + 2}": ((n, n, n), (16, 32, 64), "A") for n in (1, 3, 5, 7, 9, 18)},
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512), "B"),
}


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm; the shortcut adds the input back (option A or B)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.stride, self.extra = stride, out_ch - in_ch
        self.project: nn.Module | None = None
        if (stride != 1 or in_ch != out_ch) and shortcut == "B":
            self.project = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                         nn.BatchNorm2d(out_ch))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            return self.project(x)
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:  # option A: zero-pad the new channels, half on each side as in the paper
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, stages of basic blocks (the first block of later stages halves the size)."""

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], num_classes: int,
                 shortcut: str = "A") -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, in_ch = [], widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_ch, width, stride, shortcut))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He initialisation for convs (as in the paper); BN to identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class CosineLinear(nn.Module):
    """A cosine classifier of scale s: z_c = s * <x / |x|, w_c / |w_c|>, no bias (the
    ``NormedLinear`` head of Cao et al.'s LDAM code, with their scale folded in so the logits a
    loss and the evaluation see are the ones trained on). Weights drawn as theirs:
    uniform(-1, 1), each class vector renormalised."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, scale={self.scale}"


def use_cosine_head(model: nn.Module, scale: float) -> nn.Module:
    """Replace a CIFAR ResNet's linear classifier by a ``CosineLinear`` of the same shape (in place)."""
    fc = model.fc
    model.fc = CosineLinear(fc.in_features, fc.out_features, scale).to(fc.weight.device)
    return model


def model_names() -> list[str]:
    return list(ARCHITECTURES)


def _canonical(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def build_model(name: str, num_classes: int = 10, *, shortcut: str | None = None,
                channels_last: bool = False, compile: bool = False) -> nn.Module:
    """A CIFAR ResNet by name (``"resnet20"``, ``"ResNet-56"``, ``"resnet18"``, ...).

    ``shortcut`` overrides the architecture's default ("A" for the 6n+2 family, "B" for
    ResNet-18; ResNet-18 supports only "B"). ``channels_last`` converts the weights' memory
    format (feed channels-last inputs too); ``compile`` wraps the model in ``torch.compile``.
    """
    key = _canonical(name)
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(model_names())}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    blocks, widths, default = ARCHITECTURES[key]
    shortcut = (shortcut or default).upper()
    if shortcut not in ("A", "B") or (key == "resnet18" and shortcut != "B"):
        raise ValueError(f"shortcut must be 'A' or 'B' (resnet18: 'B' only), got {shortcut!r}")
    model: nn.Module = CifarResNet(blocks, widths, num_classes, shortcut)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
