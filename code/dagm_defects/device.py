"""Where a model runs, shared by training and serving."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    """Where and how tensors run: bf16 autocast on CUDA; channels-last everywhere, as
    cuDNN and oneDNN both run these convolutions faster in that layout
    (bench/training_pipeline.py measures it on the CPU)."""

    device: torch.device
    amp: bool
    channels_last: bool = True

    def autocast(self):
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def images(self, batch: torch.Tensor) -> torch.Tensor:
        # uint8 crosses to the GPU (4x less than float32); the model converts it there.
        batch = batch.to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    @classmethod
    def select(cls, amp: str = "auto", index: int = 0) -> "Device":
        """CUDA device `index` when there is one (bf16 autocast unless amp is "false"),
        else the CPU (autocast only when amp is "true")."""
        if torch.cuda.is_available():
            torch.cuda.set_device(index)
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            return cls(torch.device("cuda", index), amp in ("auto", "true"))
        return cls(torch.device("cpu"), amp == "true")
