"""One epoch of training and batched prediction over in-memory arrays.

The arrays are already decoded at the model's input size, so a batch is an index into
memory plus random flips: the loop is never waiting on image files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from dagm_defects.data.arrays import ArraySet
from dagm_defects.device import Device
from dagm_defects.progress import Progress
from dagm_defects.training.anomalies import paste_anomalies
from dagm_defects.training.monitor import StepMonitor
from dagm_defects.training.stop import StopFlag

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def batches(
    arrays: ArraySet,
    indices: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None = None,
    synthetic_share: float = 0.0,
) -> Iterator[Batch]:
    """(images N x 1 x H x W uint8, masks N x 1 x H x W uint8, labels N float, has_mask N
    bool); random horizontal and vertical flips when `rng` is given, and that share of
    each batch's good images turned into synthetic defects."""
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        images, masks = arrays.images[idx], arrays.masks[idx]
        labels, has_mask = arrays.labels[idx].copy(), arrays.has_mask[idx].copy()
        if synthetic_share and rng is not None:
            chosen = np.flatnonzero((labels == 0) & (rng.random(len(idx)) < synthetic_share))
            images[chosen], masks[chosen] = paste_anomalies(images[chosen], rng)
            labels[chosen], has_mask[chosen] = 1, True
        if rng is not None:
            for axis in (1, 2):
                flip = rng.random(len(idx)) < 0.5
                images[flip] = np.flip(images[flip], axis=axis)
                masks[flip] = np.flip(masks[flip], axis=axis)
        yield (
            torch.from_numpy(images).unsqueeze(1),
            torch.from_numpy(masks).unsqueeze(1),
            torch.from_numpy(labels).float(),
            torch.from_numpy(has_mask),
        )


