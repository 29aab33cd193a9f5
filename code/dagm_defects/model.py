"""SegDecNet-style mixed-supervision defect model (Bozic et al. 2021), width-scalable.

A segmentation network turns the image into features at 1/8 of its working resolution
and a defect mask logit; a decision network reads both (with the gradient to the segmentation
network stopped, as in the paper) and gives the image-level defect logit. ``REFERENCE``
is the published architecture (15.6M parameters, 45 GFLOPs at 256x256).

The default is the CPU recipe for genuine DAGM (0.36 GFLOPs at 512x512, about 100
images/s on 2 CPU cores): ``space_to_depth=2`` folds each 2x2 block of the input into
four channels before the first convolution, so a 512x512 image becomes 256x256x4 and
the network keeps every pixel (a 1-px scratch survives, where resizing to 256 averages
it away) at about the cost of a 256x256 input; ``width=0.125`` thins the segmentation
network, a dilated 5x5 stands in for the dense 15x15 context convolution, and the
decision head keeps its reference width.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

# The segmentation head's output stride in the network's working resolution.
SEGMENTATION_STRIDE = 8
# Keeps a flat image (std 0) finite after standardisation; in uint8 grey levels.
STD_FLOOR = 1.0


def image_size_requirement(image_size: int, space_to_depth: int) -> str | None:
    """What `image_size` must be for this stem, or None when it already is.

    The stem divides the input by `space_to_depth`, the segmentation network by 8, and
    the decision head halves that map three times more: it needs 64 px to work on."""
    if image_size % (32 * space_to_depth) == 0 and image_size >= 64 * space_to_depth:
        return None
    requirement = f"a multiple of {32 * space_to_depth} and >= {64 * space_to_depth}"
    return requirement + (f" with space_to_depth {space_to_depth}" if space_to_depth > 1 else "")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture settings saved with the weights; enough to rebuild the model."""

    width: float = 0.125
    depth: float = 1.0
    image_size: int = 512
    # 1: the image enters as it is; k: each k x k block becomes k*k input channels.
    space_to_depth: int = 2
    # Channel multiplier of the decision head alone. The reference head is already small
    # (8, 16, 32 channels at 1/16 resolution and below, under 1% of the cost); scaled by
    # `width` it shrank to 1, 2 and 4 channels, and one dead ReLU then left the decision
    # stuck at chance or inverted for epochs.
    decision_width: float = 1.0
    # The 1/8-resolution context convolution: 5x5 taps spaced 3 apart (a 13x13 span) at a
    # ninth of the cost of the reference's dense 15x15, which is otherwise 60% of the
    # network's work at width 0.125.
    dilated_context: bool = True

    def __post_init__(self) -> None:
        if not 0.01 <= self.width <= 4:
            raise ValueError(f"width must be within 0.01..4, got {self.width}")
        if not 0.25 <= self.depth <= 4:
            raise ValueError(f"depth must be within 0.25..4, got {self.depth}")
        if not 0.01 <= self.decision_width <= 4:
            raise ValueError(f"decision_width must be within 0.01..4, got {self.decision_width}")
        if self.space_to_depth not in (1, 2, 4):
            raise ValueError(f"space_to_depth must be 1, 2 or 4, got {self.space_to_depth}")
        requirement = image_size_requirement(self.image_size, self.space_to_depth)
        if requirement:
            raise ValueError(f"image_size must be {requirement}, got {self.image_size}")

    @property
    def downsample(self) -> int:
        """Input pixels per segmentation-map cell along each side."""
        return SEGMENTATION_STRIDE * self.space_to_depth

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        # Artefacts saved before these fields existed were built without a stem and with
        # a decision head scaled by `width`: they load as what they were.
        values.setdefault("space_to_depth", 1)
        values.setdefault("decision_width", values.get("width", cls.width))
        values.setdefault("dilated_context", False)
        return cls(**values)


REFERENCE = ModelConfig(width=1.0, depth=1.0, image_size=256, space_to_depth=1, decision_width=1.0,
                        dilated_context=False)


def _conv(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
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
        if config.space_to_depth > 1:
            layers.append(nn.PixelUnshuffle(config.space_to_depth))
        cin = config.space_to_depth**2
        for stage, (channels, count) in enumerate(((32, 2), (64, 3), (64, 4))):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(reps(count)):
                layers.append(_conv(cin, ch(channels), 5))
                cin = ch(channels)
        context = _conv(cin, ch(1024), 5, dilation=3) if config.dilated_context else _conv(cin, ch(1024), 15)
        layers += [nn.MaxPool2d(2), context]
        self.segmentation = nn.Sequential(*layers)
        self.seg_head = nn.Conv2d(ch(1024), 1, 1)

        def dch(n: int) -> int:
            return max(1, round(n * config.decision_width))

        self.decision = nn.Sequential(
            nn.MaxPool2d(2),
            _conv(ch(1024) + 1, dch(8), 5),
            nn.MaxPool2d(2),
            _conv(dch(8), dch(16), 5),
            nn.MaxPool2d(2),
            _conv(dch(16), dch(32), 5),
        )
        self.classifier = nn.Linear(2 * dch(32) + 2, 1)

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
        """Return (segmentation logits N x 1 x H/d x W/d with d = config.downsample,
        decision logits N)."""
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


def inference_copy(model: SegDecNet) -> SegDecNet:
    """An eval-mode copy with every BatchNorm folded into the convolution before it.

    The outputs are the same up to float rounding; the CPU no longer makes a separate
    pass over every feature map to normalise it (bench/model_costs.py measures the gain).
    """
    fused = copy.deepcopy(model).eval()
    for block in fused.modules():
        if isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], nn.BatchNorm2d):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return fused


@torch.no_grad()
def predict(model: SegDecNet, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Defect probabilities (N) and probability maps (N x H/d x W/d) for uint8 images."""
    seg_logits, logits = model(images)
    return torch.sigmoid(logits.float()), torch.sigmoid(seg_logits.float()).squeeze(1)
