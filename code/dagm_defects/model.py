"""SegDecNet-style mixed-supervision defect model (Bozic et al. 2021), width-scalable.

A segmentation network turns the image into features at 1/8 resolution and a defect
mask logit; a decision network reads both (with the gradient to the segmentation
network stopped, as in the paper) and gives the image-level defect logit. ``width=1``
is the reference architecture (15.6M parameters, 42 GFLOPs at 256x256); the default
``width=0.125`` costs about 0.68 GFLOPs, which a 2-core CPU serves at >100 images/s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

DOWNSAMPLE = 8
# Keeps a flat image (std 0) finite after standardisation; in uint8 grey levels.
STD_FLOOR = 1.0


@dataclass(frozen=True)
class ModelConfig:
    """The architecture settings saved with the weights; enough to rebuild the model."""

    width: float = 0.125
    depth: float = 1.0
    image_size: int = 256

    def __post_init__(self) -> None:
        if not 0.01 <= self.width <= 4:
            raise ValueError(f"width must be within 0.01..4, got {self.width}")
        if not 0.25 <= self.depth <= 4:
            raise ValueError(f"depth must be within 0.25..4, got {self.depth}")
        if self.image_size < 64 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 and >= 64, got {self.image_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


REFERENCE = ModelConfig(width=1.0, depth=1.0, image_size=256)


def _conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegDecNet(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config

        def ch(n: int) -> int:
            return max(1, round(n * config.width))

        def reps(n: int) -> int:
            return max(1, round(n * config.depth))

        layers: list[nn.Module] = []
        cin = 1
        for stage, (channels, count) in enumerate(((32, 2), (64, 3), (64, 4))):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(reps(count)):
                layers.append(_conv(cin, ch(channels), 5))
                cin = ch(channels)
        layers += [nn.MaxPool2d(2), _conv(cin, ch(1024), 15)]
        self.segmentation = nn.Sequential(*layers)
        self.seg_head = nn.Conv2d(ch(1024), 1, 1)

        self.decision = nn.Sequential(
            nn.MaxPool2d(2),
            _conv(ch(1024) + 1, ch(8), 5),
            nn.MaxPool2d(2),
            _conv(ch(8), ch(16), 5),
            nn.MaxPool2d(2),
            _conv(ch(16), ch(32), 5),
        )
        self.classifier = nn.Linear(2 * ch(32) + 2, 1)

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N,H,W) or (N,1,H,W) pixels to the float input the network expects.

        Each image is standardised on its own: DAGM classes differ in brightness and
        contrast, and a defect is a local departure from the image's own texture."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        x = images.float()
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True)
        return (x - mean) / (std + STD_FLOOR)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (segmentation logits N x 1 x H/8 x W/8, decision logits N)."""
        x = self.normalize(images) if images.dtype == torch.uint8 else images
        features = self.segmentation(x)
        seg_logits = self.seg_head(features)
        # Stop the decision loss from reshaping the segmentation features (Bozic et al.).
        d = self.decision(torch.cat([features.detach(), seg_logits.detach()], dim=1))
        seg = seg_logits.detach()
        pooled = torch.cat(
            [
                F.adaptive_max_pool2d(d, 1).flatten(1),
                F.adaptive_avg_pool2d(d, 1).flatten(1),
                F.adaptive_max_pool2d(seg, 1).flatten(1),
                F.adaptive_avg_pool2d(seg, 1).flatten(1),
            ],
            dim=1,
        )
        return seg_logits, self.classifier(pooled.float()).squeeze(1)


def build_model(config: ModelConfig) -> SegDecNet:
    return SegDecNet(config)


@torch.no_grad()
def predict(model: SegDecNet, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Defect probabilities (N) and probability maps (N x H/8 x W/8) for uint8 images."""
    seg_logits, logits = model(images)
    return torch.sigmoid(logits.float()), torch.sigmoid(seg_logits.float()).squeeze(1)
