"""Training hyperparameters: parsed and validated once, into a typed object.

SageMaker hands every value over as a string, and the SDK JSON-encodes them, so both
``"0.1"`` and ``"\\"0.1\\""`` arrive (the toolkit strips one JSON layer before we see
them). Each field says what it accepts; a bad value fails with the key and the
expected form, an unknown key with the closest known one.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from dagm_defects.model_config import NATIVE, ModelConfig, image_size_requirement
from dagm_defects.placement import Canvas
from dagm_defects.training.rules import RULES
from dagm_defects.training.supervision import CHOICES as SUPERVISION_CHOICES

ALL_CLASSES = tuple(range(1, 11))


class HyperparameterError(ValueError):
    """A hyperparameter that is unknown or does not have the expected form."""


def _text(value: Any) -> str:
    # Strip any JSON string layers the SDK added ("\"5\"" -> "5").
    while isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            break
        if decoded == value or isinstance(decoded, (dict, type(None))):
            break
        value = decoded
    return value if isinstance(value, str) else json.dumps(value)


def _integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        text = _text(value).strip()
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            raise ValueError
        return number

    parse.expected = f"a whole number >= {low}" + (f" and <= {high}" if high is not None else "")
    return parse


def _real(low: float, high: float, low_open: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        number = float(_text(value).strip())
        if number != number or number > high or number < low or (low_open and number == low):
            raise ValueError
        return number

    parse.expected = f"a number {'>' if low_open else '>='} {low:g} and <= {high:g}"
    return parse


def _classes(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        text = _text(value).strip().strip("[]")
        if text.lower() == "all":
            return None
        items = [part for part in text.replace(" ", ",").split(",") if part]
    chosen = sorted({int(item) for item in items})
    if not chosen or any(c not in ALL_CLASSES for c in chosen):
        raise ValueError
    return tuple(chosen)


_classes.expected = '"all" or a comma-separated list of class numbers 1..10, e.g. "1,3,7"'


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value).strip().lower()
        if text not in options:
            raise ValueError
        return text

    parse.expected = "one of " + ", ".join(f'"{o}"' for o in options)
    return parse


def _boolean(value: Any) -> bool:
    text = _text(value).strip().lower()
    if text not in ("true", "false"):
        raise ValueError
    return text == "true"


_boolean.expected = '"true" or "false"'


def _one_of(*options: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = int(_text(value).strip())
        if number not in options:
            raise ValueError
        return number

    parse.expected = "one of " + ", ".join(map(str, options))
    return parse


def _rule_names(value: Any) -> tuple[str, ...]:
    text = _text(value).strip().lower()
    if text == "false":
        return ()
    if text == "true":
        return tuple(RULES)
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names or any(name not in RULES for name in names):
        raise ValueError
    return names


_rule_names.expected = '"false", "true" (every rule) or a comma-separated list of rule names: ' + ", ".join(RULES)


def _rule_parameters(value: Any) -> dict[str, dict[str, float]]:
    """{"rule": {"parameter": number}}: the rule's defaults for the others."""
    data = json.loads(_text(value)) if isinstance(value, str) else value
    if not isinstance(data, dict):
        raise ValueError
    parsed = {}
    for rule, parameters in data.items():
        spec = RULES.get(rule)
        if spec is None or not isinstance(parameters, dict) or not parameters:
            raise ValueError
        for name, number in parameters.items():
            if name not in spec.defaults or isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ValueError
        parsed[rule] = {name: float(number) for name, number in parameters.items()}
    return parsed


_rule_parameters.expected = ("a JSON object of rule name to {parameter: number}; the rules and their parameters: "
                             + "; ".join(f"{n} ({', '.join(s.defaults) or 'none'})" for n, s in RULES.items()))


def _name(value: Any) -> str:
    text = _text(value).strip()
    if not text or len(text) > 200:
        raise ValueError
    return text


_name.expected = "a non-empty name of at most 200 characters"


def _image_size(value: Any) -> tuple[int, int] | str:
    """(height, width) from "512" (a square) or "384x1024", or "native"."""
    text = _text(value).strip().lower()
    if text == NATIVE:
        return NATIVE
    height, sep, width = text.partition("x")
    sides = (int(height), int(width if sep else height))
    if not all(64 <= side <= 4096 for side in sides):
        raise ValueError
    return sides


