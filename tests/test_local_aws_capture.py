"""Data capture on the local AWS (local_aws/capture.py) over real HTTP with boto3: sampled
InvokeEndpoint (and InvokeEndpointAsync) requests and answers land in S3 as SageMaker's
JSON lines under DestinationS3Uri/ENDPOINT/VARIANT/yyyy/mm/dd/hh/, per the endpoint's
current config; a failing capture write loses captures (counted in a metric), never a
client's request, and does not slow requests.

One endpoint serves the module (a start costs ~10 s); each test switches it to the
endpoint config it needs with UpdateEndpoint, which keeps the running serve process (same
model), so the switches are quick and every test measures the same process."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from botocore.exceptions import ClientError

from conftest import aws_client as client
from conftest import endpoint_in_service, latency_within, model_tarball, noise_png, png, upload

pytestmark = pytest.mark.slow

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
ENDPOINT = "capture"
VARIANT = "main"
BUCKET = "dagm-capture-tests"
FLUSH_S = 2.0  # capture.py's default LOCAL_AWS_CAPTURE_FLUSH_SECONDS (the session's local AWS sets none)
LOST = {"Namespace": "LocalAWS/DataCapture", "MetricName": "CaptureRecordsLost"}
JSON_TYPES = {"JsonContentTypes": ["application/json"]}
KEY = re.compile(r"(?P<prefix>.+)/capture/main/(?P<hour>\d{4}/\d{2}/\d{2}/\d{2})/\d{2}-\d{2}-\d{3}-"
                 r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.jsonl")


def capture_config(destination: str, percent: int = 100, modes: tuple[str, ...] = ("InputAndOutput",),
                   **extra) -> dict:
    return {"EnableCapture": True, "InitialSamplingPercentage": percent, "DestinationS3Uri": destination,
            "CaptureOptions": [{"CaptureMode": m} for m in modes], **extra}


def make_config(url: str, name: str, capture: dict | None, validate: bool = True, **extra) -> str:
    """An endpoint config of the module's model (one variant), with `capture` if given;
    validate=False: botocore sends it unchecked (the server's validation answers)."""
    more = {"DataCaptureConfig": capture} if capture else {}
    client(url, "sagemaker", parameter_validation=validate).create_endpoint_config(
        EndpointConfigName=name, **more, **extra, ProductionVariants=[{
            "VariantName": VARIANT, "ModelName": "capture-model", "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large"}])
    return name


def switch(url: str, config: str, name: str = ENDPOINT) -> dict:
    """UpdateEndpoint to `config` and wait until it is the endpoint's current config."""
    client(url, "sagemaker").update_endpoint(EndpointName=name, EndpointConfigName=config)
    time.sleep(0.05)
    described = endpoint_in_service(url, name)
    assert described["EndpointConfigName"] == config and "FailureReason" not in described, described
    return described


@pytest.fixture(scope="module")
def endpoint(local_aws, trained_job) -> str:
    sagemaker = client(local_aws, "sagemaker")
    sagemaker.create_model(ModelName="capture-model", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": "dagm-defects-serve:latest",
        "ModelDataUrl": upload(local_aws, "capture-model/model.tar.gz", model_tarball(trained_job.model_dir))})
    client(local_aws, "s3").create_bucket(Bucket=BUCKET)
    make_config(local_aws, "capture-none", None)
    sagemaker.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="capture-none")
    endpoint_in_service(local_aws, ENDPOINT)
    return ENDPOINT


def records(url: str, prefix: str) -> list[tuple[str, dict]]:
    """(object key, record) of every captured line under s3://BUCKET/prefix."""
    s3 = client(url, "s3")
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            text = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().decode()
            found += [(item["Key"], json.loads(line)) for line in text.splitlines() if line]
    return found


def settled_records(url: str, prefix: str, at_least: int = 0, timeout: float = 30) -> list[tuple[str, dict]]:
    """The records under `prefix` once `at_least` are there and one more flush added nothing."""
    deadline = time.monotonic() + timeout
    while len(records(url, prefix)) < at_least and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(FLUSH_S + 1.0)
    return records(url, prefix)


