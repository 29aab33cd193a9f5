"""The SageMaker training entry: settings, data split, loop, checkpoints, artefact."""
