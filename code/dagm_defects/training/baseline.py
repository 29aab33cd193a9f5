"""The optional `model` channel: the model now serving, as a warm start and a yardstick.

The retraining flow hands the serving model's model.tar.gz to the job, so the candidate
and the model it would replace are scored by the same code on the same test images,
and the quality gate compares like with like.
"""

from __future__ import annotations

from pathlib import Path

from dagm_defects.archive import resolve_model_dir
from dagm_defects.artifact import Artifact, ArtifactError, load_artifact
from dagm_defects.data.arrays import ArraySet, load_arrays
from dagm_defects.device import Device
from dagm_defects.evaluation import metrics
from dagm_defects.model import SegDecNet
from dagm_defects.model_config import ModelConfig
from dagm_defects.placement import Canvas
from dagm_defects.training.loop import predict_arrays
from dagm_defects.training.settings import TrainingSettings


def load_baseline(settings: TrainingSettings) -> Artifact | None:
    channel = settings.channels.get("model")
    if channel is None:
        return None
    try:
        directory = resolve_model_dir(Path(channel), scratch=Path(settings.output_dir))
        return load_artifact(directory)
    except ArtifactError as exc:
        raise ArtifactError(f"input channel 'model': {exc}") from None


def warm_start(model: SegDecNet, baseline: Artifact, config: ModelConfig) -> None:
    if baseline.config != config:
        raise ArtifactError(
            f"warm_start: the 'model' channel holds a {baseline.config}, this job builds a {config}; "
            f"give matching width, depth, image_size, space_to_depth and dilated_context "
            f"hyperparameters or set warm_start=false"
        )
    model.load_state_dict(baseline.model.state_dict())


def evaluate_baseline(baseline: Artifact, test: ArraySet, batch_size: int, device: Device, workers: int,
                      canvas: Canvas | None = None) -> dict:
    """The baseline's metrics on `test`, on its own input canvas and at its own decision
    threshold; `canvas` is the one `test` was decoded onto (by default a plain resize to
    its arrays' size)."""
    if baseline.config.canvas != (canvas or Canvas(*test.images.shape[1:])):
        test = load_arrays(test.samples, baseline.config.canvas, "test", "decode test for the baseline", workers)
    scores, _ = predict_arrays(baseline.model.to(device.device), test, batch_size, device)
    summary = metrics.summarize(test.labels, scores, test.class_ids, baseline.threshold)
    summary["created_utc"] = baseline.metadata.get("created_utc")
    # The MLflow run that made the serving model, so the gate's report names both runs.
    summary["mlflow"] = baseline.metadata.get("mlflow")
    return summary
