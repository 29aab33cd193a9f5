"""Shipping the model: the pipeline's Train stage, canary rollouts onto a SageMaker
endpoint with automatic rollback, retraining on the quality team's profiles, and the
drift report. Control-plane code only: it never imports the serving package.

Entry points (console scripts, or `python -m dagm_deploy`):
- dagm-deploy: cli.py (rollout.py, guardrails.py, alarms.py, lock.py, autoscaling.py, status.py)
- dagm-train-stage: train_stage.py
- dagm-retrain: retrain.py
- dagm-drift: drift.py
"""
