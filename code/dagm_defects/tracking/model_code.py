"""The file MLflow runs to build the model when it loads it (MLflow's "models from code":
no pickled Python object in the model). Never imported by the project itself."""

from mlflow.models import set_model

from dagm_defects.tracking.mlflow_model import DefectModel

set_model(DefectModel())