def invoke(runtime, body: bytes, inference_id: str | None = None, endpoint: str = ENDPOINT) -> bytes:
    extra = {"InferenceId": inference_id} if inference_id else {}
    reply = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="image/png", Body=body, **extra)
    assert reply["InvokedProductionVariant"] == VARIANT
    return reply["Body"].read()


def invoke_all(url: str, bodies: list[bytes], threads: int = 4) -> list[bytes]:
    runtime = client(url, "sagemaker-runtime", max_pool_connections=threads)
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda body: invoke(runtime, body), bodies))


def tiny_png(i: int) -> bytes:
    """A distinct 16x16 noise PNG (the model resizes it): cheap to send, decode and capture."""
    return noise_png(seed=10_000 + i, size=16)


def lost_counts(url: str, since: float, endpoints) -> dict[str, float]:
    """The CaptureRecordsLost sums of each endpoint's variant since `since`."""
    cloudwatch, sums = client(url, "cloudwatch"), {}
    for name in endpoints:
        points = cloudwatch.get_metric_statistics(
            **LOST, Statistics=["Sum"], Period=60, StartTime=since - 60, EndTime=time.time() + 60,
            Dimensions=[{"Name": "EndpointName", "Value": name}, {"Name": "VariantName", "Value": VARIANT}])
        sums[name] = sum(p["Sum"] for p in points["Datapoints"])
    return sums


def test_configs_are_validated_and_described(local_aws, endpoint):
    sagemaker = client(local_aws, "sagemaker")
    given = capture_config(f"s3://{BUCKET}/described", 40, ("Input", "Output"), KmsKeyId="alias/capture",
                           CaptureContentTypeHeader={"CsvContentTypes": ["text/csv"], **JSON_TYPES})
    make_config(local_aws, "capture-described", given)
    assert sagemaker.describe_endpoint_config(EndpointConfigName="capture-described")["DataCaptureConfig"] == given
    assert "DataCaptureConfig" not in sagemaker.describe_endpoint_config(EndpointConfigName="capture-none")

    described = switch(local_aws, "capture-described")
    assert described["DataCaptureConfig"] == {
        "EnableCapture": True, "CaptureStatus": "Started", "CurrentSamplingPercentage": 40,
        "DestinationS3Uri": f"s3://{BUCKET}/described", "KmsKeyId": "alias/capture"}
    make_config(local_aws, "capture-stopped", {**capture_config(f"s3://{BUCKET}/stopped"), "EnableCapture": False})
    assert switch(local_aws, "capture-stopped")["DataCaptureConfig"]["CaptureStatus"] == "Stopped"
    assert "DataCaptureConfig" not in switch(local_aws, "capture-none")

    refused = {
        "101 %": capture_config(f"s3://{BUCKET}/x", 101),
        "no options": capture_config(f"s3://{BUCKET}/x", modes=()),
        "bad mode": capture_config(f"s3://{BUCKET}/x", modes=("Everything",)),
        "bad destination": capture_config("ftp://somewhere/x"),
        "bad content type": capture_config(f"s3://{BUCKET}/x", CaptureContentTypeHeader={"JsonContentTypes": ["json"]}),
        "no destination": {"InitialSamplingPercentage": 5, "CaptureOptions": [{"CaptureMode": "Input"}]},
    }
    for case, config in refused.items():
        with pytest.raises(ClientError) as error:
            make_config(local_aws, f"capture-refused-{len(case)}", config, validate=False)
        assert error.value.response["Error"]["Code"].startswith("Validation"), case


