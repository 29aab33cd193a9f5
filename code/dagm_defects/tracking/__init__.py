"""MLflow tracking of training jobs: the job's run, its MLflow model, moving runs to a server."""
