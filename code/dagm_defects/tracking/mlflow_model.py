"""The trained model as an MLflow model: ``mlflow.pyfunc.load_model(...).predict(images)``
takes N x S x S uint8 images at the model's input size and returns each image's defect
score and decision, as the serving endpoint decides them.

The model directory (``model.pt``, ``model.json``) travels as the MLflow model's artefact,
and the ``dagm_defects`` package as its code, so it loads wherever torch is installed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

import dagm_defects

MODEL_ARTIFACT = "model"


class DefectModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from dagm_defects.artifact import load_artifact
        from dagm_defects.model import inference_copy

        artifact = load_artifact(context.artifacts[MODEL_ARTIFACT])
        self.model = inference_copy(artifact.model).eval()
        self.threshold = artifact.threshold

    def predict(self, context, model_input: np.ndarray, params=None) -> dict[str, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.uint8)).unsqueeze(1)
        with torch.inference_mode():
            _, dec_logits = self.model(images)
        scores = torch.sigmoid(dec_logits.float()).numpy()
        return {"score": scores, "defective": scores >= self.threshold}


def signature(image_size: tuple[int, int]) -> ModelSignature:
    """Input: N x height x width uint8 images, already placed on the model's canvas."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,), "score"),
                        TensorSpec(np.dtype(np.bool_), (-1,), "defective")]),
    )


def save_mlflow_model(path: str | Path, model_dir: str | Path, image_size: tuple[int, int]) -> Path:
    """Write the MLflow model for the model directory `model_dir` to `path`."""
    from importlib import metadata

    # Given explicitly: MLflow's inference of requirements loads the model in a subprocess.
    requirements = [f"{name}=={metadata.version(name)}" for name in ("torch", "numpy", "pillow")]
    with warnings.catch_warnings():
        # MLflow warns that predict's untyped input goes unchecked; the explicit signature checks it.
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            str(path), python_model=str(Path(__file__).with_name("model_code.py")),
            artifacts={MODEL_ARTIFACT: str(model_dir)}, code_paths=[str(Path(dagm_defects.__file__).parent)],
            signature=signature(image_size), pip_requirements=requirements,
        )
    return Path(path)
