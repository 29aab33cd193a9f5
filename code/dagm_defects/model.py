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

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dagm_defects.model_config import ModelConfig

# Keeps a flat image (std 0) finite after standardisation; in uint8 grey levels.
STD_FLOOR = 1.0


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
        # Training-time only, never saved: whether the decision loss may reshape the
        # segmentation features (weak supervision, training/supervision.py).
        self.segmentation_from_decision = False

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
        # Stop the decision loss from reshaping the segmentation features (Bozic et al.),
        # unless no defect mask exists to train them otherwise.
        if not self.segmentation_from_decision:
            features = features.detach()
        d = self.decision(torch.cat([features, seg_logits.detach()], dim=1))
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