def test_at_100_percent_every_request_is_captured_as_sent_and_answered(local_aws, endpoint):
    make_config(local_aws, "capture-all", capture_config(f"s3://{BUCKET}/all",
                                                         CaptureContentTypeHeader=JSON_TYPES))
    switch(local_aws, "capture-all")
    # Defect-free-looking flat images and noise, each distinct; every third with an InferenceId.
    bodies = [png(np.full((64, 64), 60 + i, dtype=np.uint8)) if i % 2 else noise_png(seed=i, size=64)
              for i in range(30)]
    ids = [f"req-{i}-{uuid.uuid4().hex[:8]}" if i % 3 == 0 else None for i in range(30)]
    runtime = client(local_aws, "sagemaker-runtime", max_pool_connections=4)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda pair: invoke(runtime, *pair), zip(bodies, ids)))

    found = settled_records(local_aws, "all", at_least=30)
    assert len(found) == 30
    sent = {body: (answer, inference_id) for body, answer, inference_id in zip(bodies, answers, ids)}
    event_ids = set()
    for key, record in found:
        layout = KEY.fullmatch(key)
        assert layout and layout["prefix"] == "all", key
        metadata = record["eventMetadata"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", metadata["inferenceTime"])
        assert layout["hour"] == metadata["inferenceTime"][:13].replace("-", "/").replace("T", "/")
        assert record["eventVersion"] == "0"
        event_ids.add(str(uuid.UUID(metadata["eventId"])))
        given, answered = record["captureData"]["endpointInput"], record["captureData"]["endpointOutput"]
        assert (given["mode"], given["encoding"], given["observedContentType"]) == ("INPUT", "BASE64", "image/png")
        assert (answered["mode"], answered["encoding"]) == ("OUTPUT", "JSON")
        assert answered["observedContentType"].startswith("application/json")
        answer, inference_id = sent.pop(base64.b64decode(given["data"]))
        assert answered["data"].encode() == answer
        assert metadata.get("inferenceId") == inference_id
    assert not sent and len(event_ids) == 30


def test_sampling_at_20_percent_stays_within_binomial_bounds(local_aws, endpoint):
    make_config(local_aws, "capture-20", capture_config(f"s3://{BUCKET}/sampled", 20))
    switch(local_aws, "capture-20")
    requests, share = 1000, 0.2
    invoke_all(local_aws, [tiny_png(i) for i in range(requests)])
    count = len(settled_records(local_aws, "sampled"))
    mean, sigma = requests * share, (requests * share * (1 - share)) ** 0.5
    assert mean - 4.5 * sigma <= count <= mean + 4.5 * sigma, count


def test_update_endpoint_switches_and_stops_capture(local_aws, endpoint):
    make_config(local_aws, "capture-first", capture_config(f"s3://{BUCKET}/first"))
    make_config(local_aws, "capture-second", capture_config(f"s3://{BUCKET}/second", 50))
    switch(local_aws, "capture-first")
    invoke_all(local_aws, [tiny_png(2000 + i) for i in range(10)])
    assert len(settled_records(local_aws, "first", at_least=10)) == 10

    described = switch(local_aws, "capture-second")
    assert described["DataCaptureConfig"]["CurrentSamplingPercentage"] == 50
    invoke_all(local_aws, [tiny_png(3000 + i) for i in range(100)])
    second = len(settled_records(local_aws, "second", at_least=1))
    assert 20 <= second <= 80  # 50 % of 100: mean 50, sigma 5
    assert len(records(local_aws, "first")) == 10  # the old destination got nothing more

    assert "DataCaptureConfig" not in switch(local_aws, "capture-none")
    invoke_all(local_aws, [tiny_png(4000 + i) for i in range(20)])
    time.sleep(FLUSH_S + 1.0)
    assert (len(records(local_aws, "first")), len(records(local_aws, "second"))) == (10, second)


def test_input_only_capture_writes_no_output(local_aws, endpoint):
    make_config(local_aws, "capture-input", capture_config(f"s3://{BUCKET}/input-only", modes=("Input",)))
    switch(local_aws, "capture-input")
    bodies = [tiny_png(5000 + i) for i in range(5)]
    invoke_all(local_aws, bodies)
    found = settled_records(local_aws, "input-only", at_least=5)
    assert len(found) == 5
    assert all(set(record["captureData"]) == {"endpointInput"} for _, record in found)
    assert sorted(base64.b64decode(r["captureData"]["endpointInput"]["data"]) for _, r in found) == sorted(bodies)


def test_async_invocations_are_captured_with_their_inference_id(local_aws, endpoint):
    make_config(local_aws, "capture-async", capture_config(f"s3://{BUCKET}/async", CaptureContentTypeHeader=JSON_TYPES),
                AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": f"s3://{BUCKET}/async-results"}})
    switch(local_aws, "capture-async")
    runtime = client(local_aws, "sagemaker-runtime")
    sent = {}
    for i in range(3):
        body = tiny_png(6000 + i)
        location = upload(local_aws, f"async-inputs/{i}.png", body, bucket=BUCKET)
        reply = runtime.invoke_endpoint_async(EndpointName=ENDPOINT, InputLocation=location, ContentType="image/png",
                                              InferenceId=f"async-{i}")
        sent[reply["InferenceId"]] = body
    found = settled_records(local_aws, "async", at_least=3)
    assert {r["eventMetadata"]["inferenceId"]: base64.b64decode(r["captureData"]["endpointInput"]["data"])
            for _, r in found} == sent
    assert all(r["captureData"]["endpointOutput"]["encoding"] == "JSON" for _, r in found)


STALL_S = 0.2  # the injected S3 stall of each capture write


def test_failed_capture_writes_lose_captures_not_requests_nor_latency(local_aws, endpoint, faults):
    """Capture on (100 %, every S3 write of it failing after a 0.2 s stall) against capture
    off, side by side: two endpoints of the same model, requests alternating one by one
    between them so that the machine's drift hits both alike, and the two swap their configs
    halfway so that neither serve process's own speed counts for one side. A capture write
    in the request's path would add the 0.2 s stall to every captured request, so the bound
    is half of it, on the median and on p99: wide enough for the tail of a machine that runs
    other tests beside this one (`make test` runs two workers), which a p99 within 10 %
    was not. Capture's own small cost is the benchmarks' to measure, not a test's. A missed
    round is measured once more, which a real slowdown fails again."""
    other = "capture-b"
    make_config(local_aws, "capture-faulted", capture_config(f"s3://{BUCKET}/faulted"))
    for name in (ENDPOINT, other):
        faults.add(service="s3", action="PutObject", endpoint=name, error="InternalError", delay_s=STALL_S, times=0)
    client(local_aws, "sagemaker").create_endpoint(EndpointName=other, EndpointConfigName="capture-none")
    endpoint_in_service(local_aws, other)
    runtime = client(local_aws, "sagemaker-runtime")
    started = time.time()
    captured, failed, rounds = {ENDPOINT: 0, other: 0}, 0, []
    for attempt in range(2):
        latencies: dict[str, list[float]] = {"on": [], "off": []}
        for half, (on, off) in enumerate(((ENDPOINT, other), (other, ENDPOINT))):
            switch(local_aws, "capture-faulted", on)
            switch(local_aws, "capture-none", off)
            for i in range(320):
                side, name = ("on", on) if i % 2 == half else ("off", off)
                begin = time.perf_counter()
                try:
                    invoke(runtime, tiny_png(100_000 * (attempt + 1) + 1000 * half + i), endpoint=name)
                except ClientError:
                    failed += 1
                latencies[side].append(time.perf_counter() - begin)
            captured[on] += 160
        rounds.append(latency_within(latencies, "on", "off", STALL_S / 2))
        if rounds[-1]["within"]:
            break
    switch(local_aws, "capture-none", ENDPOINT)
    assert failed == 0
    assert rounds[-1]["within"], rounds

    deadline = time.monotonic() + 30
    while lost_counts(local_aws, started, captured) != captured and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lost_counts(local_aws, started, captured) == captured
    assert records(local_aws, "faulted") == []