_image_size.expected = ('a whole number 64..4096 (a square, e.g. "512"), HEIGHTxWIDTH (e.g. "384x1024") '
                        'or "native" (each image at its own scale, padded to the largest training image)')


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "epochs": _integer(1, 10_000),
    "batch_size": _integer(1, 4096),
    "learning_rate": _real(0.0, 10.0, low_open=True),
    "image_size": _image_size,
    "classes": _classes,
    "seed": _integer(0),
    "width": _real(0.01, 4.0),
    "depth": _real(0.25, 4.0),
    "space_to_depth": _one_of(1, 2, 4),
    "dilated_context": _boolean,
    "validation_fraction": _real(0.0, 0.9, low_open=True),
    "processes_per_host": _integer(0, 64),
    "amp": _choice("auto", "true", "false"),
    "data_workers": _integer(0, 64),
    "warm_start": _boolean,
    "stop_on_rules": _rule_names,
    "rule_parameters": _rule_parameters,
    "tracking": _boolean,
    "mlflow_experiment": _name,
    "supervision": _choice(*SUPERVISION_CHOICES),
    "max_false_reject": _real(0.0, 0.5, low_open=True),
}


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-3
    # The recipe for genuine DAGM on a CPU (local_test/hyperparameters/real-cpu.json): the
    # full 512x512 image folded 2x2 into channels keeps 1-px scratches at the cost of a
    # 256x256 input; resizing to 256 instead averages them away.
    # (height, width), or "native": the canvas is read off the training images when the
    # job starts (model_config.training_canvas). On DAGM's 512x512 images native is the
    # 512x512 canvas; on magnetic tile photographs (100-630 px, any aspect) it lifted Test AP
    # from 0.63 (stretched to 512x512) to 0.75.
    image_size: tuple[int, int] | str = NATIVE
    # None: every class the train channel holds.
    classes: tuple[int, ...] | None = None
    seed: int = 0
    width: float = 0.125
    depth: float = 1.0
    space_to_depth: int = 2
    # A dilated 5x5 instead of the reference's dense 15x15 context convolution (model.py).
    dilated_context: bool = True
    validation_fraction: float = 0.2
    # 0 means one process per GPU, or one on a CPU-only host.
    processes_per_host: int = 0
    # "auto" uses bf16 autocast on CUDA and full precision on the CPU.
    amp: str = "auto"
    # 0 means min(4, CPUs) processes for decoding the dataset once into memory.
    data_workers: int = 0
    # Start from the weights in the `model` channel (same architecture) instead of at random.
    warm_start: bool = False
    # The rules (training/rules.py) whose firing ends the job with exit code 1.
    stop_on_rules: tuple[str, ...] = ()
    rule_parameters: dict[str, dict[str, float]] = field(default_factory=dict)
    # An MLflow run, the rules and the training report for the job; false trains as before.
    tracking: bool = True
    # None: $MLFLOW_EXPERIMENT_NAME, else "dagm-defects".
    mlflow_experiment: str | None = None
    # Which labels to learn from (training/supervision.py); "auto" reads it off the data.
    supervision: str = "auto"
    # The served threshold rejects at most this share of held-out good images
    # (training/threshold.py).
    max_false_reject: float = 0.01

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def model_config(self, canvas: Canvas | None = None) -> ModelConfig:
        """The architecture these hyperparameters build, for the job's `canvas`
        (model_config.training_canvas); without it, for the requested size."""
        if canvas is None:
            if self.image_size == NATIVE:
                raise ValueError("image_size 'native' is sized from the training images: "
                                 "pass model_config the job's training_canvas")
            canvas = Canvas(*self.image_size)
        return ModelConfig(width=self.width, depth=self.depth, image_size=canvas.shape,
                           placement="pad" if canvas.pad else "resize", placement_scale=canvas.scale,
                           space_to_depth=self.space_to_depth, dilated_context=self.dilated_context)


def _is_platform_key(key: str) -> bool:
    # SageMaker adds these (sagemaker_program, _tuning_objective_metric, ...).
    return key.startswith(("sagemaker_", "_"))


def parse_hyperparameters(raw: dict[str, Any]) -> Hyperparameters:
    """Build Hyperparameters from the job's values, or raise one error naming every bad key."""
    problems = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if _is_platform_key(key):
            continue
        parser = _PARSERS.get(key)
        if parser is None:
            close = difflib.get_close_matches(key, _PARSERS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(
                f"unknown hyperparameter '{key}'{hint}; known: {', '.join(sorted(_PARSERS))}"
            )
            continue
        try:
            values[key] = parser(value)
        except (ValueError, TypeError):
            problems.append(
                f"hyperparameter '{key}' must be {parser.expected}, got {json.dumps(value)}"
            )
    size = values.get("image_size", Hyperparameters.image_size)
    space_to_depth = values.get("space_to_depth", Hyperparameters.space_to_depth)
    square = size != NATIVE and size[0] == size[1]
    sides = () if size == NATIVE else (("", size[0]),) if square else ((" height", size[0]), (" width", size[1]))
    for name, side in sides:
        requirement = image_size_requirement(side, space_to_depth)
        if requirement:
            problems.append(f"hyperparameter 'image_size'{name} must be {requirement}, got {side}")
    if problems:
        raise HyperparameterError("; ".join(problems))
    return Hyperparameters(**values)
