"""Hyperparameter parsing: both encodings SageMaker produces, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dagm_defects.training.hyperparameters import HyperparameterError, parse_hyperparameters


def test_defaults_when_nothing_is_given():
    hp = parse_hyperparameters({})
    assert hp.epochs == 10 and hp.classes is None and hp.image_size == "native" and hp.space_to_depth == 2


@pytest.mark.parametrize("raw", ["0.01", '"0.01"', 0.01])
def test_plain_and_json_encoded_values_are_equal(raw):
    assert parse_hyperparameters({"learning_rate": raw}).learning_rate == 0.01


@pytest.mark.parametrize("raw,expected", [
    ("all", None), ('"all"', None), ("1,3,7", (1, 3, 7)), ("[7, 1]", (1, 7)), ([2, 2, 5], (2, 5)),
    ("3", (3,)), (3, (3,)),
])
def test_class_selection_forms(raw, expected):
    assert parse_hyperparameters({"classes": raw}).classes == expected


def test_platform_keys_are_ignored():
    hp = parse_hyperparameters({"sagemaker_program": "x", "_tuning_objective_metric": "val_ap"})
    assert hp == parse_hyperparameters({})


@pytest.mark.parametrize("key,value,message", [
    ("epochs", "ten", "'epochs' must be a whole number >= 1"),
    ("epochs", "2.5", "'epochs' must be a whole number"),
    ("batch_size", "0", "'batch_size' must be a whole number >= 1"),
    ("learning_rate", "-1", "'learning_rate' must be a number > 0"),
    ("learning_rate", "nan", "'learning_rate' must be a number > 0"),
    ("image_size", "100", "'image_size' must be a multiple of 64 and >= 128 with space_to_depth 2"),
    ("space_to_depth", "3", "'space_to_depth' must be one of 1, 2, 4"),
    ("classes", "0,11", "'classes' must be \"all\" or a comma-separated list"),
    ("classes", "one", "'classes' must be"),
    ("amp", "maybe", "'amp' must be one of \"auto\", \"true\", \"false\""),
    ("validation_fraction", "1.5", "'validation_fraction' must be a number > 0 and <= 0.9"),
])
def test_malformed_values_name_key_and_form(key, value, message):
    with pytest.raises(HyperparameterError, match=message.replace("(", r"\(")):
        parse_hyperparameters({key: value})


def test_every_problem_is_reported_at_once():
    with pytest.raises(HyperparameterError) as info:
        parse_hyperparameters({"epochs": "x", "batchsize": "4"})
    assert "'epochs'" in str(info.value) and "did you mean 'batch_size'" in str(info.value)


def test_image_size_rule_follows_the_stem():
    assert parse_hyperparameters({"image_size": "96", "space_to_depth": "1"}).image_size == (96, 96)
    with pytest.raises(HyperparameterError, match="multiple of 128 and >= 256 with space_to_depth 4"):
        parse_hyperparameters({"image_size": "192", "space_to_depth": "4"})


@pytest.mark.parametrize("name", ["real-cpu.json", "real-gpu.json"])
def test_committed_configurations_parse(name):
    path = Path(__file__).resolve().parents[1] / "local_test" / "hyperparameters" / name
    hp = parse_hyperparameters(json.loads(path.read_text()))
    assert hp.image_size == {"real-cpu.json": "native", "real-gpu.json": (512, 512)}[name]


def test_defaults_are_the_cpu_recipe():
    path = Path(__file__).resolve().parents[1] / "local_test" / "hyperparameters" / "real-cpu.json"
    assert parse_hyperparameters(json.loads(path.read_text())) == parse_hyperparameters({})
