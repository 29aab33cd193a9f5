"""Statistics of recent inputs, published to CloudWatch so that drift can be seen.

Each worker describes every image it predicts on, at the model's input size (as the
artefact's `training_statistics` describe the training images), by the statistics of
`dagm_defects.imaging` (intensity mean and spread, contrast, texture), by whether it was
predicted defective, and by its drift distance (`dagm_defects.drift`). Every
`DAGM_DRIFT_PUBLISH_SECONDS` a background thread publishes what it gathered as
statistic sets (count, sum, min, max), so CloudWatch's averages stay exact across
workers and instances, and starts over.

Publishing never touches a request: a failure is logged once per kind, and the next
window is tried again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from dagm_defects.drift import DEFECTIVE, METRICS, NAMESPACE, SCORE, Reference
from dagm_defects.imaging import STATISTICS, image_statistics

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """Count, sum, minimum and maximum of one metric's values: a CloudWatch statistic set."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, values: np.ndarray) -> None:
        self.count += len(values)
        self.total += float(values.sum())
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))

    def statistic_values(self) -> dict:
        return {"SampleCount": self.count, "Sum": self.total, "Minimum": self.low, "Maximum": self.high}


class InputWatch:
    """One worker's window of input statistics and its publisher."""

    def __init__(self, training_statistics: dict, endpoint: str, variant: str, period_s: float, cloudwatch):
        try:
            self.reference = Reference.from_training(training_statistics)
        except ValueError as exc:
            log.warning("DriftScore will not be published: %s", exc)
            self.reference = None
        else:
            if self.reference is None:
                log.warning("DriftScore will not be published: the model carries no training statistics")
        self.endpoint, self.variant, self.period_s = endpoint, variant, period_s
        self.cloudwatch = cloudwatch
        self.window: dict[str, Tally] = {}
        self.lock = threading.Lock()
        self.failures_logged: set[str] = set()

    def observe(self, images: np.ndarray, defective: np.ndarray) -> None:
        """`images`: N x S x S uint8 at the model's input size; `defective`: N booleans."""
        if not len(images):
            return
        statistics = image_statistics(images)
        values = {METRICS[name]: statistics[name] for name in STATISTICS}
        values[DEFECTIVE] = defective.astype(np.float64)
        if self.reference is not None:
            values[SCORE] = self.reference.distances(statistics)
        with self.lock:
            for metric, given in values.items():
                self.window.setdefault(metric, Tally()).add(given)

    def metric_data(self, window: dict[str, Tally]) -> list[dict]:
        variant = [{"Name": "EndpointName", "Value": self.endpoint}, {"Name": "VariantName", "Value": self.variant}]
        data = [{"MetricName": metric, "Dimensions": variant, "Unit": "None", "StatisticValues": tally.statistic_values()}
                for metric, tally in window.items()]
        if SCORE in window:  # also endpoint-wide: the series the template's alarm watches
            data.append({"MetricName": SCORE, "Dimensions": variant[:1], "Unit": "None",
                         "StatisticValues": window[SCORE].statistic_values()})
        return data

    def publish(self) -> None:
        with self.lock:
            window, self.window = self.window, {}
        if not window:
            return
        try:
            self.cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=self.metric_data(window))
        except Exception as exc:  # never a request's problem; one line per kind of failure
            kind = type(exc).__name__
            if kind not in self.failures_logged:
                self.failures_logged.add(kind)
                log.warning("input statistics not published to CloudWatch (%s): %s", kind, exc)

    def start(self) -> None:
        def loop() -> None:
            while True:
                time.sleep(self.period_s)
                self.publish()

        threading.Thread(target=loop, name="input-watch", daemon=True).start()
