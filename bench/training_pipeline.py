"""Is the data pipeline the bottleneck? Whole training steps fed by our pipeline (balanced
sampling, flips, uint8 batches from the in-memory arrays) vs the same steps on tensors
already in memory, in one run; prints the ratio as JSON (aim: >= 0.9).

Also reports how long decoding the PNGs into memory took (once per job), and the same
in-memory steps in the plain NCHW layout, which is why training uses channels-last.
Usage: python bench/training_pipeline.py [--classes 1,2] [--images 100] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from dagm_defects.data.arrays import load_arrays
from dagm_defects.data.reader import read_index
from dagm_defects.model import build_model
from dagm_defects.model_config import ModelConfig
from dagm_defects.device import Device
from dagm_defects.training.loop import Objective, balanced_indices, batches, train_one_epoch, train_step
from dagm_defects.training.stop import StopFlag
from dagm_synth import generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="1,2")
    parser.add_argument("--images", type=int, default=100, help="images per split and class")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    classes = [int(c) for c in args.classes.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, classes=classes, images_per_split=args.images, size=512, seed=0)
        started = time.perf_counter()
        arrays = load_arrays(read_index(tmp, classes, ("Train",)), (args.size, args.size))
        decode_seconds = time.perf_counter() - started

    device = Device(torch.device("cpu"), amp=False)
    model = build_model(ModelConfig(image_size=args.size)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = balanced_indices(arrays.labels, np.random.default_rng(0))

    # The reference: the same batches, made once, so a step is pure model work.
    ready = list(batches(arrays, order, args.batch_size, np.random.default_rng(1)))

    def in_memory(layout=torch.channels_last) -> float:
        model.to(memory_format=layout).train()
        started = time.perf_counter()
        step_device = Device(device.device, amp=False, channels_last=layout == torch.channels_last)
        for batch in ready:
            train_step(model, optimizer, batch, step_device, Objective(10.0))
        return len(order) / (time.perf_counter() - started)

    def pipeline() -> float:
        model.to(memory_format=torch.channels_last)
        stats = train_one_epoch(model, optimizer, arrays, order, args.batch_size,
                                np.random.default_rng(1), device, lambda _: Objective(10.0), StopFlag())
        return stats.images_per_sec

    in_memory()  # warm-up
    # Interleaved rounds, so drift in the machine's speed hits both sides alike.
    rounds = [(pipeline(), in_memory(), in_memory(torch.contiguous_format)) for _ in range(3)]
    ours, reference, nchw = (float(np.median([r[i] for r in rounds])) for i in range(3))
    print(json.dumps({
        "benchmark": "training_pipeline",
        "image_size": args.size,
        "images_per_epoch": len(order),
        "decode_once_seconds": round(decode_seconds, 2),
        "decode_images_per_sec": round(len(arrays) / decode_seconds, 1),
        "pipeline_images_per_sec": round(ours, 2),
        "in_memory_images_per_sec": round(reference, 2),
        "ratio": round(ours / reference, 3),
        "nchw_in_memory_images_per_sec": round(nchw, 2),
        "channels_last_speedup": round(reference / nchw, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
