"""What a training job records about itself: the rules watching each step and epoch, the
MLflow run (rank 0 only, one run per job), and the training report written when the job
ends, whether it finished, was stopped by a rule or by SageMaker, or failed.

The loop calls the observer at fixed points; with ``tracking=false`` it is never made and
the job trains exactly as before.
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dagm_defects.evaluation.report import EVALUATION_FILE
from dagm_defects.evaluation.training_report import write_training_report
from dagm_defects.training.data import DataSplits
from dagm_defects.training.monitor import StepMonitor
from dagm_defects.training.rules import RuleBook
from dagm_defects.training.settings import TrainingSettings

PLOTS = ("pr_roc.png", "confusion.png", "masks.png")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def validation_loss(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The decision head's binary cross-entropy on the validation set."""
    if len(labels) == 0:
        return None
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def content_hash(splits: DataSplits) -> str:
    """One digest of every image, mask and label the job trained, validated and tested on.
    Masks are 0/1, so they are hashed as bits; a test set that is the validation set (no
    test channel, no Test split) is hashed once."""
    digest = hashlib.blake2b(digest_size=16)
    seen: set[int] = set()
    for arrays in (splits.train, splits.validation, splits.test):
        digest.update(b"same" if id(arrays) in seen else b"set")
        if id(arrays) in seen:
            continue
        seen.add(id(arrays))
        for part in (arrays.images, np.packbits(arrays.masks), arrays.labels, arrays.class_ids):
            digest.update(np.ascontiguousarray(part).data)
    return digest.hexdigest()


def dataset_facts(settings: TrainingSettings, splits: DataSplits) -> dict:
    facts: dict = {"classes": splits.classes, "test_source": splits.test_source,
                   "channels": dict(sorted(settings.channels.items()))}
    for name in ("train", "validation", "test"):
        arrays = getattr(splits, name)
        facts[f"{name}_images"] = len(arrays)
        facts[f"{name}_defective"] = int(arrays.labels.sum())
    facts["content_hash"] = content_hash(splits)
    return facts


def _finite(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class JobObserver:
    def __init__(self, settings: TrainingSettings, device, leader: bool, world: int) -> None:
        hp = settings.hyperparameters
        self.settings = settings
        self.leader = leader
        self.rules = RuleBook(hp.rule_parameters, hp.stop_on_rules)
        self.monitor = StepMonitor(self.rules, device.device)
        self.device = device
        self.started = time.monotonic()
        self.started_utc = _utc_now()
        self.epochs: list[dict] = []
        self.dataset: dict = {}
        self.tracker = None
        if leader:
            from dagm_defects.tracking.job_run import JobTracker

            tracking = settings.tracking
            params = {**hp.to_dict(), "world_size": world, "device": str(device.device), "amp": device.amp,
                      "decode_workers": settings.decode_workers, "hosts": len(settings.hosts)}
            tags = {"mlflow.source.name": "dagm_defects.training", "mlflow.source.type": "JOB",
                    "dagm.code_version": tracking.code_version, "dagm.device": str(device.device)}
            if tracking.commit:
                tags["mlflow.source.git.commit"] = tracking.commit
            if tracking.image:
                tags["dagm.image"] = tracking.image
            if tracking.job_name:
                tags["sagemaker.training_job"] = tracking.job_name
            self.tracker = JobTracker.start(tracking, params, tags)

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id if self.tracker else None

    def data_ready(self, splits: DataSplits) -> None:
        if not self.leader:
            return
        self.dataset = dataset_facts(self.settings, splits)
        self.tracker.log_params({f"data.{k}": v for k, v in self.dataset.items()})
        profile = {k: v for k, v in self.dataset.items() if k.endswith(("_images", "_defective"))}
        self.tracker.log_dataset("dagm-" + "-".join(f"class{c}" for c in splits.classes),
                                 self.dataset["content_hash"], self.settings.channels["train"], profile, "training")

    def epoch_done(self, record: dict, lr: float, images_per_sec: float, seconds: float,
                   validation_labels: np.ndarray, validation_scores: np.ndarray) -> None:
        """Record the epoch, then let the epoch rules judge it (may raise RuleStopped)."""
        val_loss = validation_loss(validation_labels, validation_scores)
        entry = {**record, "val_loss": val_loss, "lr": lr, "images_per_sec": images_per_sec, "seconds": seconds}
        self.epochs.append(entry)
        if self.tracker:
            self.tracker.log_metrics({k: _finite(v) for k, v in entry.items()
                                      if k not in ("epoch", "epochs")}, step=record["epoch"])
        chance = float(validation_labels.mean()) if len(validation_labels) else 0.0
        self.monitor.end_epoch(record["train_loss"], val_loss, _finite(record["val_ap"]), chance)

    def finished(self, summary: dict, curves: dict, model_dir: str, image_size: tuple[int, int]) -> dict | None:
        """The job ended well: final metrics, files and the MLflow model; returns the run's record."""
        if not self.leader:
            return None
        overall = summary["overall"]
        final = {f"test_{k}": overall[k] for k in ("ap", "auroc", "accuracy", "precision", "recall")}
        final["threshold"] = summary["threshold"]
        for cls, block in summary["per_class"].items():
            final.update({f"class_{cls}_test_{k}": block[k] for k in ("ap", "auroc", "recall")})
        if "baseline" in summary:
            final["baseline_test_ap"] = summary["baseline"]["overall"]["ap"]
            serving_run = (summary["baseline"].get("mlflow") or {})
            self.tracker.set_tags({"dagm.baseline_run_id": serving_run.get("server_run_id") or serving_run.get("run_id")
                                   or "unknown"})
        self.tracker.log_metrics({k: _finite(v) for k, v in final.items()}, step=len(self.epochs))
        self.tracker.log_model(Path(model_dir), image_size)
        return self._close("FINISHED", "Completed", None, summary, curves)

    def ended_early(self, status: str, reason: str) -> dict | None:
        """The job is leaving without a model: `status` is "Stopped" (by SageMaker), "Stopped
        by rule" or "Failed"."""
        if not self.leader:
            return None
        return self._close("KILLED" if status == "Stopped" else "FAILED", status, reason, None, None)

    def _close(self, run_status: str, status: str, reason: str | None, summary: dict | None,
               curves: dict | None) -> dict:
        out = Path(self.settings.output_data_dir)
        fired = self.rules.fired()
        tracking = self.settings.tracking
        report = {
            "job": {"name": tracking.run_name, "status": status, "started_utc": self.started_utc,
                    "finished_utc": _utc_now(), "seconds": time.monotonic() - self.started,
                    "device": str(self.device.device), "failure_reason": reason},
            "mlflow": {"run_id": self.run_id, "tracking_uri": tracking.server_uri or tracking.store_uri,
                       "experiment": tracking.experiment},
            "hyperparameters": self.settings.hyperparameters.to_dict(),
            "dataset": self.dataset,
            "epochs": self.epochs,
            "rules": self.rules.to_list(),
            "profile": self.monitor.profile(),
            "evaluation": summary and {k: summary[k] for k in ("threshold", "overall", "per_class", "source",
                                                               "supervision", "threshold_choice", "at_threshold",
                                                               "labels") if k in summary},
            "curves": curves,
        }
        paths = write_training_report(out, report)
        files = [*paths, out / EVALUATION_FILE, *(out / name for name in PLOTS)]
        self.tracker.log_files([p for p in files if p.is_file()])
        self.tracker.set_tags({"dagm.rules_fired": ",".join(fired) or "none", "dagm.status": status})
        return self.tracker.finish(run_status).to_dict()