def balanced_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch's sample order: as many draws as there are images, half of them
    defective (repeated as needed), half good, shuffled. Defects are rare (about 13%
    in DAGM); without this most steps would only teach the model what "good" is."""
    defective, good = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(defective) == 0 or len(good) == 0:
        return rng.permutation(len(labels))
    half = len(labels) // 2
    order = np.concatenate([
        rng.choice(defective, half, replace=len(defective) < half),
        rng.choice(good, len(labels) - half, replace=len(good) < len(labels) - half),
    ])
    rng.shuffle(order)
    return order


def segmentation_target(masks: torch.Tensor, downsample: int) -> torch.Tensor:
    # Max-pooling keeps a thin scratch visible at the coarse resolution the head predicts.
    return F.max_pool2d(masks.float(), downsample)


@dataclass(frozen=True)
class Objective:
    """How one step weighs its two losses (training/supervision.py says why)."""

    seg_pos_weight: float
    seg_weight: float = 1.0
    dec_weight: float = 1.0


def mixed_loss(seg_logits, dec_logits, masks, labels, has_mask, objective: Objective):
    """The segmentation loss plus the image-level decision loss on every image, each with its
    weight. Returns (loss, seg, dec), the last two unweighted and detached.

    The segmentation loss is per pixel where the pixel truth is known (a good image's mask
    is all zero). A defective image labelled at image level has no pixel truth, but one
    fact: some cell shows the defect. Its term asks that of its most defect-like cell
    (multiple-instance learning); without it, image-level labels would reach the
    segmentation network only through the decision head, and on thin scratches a weakly
    labelled job stayed at chance."""
    per_pixel = F.binary_cross_entropy_with_logits(
        seg_logits.float(),
        segmentation_target(masks, masks.shape[-1] // seg_logits.shape[-1]),
        pos_weight=torch.tensor(objective.seg_pos_weight, device=seg_logits.device),
        reduction="none",
    ).mean(dim=(1, 2, 3))
    strongest = F.binary_cross_entropy_with_logits(
        seg_logits.float().amax(dim=(1, 2, 3)), torch.ones_like(per_pixel), reduction="none")
    known = has_mask.to(per_pixel.device, torch.float32)
    image_level = (labels > 0.5).float() * (1 - known)
    counted = (known + image_level).sum().clamp(min=1.0)
    seg = (per_pixel * known + strongest * image_level).sum() / counted
    dec = F.binary_cross_entropy_with_logits(dec_logits.float(), labels)
    loss = objective.seg_weight * seg + objective.dec_weight * dec
    return loss, seg.detach(), dec.detach()


def seg_pos_weight(arrays: ArraySet, downsample: int) -> float:
    """Weight of defect pixels in the segmentation loss, from their rarity among the masked
    defective images (capped); 1 without any."""
    masked = (arrays.labels == 1) & arrays.has_mask
    if not masked.any():
        return 1.0
    target = segmentation_target(torch.from_numpy(arrays.masks[masked]).unsqueeze(1), downsample)
    positive = float(target.sum())
    total = target.numel() * max(1, len(arrays)) / int(masked.sum())
    return float(np.clip((total - positive) / max(positive, 1.0), 1.0, 20.0))


@dataclass
class EpochStats:
    loss: float
    seg_loss: float
    dec_loss: float
    images: int
    seconds: float

    @property
    def images_per_sec(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def _any_rank_stopping(stop: StopFlag, device: torch.device) -> bool:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return stop.requested
    # Every rank must leave at the same step, or the others hang in the next all-reduce.
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def train_step(model, optimizer, batch: Batch, device: Device, objective: Objective,
               monitor: StepMonitor | None = None):
    """One optimisation step on a batch; returns (loss, seg_loss, dec_loss) tensors."""
    images, masks, labels, has_mask = batch
    images = device.images(images)
    masks, labels = masks.to(device.device), labels.to(device.device)
    if monitor:
        monitor.data_ready()
    with device.autocast():
        seg_logits, dec_logits = model(images)
    loss, seg, dec = mixed_loss(seg_logits, dec_logits, masks, labels, has_mask, objective)
    if monitor:
        monitor.phase("forward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if monitor:
        monitor.phase("backward")
        monitor.gradients(model)
    optimizer.step()
    return loss, seg, dec


def train_one_epoch(
    model,
    optimizer,
    arrays: ArraySet,
    indices: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    device: Device,
    objective: Callable[[float], Objective],
    stop: StopFlag,
    label: str = "epoch",
    monitor: StepMonitor | None = None,
    synthetic_share: float = 0.0,
) -> EpochStats:
    """`objective(f)` gives the step's loss weights, f the share of the epoch done."""
    model.train()
    # A line every half minute, so a long epoch on a big dataset never looks stuck.
    progress = Progress(label, len(indices), every_seconds=30)
    started = time.perf_counter()
    totals = np.zeros(3)
    seen = 0
    for batch in batches(arrays, indices, batch_size, rng, synthetic_share):
        if _any_rank_stopping(stop, device.device):
            break
        loss, seg, dec = train_step(model, optimizer, batch, device, objective(seen / max(len(indices), 1)), monitor)
        n = len(batch[2])
        # The unweighted sum: the balanced weights shift every step, and a loss that falls by
        # its weights alone would hide a job that learns nothing (loss_not_decreasing).
        values = [seg.item() + dec.item(), seg.item(), dec.item()]
        totals += n * np.array(values)
        seen += n
        if monitor:
            monitor.step_done(loss.item())  # the loss that was backpropagated, NaN and all
        progress.advance(n)
    mean = totals / max(seen, 1)
    return EpochStats(*mean.tolist(), images=seen, seconds=time.perf_counter() - started)


@torch.no_grad()
def predict_arrays(model, arrays: ArraySet, batch_size: int, device: Device) -> tuple[np.ndarray, np.ndarray]:
    """Defect probabilities (N) and segmentation probability maps (N x S/d x S/d)."""
    model.eval()
    scores, maps = [], []
    for images, *_ in batches(arrays, np.arange(len(arrays)), batch_size):
        with device.autocast():
            seg_logits, dec_logits = model(device.images(images))
        scores.append(torch.sigmoid(dec_logits.float()).cpu().numpy())
        maps.append(torch.sigmoid(seg_logits.float()).squeeze(1).cpu().numpy())
    if not scores:
        return np.zeros(0), np.zeros((0, 1, 1))
    return np.concatenate(scores), np.concatenate(maps)
