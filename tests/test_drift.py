"""Drift detection: the serving workers' input statistics and drift distance, and, on the
local AWS, endpoints deployed with dagm-deploy whose recent inputs dagm-drift and the
template's drift alarm judge. In-distribution inputs do not drift; brighter, blurred or
noisier ones do."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dagm_defects.imaging import STATISTICS, image_statistics, summarize_statistics
from dagm_defects.drift import DEFECTIVE, METRICS, NAMESPACE, SCORE, Reference, statistic_scores
from dagm_defects.placement import Canvas, place
from dagm_serve.input_watch import InputWatch

from conftest import aws_client, aws_env, model_tarball, png, upload
from test_deploy import DEPLOY, deploy_command, run
from test_pipeline import template

DRIFT = [sys.executable, "-m", "dagm_deploy.drift_cli"]


def brighter(image: np.ndarray, levels: int = 40) -> np.ndarray:
    return np.clip(image.astype(np.int16) + levels, 0, 255).astype(np.uint8)


def darker(image: np.ndarray) -> np.ndarray:
    return brighter(image, -40)


def blurred(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2)))


def noisier(image: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(image.size).normal(0, 25, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def split_images(root, split: str) -> dict[int, list[np.ndarray]]:
    return {int(d.name[5:]): [np.asarray(Image.open(p)) for p in sorted(d.glob(f"{split}/*.PNG"))]
            for d in sorted(root.glob("Class*"))}


def model_input(images: list[np.ndarray], shift=None) -> np.ndarray:
    """The images (shifted first, as a camera would shift them) at the suite's model size."""
    return np.stack([place(shift(image) if shift else image, Canvas(64, 64)) for image in images])


@pytest.fixture(scope="module")
def classes(tiny_dataset):
    """The tiny dataset's training statistics per class at 64x64, and its test images."""
    train, test = split_images(tiny_dataset, "Train"), split_images(tiny_dataset, "Test")
    statistics = {"per_class": {str(c): summarize_statistics(image_statistics(model_input(images)))
                                for c, images in train.items()},
                  "overall": summarize_statistics(image_statistics(model_input(sum(train.values(), []))))}
    return statistics, test


def test_image_statistics_are_the_float_formulas():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 37, 53), dtype=np.uint8)
    images[1] = np.clip(rng.normal(90, 4, (37, 53)), 0, 255)
    images[2] = 7
    x = images.astype(np.float64).reshape(3, -1)
    low, high = np.percentile(x, [1, 99], axis=1)
    wide = images.astype(np.float64)
    expected = {"mean": x.mean(axis=1), "std": x.std(axis=1), "contrast": high - low,
                "texture": 0.5 * (np.abs(np.diff(wide, axis=2)).mean(axis=(1, 2))
                                  + np.abs(np.diff(wide, axis=1)).mean(axis=(1, 2)))}
    got = image_statistics(images)
    for name in STATISTICS:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-9, err_msg=name)


def test_drift_distance_is_low_as_trained_and_high_when_shifted(classes):
    statistics, test = classes
    reference = Reference.from_training(statistics)
    every = sum(test.values(), [])

    def score(images: np.ndarray) -> float:
        return reference.distances(image_statistics(images)).mean()

    assert score(model_input(every)) < 2 and all(score(model_input(images)) < 2 for images in test.values())
    for shift in (brighter, darker, blurred, noisier):
        assert score(model_input(every, shift)) > 4, shift.__name__
    # Half brighter, half darker: the averages hardly move, the images are foreign all the same.
    mixed = model_input([(brighter if i % 2 else darker)(image) for i, image in enumerate(every)])
    averages = {name: float(values.mean()) for name, values in image_statistics(mixed).items()}
    assert statistic_scores(averages, statistics["overall"])["mean"] < 1 and score(mixed) > 3


def test_reference_needs_usable_training_statistics(classes):
    statistics, _ = classes
    assert Reference.from_training({}) is None
    only_overall = Reference.from_training({"overall": statistics["overall"]})
    assert only_overall.means.shape == (1, len(STATISTICS))
    one_image = {name: {"mean": 1.0, "std": 0.0, "n": 1} for name in STATISTICS}
    assert Reference.from_training({"per_class": {"1": one_image}}) is None  # no spread to measure by
    with pytest.raises(ValueError, match="malformed training_statistics"):
        Reference.from_training({"overall": {"mean": {"mean": "bright"}}})
    with pytest.raises(ValueError, match="not an object"):
        Reference.from_training([1, 2])


