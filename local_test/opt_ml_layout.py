"""Lay out a directory the way SageMaker lays out /opt/ml for a training job.

Standard library only, so it runs with any python3 (the Docker path needs no .venv).
Usage: opt_ml_layout.py DATA_DIR WORK_DIR [HYPERPARAMETERS_JSON_OR_FILE]
DATA_DIR becomes the `train` channel; EXTRA_CHANNELS="model=DIR,test=DIR" adds others.
"""

import json
import os
import sys
from pathlib import Path


def _hyperparameters(arg: str | None) -> dict:
    if not arg:
        return {}
    text = Path(arg).read_text() if os.path.isfile(arg) else arg
    try:
        values = json.loads(text)
    except ValueError as exc:
        sys.exit(f"error: hyperparameters are not JSON ({exc}): {text[:200]}")
    if not isinstance(values, dict):
        sys.exit("error: hyperparameters must be a JSON object, e.g. '{\"epochs\": 3}'")
    # SageMaker hands every value over as a string.
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def _channels(data_dir: Path) -> dict[str, Path]:
    channels = {"train": data_dir}
    for item in filter(None, os.environ.get("EXTRA_CHANNELS", "").split(",")):
        name, _, directory = item.partition("=")
        path = Path(directory).resolve()
        if not name.strip() or not path.is_dir():
            sys.exit(f"error: EXTRA_CHANNELS item {item!r} is not NAME=EXISTING_DIR")
        channels[name.strip()] = path
    return channels


def _link(channel: Path, target: Path) -> None:
    channel.parent.mkdir(parents=True, exist_ok=True)
    if channel.is_symlink():
        channel.unlink()
    if channel.exists():
        sys.exit(f"error: {channel} exists and is not a link; use a fresh WORK_DIR")
    channel.symlink_to(target, target_is_directory=True)


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[-1])
    data_dir, work_dir = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    if not data_dir.is_dir():
        sys.exit(f"error: DATA_DIR {data_dir} is not a directory")
    config = work_dir / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    channels = _channels(data_dir)
    for name, target in channels.items():
        _link(work_dir / "input" / "data" / name, target)
    (config / "hyperparameters.json").write_text(json.dumps(_hyperparameters(argv[2] if len(argv) == 3 else None)))
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {"ContentType": "image/png", "TrainingInputMode": "File",
               "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
        for name in channels
    }))
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": "localhost", "hosts": ["localhost"], "network_interface_name": "lo",
    }))
    for sub in ("model", "output/data", "checkpoints", "code"):
        (work_dir / sub).mkdir(parents=True, exist_ok=True)
    # A new job starts without the verdict of the previous one (checkpoints stay: resuming).
    for stale in ("failure", "success"):
        (work_dir / "output" / stale).unlink(missing_ok=True)


if __name__ == "__main__":
    main(sys.argv[1:])
