"""Our default model vs the reference SegDecNet, side by side in one run on this machine.

Prints JSON: parameters, GFLOPs per image (torch's FlopCounterMode, 2 FLOPs per
multiply-add), CPU batch-inference and training images/s at the same input size in the
channels-last layout the product uses (and ours in plain NCHW for comparison), and the
ratios. Usage: python bench/model_costs.py [--size 256] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dagm_defects.model import REFERENCE, ModelConfig, build_model
from dagm_defects.device import Device
from dagm_defects.training.loop import train_step


def gflops(model, size: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, size, size, dtype=torch.uint8))
    return counter.get_total_flops() / 1e9


def rate(step, images_per_step: int, seconds: float) -> float:
    step()  # warm-up: oneDNN picks its kernels on the first call
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 2:
        step()
        count += 1
    return images_per_step * count / (time.perf_counter() - started)


def measure(config: ModelConfig, size: int, seconds: float, infer_batch: int, train_batch: int,
            layout=torch.channels_last) -> dict:
    model = build_model(config).to(memory_format=layout)
    images = torch.randint(0, 256, (infer_batch, 1, size, size), dtype=torch.uint8)
    images = images.contiguous(memory_format=layout)

    def infer():
        with torch.inference_mode():
            model(images)

    model.eval()
    inference = rate(infer, infer_batch, seconds)

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = images[:train_batch]
    masks = torch.zeros_like(batch)
    labels = torch.zeros(train_batch)

    device = Device(torch.device("cpu"), amp=False, channels_last=layout == torch.channels_last)

    def train():
        train_step(model, optimizer, batch, masks, labels, device, 10.0)

    training = rate(train, train_batch, seconds)
    return {
        "config": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops_per_image": round(gflops(model.eval(), size), 3),
        "inference_images_per_sec": round(inference, 2),
        "training_images_per_sec": round(training, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    ours = measure(ModelConfig(image_size=args.size), args.size, args.seconds, 16, 16)
    reference = measure(REFERENCE, args.size, args.seconds, 8, 4)
    nchw = measure(ModelConfig(image_size=args.size), args.size, args.seconds, 32, 16,
                   layout=torch.contiguous_format)
    print(json.dumps({
        "benchmark": "model_costs",
        "image_size": args.size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "ours": ours,
        "reference_segdecnet": reference,
        "ours_nchw": {k: nchw[k] for k in ("inference_images_per_sec", "training_images_per_sec")},
        "flops_ratio_reference_over_ours": round(reference["gflops_per_image"] / ours["gflops_per_image"], 1),
        "inference_speedup": round(ours["inference_images_per_sec"] / reference["inference_images_per_sec"], 1),
        "training_speedup": round(ours["training_images_per_sec"] / reference["training_images_per_sec"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
