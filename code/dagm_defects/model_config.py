"""The model's architecture settings, saved with its weights, importable without torch.

The serving front reads them from an artefact's metadata to size its inputs while the
model workers import torch and load the weights (model_files.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# The segmentation head's output stride in the network's working resolution.
SEGMENTATION_STRIDE = 8


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
