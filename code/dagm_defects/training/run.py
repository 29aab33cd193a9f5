"""One training run, top to bottom: data, model, resume, epochs, threshold, artefact,
evaluation. Runs the same in one process or as one rank of a torchrun job."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from dagm_defects.artifact import Artifact, save_artifact, update_metadata
from dagm_defects.evaluation import metrics
from dagm_defects.evaluation.report import write_report
from dagm_defects.device import Device
from dagm_defects.imaging import image_statistics, summarize_statistics
from dagm_defects.model import build_model, inference_copy
from dagm_defects.progress import write_line
from dagm_defects.training.baseline import evaluate_baseline, load_baseline, warm_start
from dagm_defects.training.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from dagm_defects.training.data import DataSplits, prepare_data
from dagm_defects.training.observer import JobObserver
from dagm_defects.training.loop import (
    Objective,
    balanced_indices,
    predict_arrays,
    seg_pos_weight,
    train_one_epoch,
)
from dagm_defects.training.rules import RuleStopped
from dagm_defects.training.settings import TrainingSettings
from dagm_defects.training.stop import StopFlag, StopRequested
from dagm_defects.training.supervision import Supervision, resolve_supervision, training_set
from dagm_defects.training.synthetic import monitoring_set, synthetic_pos_weight
from dagm_defects.training import threshold as thresholds


def _log(**tokens) -> None:
    """Metrics as stable `name=value` tokens, which CloudWatch MetricDefinitions match."""
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in tokens.items()]
    write_line(" ".join(parts))


def _training_statistics(splits: DataSplits) -> dict:
    train = splits.train
    per_image = image_statistics(train.images)
    return {
        "overall": summarize_statistics(per_image),
        "per_class": {
            str(c): summarize_statistics({k: v[train.class_ids == c] for k, v in per_image.items()})
            for c in splits.classes
        },
        "defective_share": float(train.labels.mean()) if len(train) else 0.0,
    }


def _epoch_indices(labels: np.ndarray, epoch: int, seed: int, rank: int, world: int, batch_size: int) -> np.ndarray:
    # The same draw on every rank, then equal disjoint shards: no rank waits on another.
    order = balanced_indices(labels, np.random.default_rng([seed, epoch]))
    per_rank = len(order) // world
    shard = order[rank * per_rank : (rank + 1) * per_rank] if world > 1 else order
    # A last batch of one image cannot train batch norm (one value per channel, an error in
    # torch); that image is one random draw of this epoch, so it is left out.
    return shard[:-1] if len(shard) > 1 and len(shard) % batch_size == 1 else shard


def _learning_rate(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay to a tenth over the run: settles the model for the last epochs."""
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1))))