class Recorder:
    """A CloudWatch client that keeps what it is sent, or fails every call."""

    def __init__(self, failure: Exception | None = None):
        self.calls, self.failure = [], failure

    def put_metric_data(self, **call):
        if self.failure:
            raise self.failure
        self.calls.append(call)


def test_workers_publish_statistic_sets_that_add_up(classes):
    statistics, test = classes
    cloudwatch = Recorder()
    workers = [InputWatch(statistics, "ep", "v-1", 60, cloudwatch) for _ in range(2)]
    images = model_input(test[1])
    workers[0].observe(images[:3], np.array([True, False, False]))
    workers[0].observe(images[3:5], np.array([False, False]))
    workers[1].observe(images[5:10], np.array([True] * 5))
    for worker in workers:
        worker.publish()
        worker.publish()  # an empty window sends nothing
    assert len(cloudwatch.calls) == 2 and {c["Namespace"] for c in cloudwatch.calls} == {NAMESPACE}
    totals: dict[tuple, list[float]] = {}
    for datum in (d for call in cloudwatch.calls for d in call["MetricData"]):
        key = (datum["MetricName"], tuple(d["Value"] for d in datum["Dimensions"]))
        values = datum["StatisticValues"]
        totals.setdefault(key, [0, 0.0])
        totals[key][0] += values["SampleCount"]
        totals[key][1] += values["Sum"]
        assert values["Minimum"] <= values["Sum"] / values["SampleCount"] <= values["Maximum"]
    assert totals[(DEFECTIVE, ("ep", "v-1"))] == [10, 6.0]
    per_image = image_statistics(images[:10])
    for name, metric in METRICS.items():
        count, total = totals[(metric, ("ep", "v-1"))]
        assert count == 10 and total == pytest.approx(per_image[name].sum())
    expected = Reference.from_training(statistics).distances(per_image).sum()
    assert totals[(SCORE, ("ep", "v-1"))] == totals[(SCORE, ("ep",))] == [10, pytest.approx(expected)]


def test_a_failing_cloudwatch_is_logged_once_and_never_raised(classes, caplog):
    statistics, test = classes
    watch = InputWatch(statistics, "ep", "v-1", 60, Recorder(ConnectionError("no route to CloudWatch")))
    with caplog.at_level(logging.WARNING, logger="dagm_serve.input_watch"):
        for _ in range(3):
            watch.observe(model_input(test[1][:2]), np.array([False, False]))
            watch.publish()
    assert [r.getMessage() for r in caplog.records] == [
        "input statistics not published to CloudWatch (ConnectionError): no route to CloudWatch"]


# --- end to end on the local AWS ---------------------------------------------------------------

SHIFTS = {"as-trained": (None, None), "brighter": (brighter, "mean"), "blurred": (blurred, "texture"),
          "noisier": (noisier, "texture")}


@pytest.fixture(scope="module")
def test_images(classes) -> list[np.ndarray]:
    return sum(classes[1].values(), [])


