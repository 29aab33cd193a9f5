"""Shadow variants on the local AWS (local_aws/shadow.py) over real HTTP with boto3: the
production variant answers every client, sampled copies of the requests go to the shadow in
the background, and the shadow's answers land in the data capture under its own name.

Two endpoints serve the module (a start costs ~10 s): "shadowed" (production: the trained
model; shadow: an untrained one, weight 1 = every request copied; capture at 100 %) and
"solo" (the trained model alone: the baseline). The last test updates "shadowed" to a
config without the shadow."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from conftest import ONCE, endpoint_in_service, latency_within, model_tarball, noise_png, processes_tagged, upload
from conftest import aws_client as client

pytestmark = pytest.mark.slow

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
BUCKET = "dagm-shadow-tests"
TAG = "SHADOW_TEST_MODEL"
PROD, SHADOW = "prod", "cand"
FLUSH_S = 2.0  # capture.py's default flush interval


def variant(name: str, model: str, weight: float = 1.0) -> dict:
    return {"VariantName": name, "ModelName": model, "InitialVariantWeight": weight, "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large"}


@pytest.fixture(scope="module")
def endpoints(local_aws, trained_job, untrained_model) -> dict:
    sagemaker = client(local_aws, "sagemaker")
    for model, artefact in (("shadow-prod", trained_job.model_dir), ("shadow-cand", untrained_model)):
        sagemaker.create_model(ModelName=model, ExecutionRoleArn=ROLE, PrimaryContainer={
            "Image": "dagm-defects-serve:latest", "Environment": {TAG: model},
            "ModelDataUrl": upload(local_aws, f"{model}/model.tar.gz", model_tarball(artefact))})
    client(local_aws, "s3").create_bucket(Bucket=BUCKET)
    sagemaker.create_endpoint_config(
        EndpointConfigName="shadowed", ProductionVariants=[variant(PROD, "shadow-prod")],
        ShadowProductionVariants=[variant(SHADOW, "shadow-cand")],
        DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                           "DestinationS3Uri": f"s3://{BUCKET}/capture",
                           "CaptureOptions": [{"CaptureMode": "InputAndOutput"}]})
    sagemaker.create_endpoint_config(EndpointConfigName="solo", ProductionVariants=[variant(PROD, "shadow-prod")])
    sagemaker.create_endpoint(EndpointName="shadowed", EndpointConfigName="shadowed")
    sagemaker.create_endpoint(EndpointName="solo", EndpointConfigName="solo")
    return {"shadowed": endpoint_in_service(local_aws, "shadowed"), "solo": endpoint_in_service(local_aws, "solo")}


def records(url: str, endpoint: str, variant_name: str) -> list[dict]:
    s3, found = client(url, "s3"), []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"capture/{endpoint}/"
                                                                                   f"{variant_name}/"):
        for item in page.get("Contents", []):
            text = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().decode()
            found += [json.loads(line) for line in text.splitlines() if line]
    return found


def settled(url: str, endpoint: str, variant_name: str, at_least: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(records(url, endpoint, variant_name)) < at_least and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(FLUSH_S + 1.0)
    return records(url, endpoint, variant_name)


def metric_sum(url: str, endpoint: str, variant_name: str, metric: str, since: float,
               namespace: str = "AWS/SageMaker") -> float:
    points = client(url, "cloudwatch").get_metric_statistics(
        Namespace=namespace, MetricName=metric, Statistics=["Sum"], Period=60, StartTime=since,
        EndTime=time.time() + 60, Dimensions=[{"Name": "EndpointName", "Value": endpoint},
                                              {"Name": "VariantName", "Value": variant_name}])
    return sum(p["Sum"] for p in points["Datapoints"])


def next_second() -> float:
    """Wait for the next whole second and return it: CloudWatch's StartTime drops the
    fraction, so a metric sum from it holds nothing published before."""
    since = float(int(time.time()) + 1)
    time.sleep(since - time.time())
    return since


def tiny_png(i: int) -> bytes:
    return noise_png(seed=20_000 + i, size=16)


def test_configs_are_validated(local_aws, endpoints):
    loose = client(local_aws, "sagemaker", parameter_validation=False)
    cases = {
        "two-shadows": {"ProductionVariants": [variant("p", "shadow-prod")],
                        "ShadowProductionVariants": [variant("s1", "shadow-cand"), variant("s2", "shadow-cand")]},
        "two-production": {"ProductionVariants": [variant("p1", "shadow-prod"), variant("p2", "shadow-prod")],
                           "ShadowProductionVariants": [variant("s", "shadow-cand")]},
        "shadow-only": {"ShadowProductionVariants": [variant("s", "shadow-cand")]},
        "no-production": {"ProductionVariants": [], "ShadowProductionVariants": [variant("s", "shadow-cand")]},
        "same-name": {"ProductionVariants": [variant("v", "shadow-prod")],
                      "ShadowProductionVariants": [variant("v", "shadow-cand")]},
    }
    codes = {}
    for name, given in cases.items():
        with pytest.raises(ClientError) as error:
            loose.create_endpoint_config(EndpointConfigName=f"bad-{name}", **given)
        codes[name] = error.value.response["Error"]["Code"]
    assert codes == dict.fromkeys(cases, "ValidationException")  # the SageMaker API's code
    listed = {c["EndpointConfigName"] for c in client(local_aws, "sagemaker").list_endpoint_configs()[
        "EndpointConfigs"]}
    assert not {n for n in listed if n.startswith("bad-")}

    sagemaker = client(local_aws, "sagemaker")
    config = sagemaker.describe_endpoint_config(EndpointConfigName="shadowed")
    assert config["ShadowProductionVariants"] == [variant(SHADOW, "shadow-cand")]
    assert "ShadowProductionVariants" not in sagemaker.describe_endpoint_config(EndpointConfigName="solo")
    described = endpoints["shadowed"]
    summary = {"CurrentWeight": 1.0, "DesiredWeight": 1.0, "CurrentInstanceCount": 1, "DesiredInstanceCount": 1}
    assert described["ProductionVariants"] == [{"VariantName": PROD, **summary}]
    assert described["ShadowProductionVariants"] == [{"VariantName": SHADOW, **summary}]
    assert "ShadowProductionVariants" not in endpoints["solo"]


def test_production_answers_and_shadow_answers_are_captured(local_aws, endpoints):
    runtime, since, n = client(local_aws, "sagemaker-runtime"), next_second(), 12
    bodies = {str(uuid.uuid4()): tiny_png(i) for i in range(n)}
    answers, solo = {}, {}
    for inference_id, body in bodies.items():
        reply = runtime.invoke_endpoint(EndpointName="shadowed", ContentType="image/png", Body=body,
                                        InferenceId=inference_id)
        assert reply["InvokedProductionVariant"] == PROD
        answers[inference_id] = json.loads(reply["Body"].read())
        solo[inference_id] = json.loads(runtime.invoke_endpoint(EndpointName="solo", ContentType="image/png",
                                                                Body=body)["Body"].read())
    assert answers == solo

    with pytest.raises(ClientError) as error:  # the shadow is no target
        client(local_aws, "sagemaker-runtime", ONCE).invoke_endpoint(
            EndpointName="shadowed", ContentType="image/png", Body=tiny_png(0), TargetVariant=SHADOW)
    assert error.value.response["Error"]["Code"] == "ValidationError"

    production, shadow = settled(local_aws, "shadowed", PROD, n), settled(local_aws, "shadowed", SHADOW, n)
    assert len(production) == len(shadow) == n

    def by_id(found: list[dict]) -> dict[str, tuple[str, bytes, dict]]:
        return {r["eventMetadata"]["inferenceId"]: (
            r["eventMetadata"]["eventId"], base64.b64decode(r["captureData"]["endpointInput"]["data"]),
            json.loads(base64.b64decode(r["captureData"]["endpointOutput"]["data"]))) for r in found}

    production_ids, shadow_ids = by_id(production), by_id(shadow)
    assert set(production_ids) == set(shadow_ids) == set(bodies)
    for inference_id, body in bodies.items():
        assert production_ids[inference_id][:2] == shadow_ids[inference_id][:2] == (production_ids[inference_id][0],
                                                                                     body)
        assert production_ids[inference_id][2] == answers[inference_id]
        assert set(shadow_ids[inference_id][2]) == set(answers[inference_id])  # the same kind of answer
    assert metric_sum(local_aws, "shadowed", SHADOW, "Invocations", since) == n
    assert metric_sum(local_aws, "shadowed", PROD, "Invocations", since) == n


def side_by_side(url: str, runtime, count: int, seed: int) -> tuple[dict[str, list[float]], int]:
    """Latencies of "shadowed" and "solo", requests alternating one by one; client errors."""
    latencies: dict[str, list[float]] = {"shadowed": [], "solo": []}
    errors = 0
    for i in range(2 * count):
        name = ("shadowed", "solo")[i % 2]
        begin = time.perf_counter()
        try:
            reply = runtime.invoke_endpoint(EndpointName=name, ContentType="image/png", Body=tiny_png(seed + i // 2))
            assert reply["InvokedProductionVariant"] == PROD
            reply["Body"].read()
        except ClientError:
            errors += 1
        latencies[name].append(time.perf_counter() - begin)
    return latencies, errors


QUEUE = 64  # shadow.py's default LOCAL_AWS_SHADOW_QUEUE (the session's local AWS sets none)


# (fault, the fewest copies dropped, whether every shadow call errs, what a shadow call in
# the request's path would add to each request: a hang holds it for the call's whole timeout)
REQUESTS = 120  # a side, a round
BROKEN = {"hang": ({"hang": True}, REQUESTS - QUEUE - 1, False, 1.0),
          "status-500": ({"status": 500, "delay_s": 0.05}, 0, True, 0.05)}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_shadow_changes_no_answer_nor_latency(local_aws, endpoints, faults, case):
    """The shadow hangs, or answers 500 after 50 ms; "shadowed" against "solo", requests
    alternating one by one so that the machine's drift hits both alike. A shadow call in the
    request's path would hang every request, or add 50 ms and a ModelError, so the bound is
    half of what it would add, on the median and on p99: wide enough for the tail of a
    machine that runs other tests beside this one (`make test` runs two workers). A missed
    round is measured once more, which a real slowdown fails again. A hung shadow's worker
    holds its first copy: the queue fills and the rest are dropped, counted; once the fault
    goes, every copy is accounted for as a shadow invocation or a drop."""
    fault, fewest_dropped, all_err, in_path_s = BROKEN[case]
    runtime = client(local_aws, "sagemaker-runtime", ONCE)
    since = next_second()
    faults.add(endpoint="shadowed", variant=SHADOW, **fault)
    rounds, errors = [], 0
    for attempt in range(2):
        latencies, failed = side_by_side(local_aws, runtime, REQUESTS, 1000 * (attempt + 1))
        errors += failed
        rounds.append(latency_within(latencies, "shadowed", "solo", in_path_s / 2))
        if rounds[-1]["within"]:
            break
    assert errors == 0
    assert rounds[-1]["within"], rounds
    dropped = metric_sum(local_aws, "shadowed", SHADOW, "ShadowRequestsDropped", since, "LocalAWS/Shadow")
    assert dropped >= fewest_dropped * len(rounds)
    if case == "hang":  # a hung worker goes on once its fault is removed; a 500 one stays for the rest
        faults.clear()
    copies, deadline = REQUESTS * len(rounds), time.monotonic() + 30
    while (calls := metric_sum(local_aws, "shadowed", SHADOW, "Invocations", since)) + dropped < copies:
        assert time.monotonic() < deadline, (calls, dropped, copies)
        time.sleep(0.25)
    assert calls + dropped == copies
    assert metric_sum(local_aws, "shadowed", SHADOW, "Invocation5XXErrors", since) == (calls if all_err else 0)


def test_update_without_the_shadow_stops_it(local_aws, endpoints):
    """To a config of the same production variant and capture, without the shadow: the
    shadow's process stops, production's stays, and only production is captured."""
    sagemaker = client(local_aws, "sagemaker")
    sagemaker.create_endpoint_config(
        EndpointConfigName="unshadowed", ProductionVariants=[variant(PROD, "shadow-prod")],
        DataCaptureConfig=sagemaker.describe_endpoint_config(EndpointConfigName="shadowed")["DataCaptureConfig"])
    assert processes_tagged(TAG, "shadow-cand")
    shadow_captured = len(settled(local_aws, "shadowed", SHADOW, 0))
    production_captured = len(records(local_aws, "shadowed", PROD))
    sagemaker.update_endpoint(EndpointName="shadowed", EndpointConfigName="unshadowed")
    time.sleep(0.05)
    described = endpoint_in_service(local_aws, "shadowed")
    assert described["EndpointConfigName"] == "unshadowed" and "ShadowProductionVariants" not in described
    assert not processes_tagged(TAG, "shadow-cand")
    assert processes_tagged(TAG, "shadow-prod")  # production's process stays (same model)
    since, runtime = next_second(), client(local_aws, "sagemaker-runtime")
    for i in range(5):
        assert runtime.invoke_endpoint(EndpointName="shadowed", ContentType="image/png",
                                       Body=tiny_png(5000 + i))["InvokedProductionVariant"] == PROD
    assert len(settled(local_aws, "shadowed", PROD, production_captured + 5)) == production_captured + 5
    assert len(records(local_aws, "shadowed", SHADOW)) == shadow_captured
    assert metric_sum(local_aws, "shadowed", SHADOW, "Invocations", since) == 0