def _checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def run_training(settings: TrainingSettings, stop: StopFlag, rank: int = 0, world: int = 1, local_rank: int = 0) -> dict | None:
    hp = settings.hyperparameters
    torch.manual_seed(hp.seed)
    device = Device.select(settings.hyperparameters.amp, local_rank)
    leader = rank == 0
    _log(event="start", device=device.device.type, amp=device.amp, world_size=world,
         rank=rank, hyperparameters=json.dumps(hp.to_dict(), separators=(",", ":")))
    observer = JobObserver(settings, device, leader, world) if hp.tracking else None
    if observer and observer.tracker:
        write_line(f"MLflow run in {settings.tracking.store_dir} (experiment {settings.tracking.experiment!r})")
    try:
        return _train(settings, stop, device, observer, rank, world)
    except Exception as exc:
        if observer:
            status = ("Stopped" if isinstance(exc, StopRequested) else
                      "Stopped by rule" if isinstance(exc, RuleStopped) else "Failed")
            record = observer.ended_early(status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            _log_run(record)
        raise


def _log_run(record: dict | None) -> None:
    if record:
        _log(event="mlflow_run", run_id=record["run_id"], experiment=json.dumps(record["experiment"]),
             server_run_id=record["server_run_id"] or "none")


def _train(settings: TrainingSettings, stop: StopFlag, device: Device, observer: JobObserver | None,
           rank: int, world: int) -> dict | None:
    hp = settings.hyperparameters
    leader = rank == 0
    baseline = load_baseline(settings)
    splits = prepare_data(settings, settings.decode_workers)
    for note in splits.train.notes[:5]:
        write_line(f"note: {note}")
    _log(event="data", classes=",".join(map(str, splits.classes)), train_images=len(splits.train),
         train_defective=int(splits.train.labels.sum()), validation_images=len(splits.validation),
         test_images=len(splits.test), test_source=json.dumps(splits.test_source),
         canvas=f"{splits.canvas.height}x{splits.canvas.width}", placement="pad" if splits.canvas.pad else "resize")
    if observer:
        observer.data_ready(splits)
    supervision = resolve_supervision(hp.supervision, splits.train)
    train = training_set(supervision, splits.train)
    # Good-only: the epochs' validation AP is measured on synthetic defects drawn on the
    # held-out good images, so the rules and the curves have something to follow.
    watched = monitoring_set(splits.validation, hp.seed) if supervision.mode == "good-only" else splits.validation
    write_line(f"supervision: {supervision.describe()}")
    _log(event="supervision", mode=supervision.mode, requested=supervision.requested, good=supervision.good,
         defective=supervision.defective, masks=supervision.masks, image_level=supervision.image_level,
         empty_masks=supervision.empty_masks)

    config = hp.model_config(splits.canvas)
    model = build_model(config)
    # The paper stops the decision loss at the segmentation features; our thin segmentation
    # network then learned real photographs' textures too slowly (magnetic tile Test AP 0.75
    # with the stop, 0.81 without, in 10 epochs), while genuine DAGM class 8 kept AP 1.000.
    model.segmentation_from_decision = True
    if hp.warm_start:
        warm_start(model, baseline, config)
        _log(event="warm_start", from_model=json.dumps(baseline.metadata.get("created_utc")))
    model = model.to(device.device)
    if device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    identity = {"model_config": config.to_dict(), "classes": splits.classes}
    state = load_checkpoint(settings.checkpoint_dir, model, optimizer, identity) or TrainingState()
    if state.epochs_done:
        _log(event="resumed", epochs_done=state.epochs_done, checkpoint=settings.checkpoint_dir)
    net = DistributedDataParallel(model) if world > 1 else model

    pos_weight = (seg_pos_weight(train, config.downsample) if supervision.masks
                  else synthetic_pos_weight(train, config.downsample, hp.seed) if supervision.synthetic_share else 1.0)
    val_scores = None
    started = time.monotonic()
    monitor = observer.monitor if observer else None
    for epoch in range(state.epochs_done, hp.epochs):
        epoch_started = time.monotonic()
        rng = np.random.default_rng([hp.seed, epoch, rank])
        indices = _epoch_indices(train.labels, epoch, hp.seed, rank, world, hp.batch_size)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(hp.learning_rate, epoch, hp.epochs)
        if monitor:
            monitor.begin_epoch(epoch + 1)
        try:
            stats = train_one_epoch(net, optimizer, train, indices, hp.batch_size, rng, device,
                                    _objective(supervision, pos_weight, epoch, hp.epochs), stop,
                                    label=f"epoch {epoch + 1}/{hp.epochs}", monitor=monitor,
                                    synthetic_share=supervision.synthetic_share)
        except RuleStopped as exc:
            raise RuleStopped(_rule_stop_reason(exc, settings, state)) from None
        if stop.requested:
            where = "not saved (only rank 0 saves)"
            if leader:
                where = str(save_checkpoint(settings.checkpoint_dir, model, optimizer, state, identity))
            raise StopRequested(
                f"stopped by {stop.signal_name or 'request'} during epoch {epoch + 1}/{hp.epochs}; "
                f"checkpoint with {state.epochs_done} finished epoch(s) saved to {where}; "
                f"a restarted job resumes from it"
            )
        val_scores, _ = predict_arrays(model, watched, hp.batch_size, device)
        val = metrics.summarize(watched.labels, val_scores, watched.class_ids, 0.5)["overall"]
        state.epochs_done = epoch + 1
        record = {"epoch": epoch + 1, "epochs": hp.epochs, "train_loss": stats.loss,
                  "seg_loss": stats.seg_loss, "dec_loss": stats.dec_loss, "val_ap": val["ap"],
                  "val_auroc": val["auroc"], "val_accuracy": val["accuracy"]}
        state.history.append(record)
        lr, images_per_sec = optimizer.param_groups[0]["lr"], stats.images_per_sec * world
        _log(**{k: _num(v) if k.startswith("val_") else v for k, v in record.items()},
             lr=lr, epoch_images=stats.images * world, train_images_per_sec=images_per_sec,
             elapsed_s=time.monotonic() - started)
        if leader:
            save_checkpoint(settings.checkpoint_dir, model, optimizer, state, identity)
        if observer:
            try:
                observer.epoch_done(record, lr, images_per_sec, time.monotonic() - epoch_started,
                                    watched.labels, val_scores)
            except RuleStopped as exc:
                raise RuleStopped(_rule_stop_reason(exc, settings, state)) from None

    _log(event="finished", rank=rank, world_size=world, params_checksum=f"{_checksum(model):.6f}")
    if not leader:
        return None
    if watched is not splits.validation:
        val_scores = None  # the threshold is set on the real held-out images
    return _finish(settings, model, splits, train, supervision, device, state, val_scores, baseline, observer)


def _objective(supervision: Supervision, pos_weight: float, epoch: int, epochs: int):
    def at(fraction: float) -> Objective:
        return Objective(pos_weight, *supervision.loss_weights((epoch + fraction) / epochs))
    return at


def _rule_stop_reason(exc: RuleStopped, settings: TrainingSettings, state: TrainingState) -> str:
    kept = (f"the checkpoint of epoch {state.epochs_done} is kept in {settings.checkpoint_dir}" if state.epochs_done
            else "no epoch had finished, so there is no checkpoint")
    return f"{exc}; the job was stopped (stop_on_rules); {kept}"


def _num(value) -> float | str:
    return "nan" if value is None else float(value)


def _choose_threshold(settings: TrainingSettings, model, splits: DataSplits, train, supervision: Supervision,
                      device: Device, val_scores: np.ndarray) -> thresholds.ThresholdChoice:
    hp = settings.hyperparameters
    held_out = (splits.validation.labels, val_scores)
    fitted = None
    if thresholds.needs_training_scores(splits.validation.labels):
        fitted = (train.labels, predict_arrays(model, train, hp.batch_size, device)[0])
    choice = thresholds.choose_threshold(held_out, hp.max_false_reject, fitted)
    for note in choice.notes:
        write_line(f"threshold: {note}")
    at = choice.at_threshold
    _log(event="threshold", threshold=choice.threshold, max_false_reject=hp.max_false_reject,
         good=at["good"], false_rejects=at["false_rejects"], defective=at["defective"], escapes=at["escapes"],
         source=json.dumps(choice.source))
    return choice


def _finish(settings: TrainingSettings, model, splits: DataSplits, train, supervision: Supervision, device: Device,
            state: TrainingState, val_scores: np.ndarray | None, baseline: Artifact | None,
            observer: JobObserver | None) -> dict:
    hp = settings.hyperparameters
    if val_scores is None:  # resumed with every epoch done, or monitored on synthetic defects
        val_scores, _ = predict_arrays(model, splits.validation, hp.batch_size, device)
    choice = _choose_threshold(settings, model, splits, train, supervision, device, val_scores)
    threshold = choice.threshold
    validation = metrics.summarize(splits.validation.labels, val_scores, splits.validation.class_ids, threshold)

    test = splits.test
    evaluation_started = time.monotonic()
    # Scored as served: BatchNorm folded (eval_images_per_sec is the serving forward pass).
    scores, seg_maps = predict_arrays(inference_copy(model), test, hp.batch_size, device)
    evaluation_seconds = time.monotonic() - evaluation_started
    extra = {"supervision": supervision.to_dict(), "threshold_choice": choice.to_dict(),
             "at_threshold": thresholds.rates_at(test.labels, scores, threshold)}
    if baseline is not None:
        extra["baseline"] = evaluate_baseline(baseline, test, hp.batch_size, device, settings.decode_workers,
                                               splits.canvas)
        _log(event="baseline", baseline_test_ap=_num(extra["baseline"]["overall"]["ap"]))
    summary = write_report(settings.output_data_dir, test.labels, scores, test.class_ids, threshold,
                           test.images, test.masks, seg_maps, [s.key for s in test.samples],
                           splits.test_source, extra, has_mask=test.has_mask, empty_masks=test.empty_masks)
    save_artifact(
        settings.model_dir,
        model,
        threshold=threshold,
        classes=splits.classes,
        training_statistics=_training_statistics(splits),
        extra={
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hyperparameters": hp.to_dict(),
            "validation": {k: validation["overall"][k] for k in ("ap", "auroc", "accuracy")},
            "test": {k: summary["overall"][k] for k in ("ap", "auroc", "accuracy")},
            "epochs": state.epochs_done,
            "supervision": supervision.to_dict(),
            "threshold_choice": {k: v for k, v in choice.to_dict().items() if k != "operating_points"},
            **({"mlflow": {"run_id": observer.run_id, "experiment": settings.tracking.experiment}}
               if observer else {}),
        },
    )
    overall = summary["overall"]
    _log(event="evaluation", threshold=threshold, test_ap=_num(overall["ap"]), test_auroc=_num(overall["auroc"]),
         test_accuracy=_num(overall["accuracy"]), test_precision=_num(overall["precision"]),
         test_recall=_num(overall["recall"]), test_images=len(test),
         test_false_reject_rate=_num(extra["at_threshold"]["false_reject_rate"]),
         eval_images_per_sec=len(test) / max(evaluation_seconds, 1e-9))
    for cls, block in summary["per_class"].items():
        _log(**{"class": cls, "test_ap": _num(block["ap"]), "test_auroc": _num(block["auroc"]),
                "test_accuracy": _num(block["accuracy"]), "n": block["n"], "n_defective": block["n_defective"]})
    if observer:
        record = observer.finished(summary, metrics.curves(test.labels, scores, test.class_ids), settings.model_dir,
                                   splits.canvas.shape)
        if record["server_run_id"]:
            update_metadata(settings.model_dir, "mlflow", {
                "run_id": record["run_id"], "experiment": record["experiment"],
                "tracking_uri": record["tracking_uri"], "server_run_id": record["server_run_id"]})
        _log_run(record)
    return summary
