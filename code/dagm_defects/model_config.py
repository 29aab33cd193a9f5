"""The model's architecture settings, saved with its weights, importable without torch.

The serving front reads them from an artefact's metadata to size its inputs while the
model workers import torch and load the weights (model_files.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

from dagm_defects.placement import Canvas, image_shapes, native_canvas

# The segmentation head's output stride in the network's working resolution.
SEGMENTATION_STRIDE = 8
PLACEMENTS = ("resize", "pad")
# The image_size that sizes the canvas from the training images.
NATIVE = "native"


def side_multiple(space_to_depth: int) -> int:
    """Each input side must be a multiple of this (see `image_size_requirement`)."""
    return 32 * space_to_depth


def side_minimum(space_to_depth: int) -> int:
    return 64 * space_to_depth


def image_size_requirement(image_size: int, space_to_depth: int) -> str | None:
    """What each side of the input (height, width) must be for this stem, or None when
    `image_size` already is.

    The stem divides the input by `space_to_depth`, the segmentation network by 8, and
    the decision head halves that map three times more: it needs 64 px to work on."""
    multiple, minimum = side_multiple(space_to_depth), side_minimum(space_to_depth)
    if image_size % multiple == 0 and image_size >= minimum:
        return None
    requirement = f"a multiple of {multiple} and >= {minimum}"
    return requirement + (f" with space_to_depth {space_to_depth}" if space_to_depth > 1 else "")


def training_canvas(image_size: tuple[int, int] | str, space_to_depth: int,
                    train_images: Iterable[str | Path]) -> Canvas:
    """The canvas a training job decodes every set onto: the requested (height, width),
    resized; for "native", the one its training images need (placement.native_canvas),
    read once here from their headers and then saved with the model."""
    if image_size != NATIVE:
        return Canvas(*image_size)
    return native_canvas(image_shapes(train_images), side_multiple(space_to_depth), side_minimum(space_to_depth))


@dataclass(frozen=True)
class ModelConfig:
    """The architecture settings saved with the weights; enough to rebuild the model."""

    width: float = 0.125
    depth: float = 1.0
    # The input (height, width); an int is a square.
    image_size: tuple[int, int] = (512, 512)
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
    # How an image reaches `image_size` (placement.py): "resize" stretches it, "pad" (the
    # "native" hyperparameter) keeps its scale, times `placement_scale`, and pads.
    placement: str = "resize"
    placement_scale: float = 1.0

    def __post_init__(self) -> None:
        size = self.image_size
        object.__setattr__(self, "image_size", (size, size) if isinstance(size, int) else tuple(size))
        if not 0.01 <= self.width <= 4:
            raise ValueError(f"width must be within 0.01..4, got {self.width}")
        if not 0.25 <= self.depth <= 4:
            raise ValueError(f"depth must be within 0.25..4, got {self.depth}")
        if not 0.01 <= self.decision_width <= 4:
            raise ValueError(f"decision_width must be within 0.01..4, got {self.decision_width}")
        if self.space_to_depth not in (1, 2, 4):
            raise ValueError(f"space_to_depth must be 1, 2 or 4, got {self.space_to_depth}")
        height, width = self.image_size
        for name, side in (("", height),) if height == width else (("'s height", height), ("'s width", width)):
            requirement = image_size_requirement(side, self.space_to_depth)
            if requirement:
                raise ValueError(f"image_size{name} must be {requirement}, got {side}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if not 0 < self.placement_scale <= 1:
            raise ValueError(f"placement_scale must be within (0, 1], got {self.placement_scale}")

    @property
    def canvas(self) -> Canvas:
        """Where an image goes on the input, for placement.place."""
        return Canvas(*self.image_size, pad=self.placement == "pad", scale=self.placement_scale)

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
        # a decision head scaled by `width`, for a square resized input (`image_size` one
        # int, no `placement`): they load as what they were.
        values.setdefault("space_to_depth", 1)
        values.setdefault("decision_width", values.get("width", cls.width))
        values.setdefault("dilated_context", False)
        return cls(**values)
