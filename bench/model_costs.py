"""Each committed configuration and the previous default, side by side in one run.

Prints JSON: for every ``local_test/hyperparameters/*.json`` (the demo uses real-cpu), parameters,
GFLOPs per image at its own input size (torch's FlopCounterMode, 2 FLOPs per
multiply-add), CPU batch-inference images/s as served (BatchNorm folded,
channels-last) and as trained (unfolded), and training images/s; the CPU recipe also in
plain NCHW (why training and serving use channels-last); the previous default (256x256
resize, no stem) for comparison; and the ratios of the GPU configuration (the reference
SegDecNet at 512x512) to the CPU recipe. Usage: python bench/model_costs.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dagm_defects.device import Device
from dagm_defects.model import build_model, inference_copy
from dagm_defects.model_config import ModelConfig
from dagm_defects.training.hyperparameters import parse_hyperparameters
from dagm_defects.training.loop import Objective, train_step

REPO = Path(__file__).resolve().parent.parent
CONFIGURATIONS = sorted((REPO / "local_test" / "hyperparameters").glob("*.json"))


def gflops(model, size: tuple[int, int]) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, *size, dtype=torch.uint8))
    return counter.get_total_flops() / 1e9


def rate(step, images_per_step: int, seconds: float) -> float:
    step()  # warm-up: oneDNN picks its kernels on the first call
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 2:
        step()
        count += 1
    return images_per_step * count / (time.perf_counter() - started)


def measure(config: ModelConfig, seconds: float, infer_batch: int, train_batch: int,
            layout=torch.channels_last) -> dict:
    size = config.image_size
    model = build_model(config).to(memory_format=layout)
    images = torch.randint(0, 256, (infer_batch, 1, *size), dtype=torch.uint8)
    images = images.contiguous(memory_format=layout)

    def infer_with(network):
        def infer():
            with torch.inference_mode():
                network(images)
        return infer

    model.eval()
    inference = rate(infer_with(model), infer_batch, seconds)
    served = rate(infer_with(inference_copy(model).to(memory_format=layout)), infer_batch, seconds)

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = images[:train_batch]
    masks = torch.zeros_like(batch)
    labels = torch.zeros(train_batch)
    known = torch.ones(train_batch, dtype=torch.bool)

    device = Device(torch.device("cpu"), amp=False, channels_last=layout == torch.channels_last)

    def train():
        train_step(model, optimizer, (batch, masks, labels, known), device, Objective(10.0))

    training = rate(train, train_batch, seconds)
    return {
        "config": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops_per_image": round(gflops(model.eval(), size), 3),
        "served_inference_images_per_sec": round(served, 2),
        "inference_images_per_sec": round(inference, 2),
        "training_images_per_sec": round(training, 2),
    }


def configuration(path: Path) -> ModelConfig:
    return parse_hyperparameters(json.loads(path.read_text())).model_config()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    configs = {str(path.relative_to(REPO)): configuration(path) for path in CONFIGURATIONS}
    configurations = {}
    for name, config in configs.items():
        wide = config.width >= 0.5  # the reference at 512x512: a few images per step on a CPU
        configurations[name] = measure(config, args.seconds, 2 if wide else 16, 2 if wide else 8)
    cpu_name = "local_test/hyperparameters/real-cpu.json"
    cpu, gpu = configurations[cpu_name], configurations["local_test/hyperparameters/real-gpu.json"]
    nchw = measure(configs[cpu_name], args.seconds, 16, 8, layout=torch.contiguous_format)
    previous = measure(ModelConfig(image_size=256, space_to_depth=1, decision_width=0.125, dilated_context=False),
                       args.seconds, 16, 8)
    print(json.dumps({
        "benchmark": "model_costs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "configurations": configurations,
        "real_cpu_nchw": {k: nchw[k] for k in ("served_inference_images_per_sec", "training_images_per_sec")},
        "previous_default_256": previous,
        "flops_ratio_gpu_over_cpu_recipe": round(gpu["gflops_per_image"] / cpu["gflops_per_image"], 1),
        "served_inference_speedup_cpu_recipe_over_gpu_config": round(
            cpu["served_inference_images_per_sec"] / gpu["served_inference_images_per_sec"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
