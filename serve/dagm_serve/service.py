"""What an MMS worker does: load the model once, then answer batches from the front.

The front has decoded and checked every image (codec.py) and resized it to the model's
input, so a batch here is a plain uint8 array and the only work is the forward pass.
A failure here is the server's, never a client's: MMS answers it 503 and the front
tells every request of that batch so.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from dagm_defects.device import Device
from dagm_serve import wire
from dagm_serve.input_watch import InputWatch
from dagm_serve.environment import ServingSettings
from dagm_serve.predictor import Predictor

log = logging.getLogger(__name__)


def select_device(settings: ServingSettings, gpu_id: int | None) -> Device:
    if settings.device == "cpu" or not torch.cuda.is_available():
        torch.set_num_threads(settings.threads_per_worker)
        return Device(torch.device("cpu"), settings.amp == "true")
    return Device.select(settings.amp, int(gpu_id or 0))


def input_watch(settings: ServingSettings, predictor: Predictor) -> InputWatch | None:
    """Input statistics for drift detection, where deploy.py named the endpoint and variant;
    a multi-model endpoint's models have no common training data to compare with."""
    if not (settings.endpoint_name and settings.variant_name) or settings.multi_model:
        return None
    import boto3  # only a worker that publishes pays for importing it

    try:
        cloudwatch = boto3.client("cloudwatch")
    except Exception as exc:  # e.g. no region: serve anyway, without drift metrics
        log.warning("input statistics will not be published: %s", exc)
        return None
    watch = InputWatch(predictor.training_statistics, settings.endpoint_name,
                       settings.variant_name, settings.drift_publish_s, cloudwatch)
    watch.start()
    return watch


class Service:
    def __init__(self, predictor: Predictor, watch: InputWatch | None, batch_dir: Path | None = None):
        self.predictor = predictor
        self.watch = watch
        self.batch_dir = batch_dir  # the front's batch files (wire.py); None: inline only

    @classmethod
    def load(cls, model_dir: str | Path, settings: ServingSettings, gpu_id: int | None) -> "Service":
        started = time.monotonic()
        predictor = Predictor.load(model_dir, select_device(settings, gpu_id))
        predictor.warm_up(settings.server_batch_size)
        service = cls(predictor, input_watch(settings, predictor), settings.batch_files_dir)
        # MMS copies worker output into its log: this line is the worker's readiness.
        print(f"worker {os.getpid()}: model {model_dir} loaded and warmed up "
              f"(batch {settings.server_batch_size}, {torch.get_num_threads()} torch threads on {predictor.device.device}) "
              f"in {time.monotonic() - started:.2f} s", flush=True)
        return service

    def answer(self, body: bytes | bytearray) -> bytes:
        """The scores and maps for one batch body from the front (wire.py)."""
        meta, (images,) = wire.unpack(body, self.batch_dir)
        scores, maps = self.predictor.forward(images)
        if self.watch is not None:
            # Drift watches the model's own decision, whatever threshold a client asked for.
            self.watch.observe(images, scores >= self.predictor.threshold)
        answer = wire.batch_file(meta.get("answer"), self.batch_dir)
        return wire.pack_into({"forward_id": self.predictor.forward_id}, [scores, maps], answer)
