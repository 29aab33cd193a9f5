"""Everything a training run needs, read once from the SageMaker training environment.

The sagemaker-training toolkit knows the ``/opt/ml`` contract (``SAGEMAKER_BASE_DIR``,
config files, channels); we take its ``Environment`` and turn it into one typed,
validated object. Worker processes started by torchrun receive the same object as JSON,
so nothing is parsed twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from dagm_defects.tracking.settings import TrackingSettings, tracking_settings
from dagm_defects.training.hyperparameters import Hyperparameters, parse_hyperparameters

CHANNELS = ("train", "validation", "test", "model")
SETTINGS_ENV = "DAGM_TRAINING_SETTINGS"
DEFAULT_MASTER_PORT = 29500


class ChannelError(ValueError):
    """A missing, empty or unsupported input channel."""


@dataclass(frozen=True)
class TrainingSettings:
    hyperparameters: Hyperparameters
    channels: dict[str, str]
    model_dir: str
    output_data_dir: str
    output_dir: str
    checkpoint_dir: str
    hosts: tuple[str, ...]
    current_host: str
    num_gpus: int
    num_cpus: int
    tracking: TrackingSettings
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def processes_per_host(self) -> int:
        requested = self.hyperparameters.processes_per_host
        return requested or max(1, self.num_gpus)

    @property
    def decode_workers(self) -> int:
        return self.hyperparameters.data_workers or min(4, self.num_cpus)

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.processes_per_host

    @property
    def failure_file(self) -> Path:
        return Path(self.output_dir) / "failure"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrainingSettings":
        data = json.loads(text)
        hp = data.pop("hyperparameters")
        if hp.get("classes") is not None:
            hp["classes"] = tuple(hp["classes"])
        hp["stop_on_rules"] = tuple(hp["stop_on_rules"])
        return cls(hyperparameters=Hyperparameters(**hp), hosts=tuple(data.pop("hosts")),
                   tracking=TrackingSettings(**data.pop("tracking")), **data)


def _check_channels(channels: dict[str, str], input_config: dict) -> None:
    if "train" not in channels:
        given = ", ".join(sorted(channels)) or "none"
        raise ChannelError(f"missing required input channel 'train' (channels given: {given})")
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown:
        raise ChannelError(
            f"unknown input channel(s) {', '.join(unknown)}; this image reads "
            f"'train' (required), 'validation', 'test' and 'model' (a model.tar.gz to compare "
            f"against or warm-start from)"
        )
    for name, path in channels.items():
        mode = input_config.get(name, {}).get("TrainingInputMode", "File")
        if mode == "Pipe":
            raise ChannelError(
                f"channel '{name}' uses TrainingInputMode Pipe; this image reads files: "
                f"use File or FastFile"
            )
        directory = Path(path)
        if not directory.is_dir() or not any(directory.iterdir()):
            raise ChannelError(f"channel '{name}' is empty: nothing found in {path}")


def _check_warm_start(hyperparameters: Hyperparameters, channels: dict[str, str]) -> None:
    if hyperparameters.warm_start and "model" not in channels:
        raise ChannelError("hyperparameter warm_start=true needs a 'model' channel holding the model to start from")


def settings_from_toolkit() -> TrainingSettings:
    """Read the environment the way the sagemaker-training toolkit lays it out."""
    # Imported here, not at module level: importing it creates /opt/ml directories.
    from sagemaker_training import environment

    env = environment.Environment()
    hyperparameters = parse_hyperparameters(env.hyperparameters)
    channels = {name: str(path) for name, path in env.channel_input_dirs.items()}
    _check_channels(channels, env.input_data_config)
    _check_warm_start(hyperparameters, channels)
    # The toolkit sets SM_* for script-mode children only; our code and anything it
    # starts see the same contract this way.
    os.environ.update({k: str(v) for k, v in env.to_env_vars().items()})
    checkpoint_dir = os.path.join(environment.base_dir, "checkpoints")
    for directory in (env.model_dir, env.output_data_dir, checkpoint_dir):
        os.makedirs(directory, exist_ok=True)
    settings = TrainingSettings(
        hyperparameters=hyperparameters,
        channels=channels,
        model_dir=env.model_dir,
        output_data_dir=env.output_data_dir,
        output_dir=env.output_dir,
        checkpoint_dir=checkpoint_dir,
        hosts=tuple(env.hosts),
        current_host=env.current_host,
        num_gpus=env.num_gpus,
        num_cpus=env.num_cpus,
        tracking=tracking_settings(hyperparameters.tracking, env.output_data_dir, hyperparameters.mlflow_experiment,
                                   env.job_name, datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")),
    )
    port = os.environ.get("DAGM_MASTER_PORT")
    return replace(settings, master_port=int(port)) if port else settings