@pytest.fixture(scope="module")
def endpoints(local_aws, trained_job):
    """An endpoint per case, deployed side by side with deploy.py (workers publishing every
    second), each named `inputs-CASE`; deleted afterwards."""
    model_data = upload(local_aws, "drift/model.tar.gz", model_tarball(trained_job.model_dir))
    deploys = {case: subprocess.Popen(
        deploy_command(local_aws, f"inputs-{case}", "v1", model_data, "--model-env", "DAGM_DRIFT_PUBLISH_SECONDS=1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=aws_env(local_aws)) for case in SHIFTS}
    for deploy in deploys.values():
        output, _ = deploy.communicate(timeout=300)
        assert deploy.returncode == 0, output
    yield
    for case in SHIFTS:
        run(local_aws, *DEPLOY, "delete", "--endpoint", f"inputs-{case}")


def drift(url: str, endpoint: str, images: int) -> tuple[int, dict]:
    """dagm-drift's verdict once the workers have published all `images`."""
    deadline = time.monotonic() + 30
    while True:
        result = run(url, *DRIFT, "--endpoint", endpoint, "--minutes", "5")
        done = result.returncode != 2 and json.loads(result.stdout)[0]["images"] == images
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    [report] = json.loads(result.stdout)
    assert report["images"] == images, report
    return result.returncode, report


def drift_alarm(url: str, endpoint: str) -> str:
    """The template's DriftAlarm for `endpoint`, over 10 s instead of 3 x 5 minutes."""
    resources, parameters = template()["Resources"], template()["Parameters"]
    alarm = resources["DriftAlarm"]["Properties"]
    name = f"{endpoint}-input-drift"
    aws_client(url, "cloudwatch").put_metric_alarm(
        AlarmName=name, Namespace=alarm["Namespace"], MetricName=alarm["MetricName"],
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}], Statistic=alarm["Statistic"],
        Threshold=float(parameters["DriftThreshold"]["Default"]), ComparisonOperator=alarm["ComparisonOperator"],
        Period=10, EvaluationPeriods=1, TreatMissingData=alarm["TreatMissingData"])
    return name


def alarm_state(url: str, name: str, wanted: str) -> str:
    """The alarm's state once it is `wanted`, or after 5 s of local evaluations."""
    cloudwatch, deadline = aws_client(url, "cloudwatch"), time.monotonic() + 5
    while (state := cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["StateValue"]) != wanted:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return state


@pytest.mark.slow
@pytest.mark.parametrize("case", SHIFTS)
def test_shifted_inputs_drift_and_in_distribution_ones_do_not(local_aws, endpoints, test_images, case):
    shift, statistic = SHIFTS[case]
    endpoint = f"inputs-{case}"
    if shift is None:  # before any traffic there is nothing to judge by
        idle = run(local_aws, *DRIFT, "--endpoint", endpoint, "--minutes", "5")
        assert idle.returncode == 2 and "published no input statistics" in idle.stderr, idle.stderr
    alarm = drift_alarm(local_aws, endpoint)
    runtime = aws_client(local_aws, "sagemaker-runtime")

    def invoke(image: np.ndarray) -> None:
        reply = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="image/png",
                                        Body=png(shift(image) if shift else image))
        json.loads(reply["Body"].read())["predictions"]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(invoke, test_images))
    code, report = drift(local_aws, endpoint, len(test_images))
    assert report["variant"] == "v-v1" and set(report["statistics"]) == set(STATISTICS)
    # The verdict is --threshold's: at twice the score, the same inputs have not drifted.
    lenient = 2 * report["drift_score"]
    judged = run(local_aws, *DRIFT, "--endpoint", endpoint, "--variant", "v-v1", "--minutes", "5",
                 "--threshold", str(lenient))
    assert judged.returncode == 0, judged.stdout + judged.stderr
    [same] = json.loads(judged.stdout)
    assert (same["variant"], same["images"], same["drift_score"]) == ("v-v1", len(test_images), report["drift_score"])
    assert (same["threshold"], same["drifted"], same["strength"]) == (lenient, False, "none"), same
    assert 0.0 <= report["defective_share"]["recent"] <= 1.0
    if shift is None:
        assert code == 0 and not report["drifted"] and report["strength"] == "none", report
        assert report["drift_score"] < 2, report
        assert alarm_state(local_aws, alarm, "OK") == "OK"
        return
    assert code == 1 and report["drifted"] and report["drift_score"] > 4, report
    scores = {name: s["score"] for name, s in report["statistics"].items()}
    assert max(scores, key=scores.get) == statistic, scores
    assert alarm_state(local_aws, alarm, "ALARM") == "ALARM"


@pytest.mark.slow
def test_drift_says_why_it_cannot_tell(local_aws, endpoints):
    result = run(local_aws, *DRIFT, "--endpoint", "no-such-endpoint")
    assert result.returncode == 2 and "no such endpoint" in result.stderr
    result = run(local_aws, *DRIFT, "--endpoint", "inputs-as-trained", "--variant", "v-v0")
    assert result.returncode == 2 and "endpoint inputs-as-trained has no variant v-v0" in result.stderr, result.stderr
    result = run(local_aws, *DRIFT, "--endpoint", "e", "--minutes", "0")
    assert result.returncode == 2 and "--minutes 0: expected 1 to 1440" in result.stderr
