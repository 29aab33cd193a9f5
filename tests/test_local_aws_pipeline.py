"""Inference pipelines on the local AWS (tools/local_aws/containers.py): models of
several containers, each a real process on its own SAGEMAKER_BIND_TO_PORT, invoked in
series (Serial) or one by TargetContainerHostname (Direct). The preprocessing and
postprocessing containers are small programs written here and registered for their image
URIs through /_local_aws/images; the model container is the serving image on a trained
model."""

from __future__ import annotations

import io
import json
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from conftest import aws_client as client
from conftest import model_tarball, png, processes_tagged, upload

pytestmark = pytest.mark.slow

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
SERVE_IMAGE = "dagm-defects-serve:latest"
CROP_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/dagm-crop:1"
REJECT_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/dagm-reject:1"
FAILING_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/dagm-broken:1"
CROP = 512
TAG = "LOCAL_AWS_PIPELINE_TEST_TAG"  # in each container's Environment: finds its processes

SERVER = '''
import io, json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(200 if self.path == "/ping" else 404, b"", "text/plain")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.answer(*handle(body, self.headers))

    def answer(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["SAGEMAKER_BIND_TO_PORT"])), Handler).serve_forever()
'''

# Crops a camera frame to its central 512x512 region, as PNG.
CROP_PROGRAM = '''
from PIL import Image


def handle(body, headers):
    try:
        image = Image.open(io.BytesIO(body))
        image.load()
    except Exception as exc:
        return 400, json.dumps({"error": f"crop: not an image ({exc})"}).encode(), "application/json"
    left, top = (image.width - 512) // 2, (image.height - 512) // 2
    out = io.BytesIO()
    image.crop((left, top, left + 512, top + 512)).save(out, format="PNG")
    return 200, out.getvalue(), "image/png"
''' + SERVER

# Takes the model's JSON predictions: {"reject": any defective}, or text/plain when asked for it.
REJECT_PROGRAM = '''
def handle(body, headers):
    if headers.get("Content-Type") != "application/json":
        return 415, json.dumps({"error": f"reject: wants application/json, got {headers.get('Content-Type')}"}).encode(), "application/json"
    reject = any(p["defective"] for p in json.loads(body)["predictions"])
    if headers.get("Accept") == "text/plain":
        return 200, (b"reject" if reject else b"accept"), "text/plain"
    return 200, json.dumps({"reject": reject}).encode(), "application/json"
''' + SERVER


def register_image(url: str, image: str, command: list[str]) -> None:
    request = urllib.request.Request(f"{url}/_local_aws/images", method="POST",
                                     data=json.dumps({"image": image, "command": command}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def registered(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_local_aws/images", timeout=10) as response:
        return json.loads(response.read())["images"]


def tagged(tag: str) -> list:
    return processes_tagged(TAG, tag)


def wait_endpoint(url: str, endpoint: str, timeout: float = 240) -> dict:
    sagemaker = client(url, "sagemaker")
    deadline = time.monotonic() + timeout
    while (described := sagemaker.describe_endpoint(EndpointName=endpoint))["EndpointStatus"] in ("Creating",):
        assert time.monotonic() < deadline, described
        time.sleep(0.5)
    return described


def deploy(url: str, name: str, containers: list[dict] | None = None, primary: dict | None = None,
           mode: str | None = None) -> None:
    """A model (tagged containers), its config with one variant, and its endpoint (not waited for)."""
    sagemaker = client(url, "sagemaker")
    extra = {"InferenceExecutionConfig": {"Mode": mode}} if mode else {}
    tag = {TAG: name}
    if containers is not None:
        extra["Containers"] = [{**c, "Environment": {**c.get("Environment", {}), **tag}} for c in containers]
    else:
        extra["PrimaryContainer"] = {**primary, "Environment": tag}
    sagemaker.create_model(ModelName=name, ExecutionRoleArn=ROLE, **extra)
    sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "main", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)


@pytest.fixture(scope="module")
def programs(local_aws, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pipeline_programs")
    for image, source in ((CROP_IMAGE, CROP_PROGRAM), (REJECT_IMAGE, REJECT_PROGRAM)):
        path = folder / f"{image.rsplit('/', 1)[1].replace(':', '-')}.py"
        path.write_text(source)
        register_image(local_aws, image, [sys.executable, str(path)])
    register_image(local_aws, FAILING_IMAGE, [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"])
    return registered(local_aws)


@pytest.fixture(scope="module")
def endpoints(local_aws, programs, trained_job) -> dict[str, str]:
    """Four endpoints brought up side by side: the model alone, crop -> model,
    crop -> model -> reject, and crop and model for Direct invocation."""
    model_url = upload(local_aws, "pipeline/model.tar.gz", model_tarball(trained_job.model_dir))
    serve = {"Image": SERVE_IMAGE, "ModelDataUrl": model_url}
    crop = {"Image": CROP_IMAGE}
    deploy(local_aws, "alone", primary=serve)
    deploy(local_aws, "cropped", containers=[crop, serve])
    deploy(local_aws, "judged", containers=[{**crop, "ContainerHostname": "crop"}, {**serve, "ContainerHostname": "model"},
                                            {"Image": REJECT_IMAGE, "ContainerHostname": "reject"}])
    deploy(local_aws, "direct", mode="Direct", containers=[{**crop, "ContainerHostname": "crop"},
                                                           {**serve, "ContainerHostname": "model"}])
    names = ["alone", "cropped", "judged", "direct"]
    for name in names:
        described = wait_endpoint(local_aws, name)
        assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    return {name: name for name in names}


def frame(seed: int = 5, height: int = 700, width: int = 900) -> np.ndarray:
    """A camera frame larger than the model's 512x512 region: a bright surround (the
    fixture), and a textured part with a bright scratch in its centre."""
    pixels = np.full((height, width), 235, dtype=np.uint8)
    top, left = (height - CROP) // 2, (width - CROP) // 2
    pixels[top:top + CROP, left:left + CROP] = np.random.default_rng(seed).integers(60, 120, (CROP, CROP))
    pixels[height // 2 - 3:height // 2 + 3, width // 2 - 80:width // 2 + 80] = 250
    return pixels


def center(pixels: np.ndarray) -> np.ndarray:
    top, left = (pixels.shape[0] - CROP) // 2, (pixels.shape[1] - CROP) // 2
    return pixels[top:top + CROP, left:left + CROP]


def invoke(url: str, endpoint: str, body: bytes, **extra) -> tuple[str, bytes]:
    reply = client(url, "sagemaker-runtime").invoke_endpoint(EndpointName=endpoint, Body=body, **extra)
    return reply["ContentType"], reply["Body"].read()


def predictions(url: str, endpoint: str, body: bytes, **extra) -> list[dict]:
    content_type, answer = invoke(url, endpoint, body, ContentType="image/png", **extra)
    assert content_type == "application/json"
    return json.loads(answer)["predictions"]


def probability_map(url: str, endpoint: str, body: bytes) -> np.ndarray:
    content_type, answer = invoke(url, endpoint, body, ContentType="image/png", Accept="application/x-npy")
    assert content_type == "application/x-npy"
    return np.load(io.BytesIO(answer))


def same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) == 1
    assert a[0]["defective"] == b[0]["defective"]
    assert a[0]["score"] == pytest.approx(b[0]["score"], abs=1e-6)


def test_images_are_registered_and_the_model_keeps_its_execution_mode(local_aws, programs):
    assert programs[CROP_IMAGE][0] == sys.executable and programs[CROP_IMAGE][1].endswith(".py")
    with pytest.raises(urllib.error.HTTPError) as refused:
        register_image(local_aws, "", ["true"])
    assert refused.value.code == 400
    sagemaker = client(local_aws, "sagemaker")
    sagemaker.create_model(ModelName="mode-direct", ExecutionRoleArn=ROLE, InferenceExecutionConfig={"Mode": "Direct"},
                           Containers=[{"Image": CROP_IMAGE, "ContainerHostname": "a"},
                                       {"Image": SERVE_IMAGE, "ContainerHostname": "b"}])
    described = sagemaker.describe_model(ModelName="mode-direct")
    assert described["InferenceExecutionConfig"] == {"Mode": "Direct"}
    assert [c["ContainerHostname"] for c in described["Containers"]] == ["a", "b"]
    with pytest.raises(ClientError, match="ContainerHostname is required"):
        sagemaker.create_model(ModelName="mode-nameless", ExecutionRoleArn=ROLE,
                               InferenceExecutionConfig={"Mode": "Direct"},
                               Containers=[{"Image": CROP_IMAGE}, {"Image": SERVE_IMAGE}])
    with pytest.raises(ClientError, match="1 to 15 containers"):
        sagemaker.create_model(ModelName="mode-many", ExecutionRoleArn=ROLE,
                               Containers=[{"Image": CROP_IMAGE, "ContainerHostname": f"c{i}"} for i in range(16)])


def test_a_serial_pipeline_predicts_on_the_cropped_frame(local_aws, endpoints):
    pixels = frame()
    through_pipeline = predictions(local_aws, endpoints["cropped"], png(pixels))
    cropped = png(center(pixels))
    same(through_pipeline, predictions(local_aws, endpoints["direct"], cropped, TargetContainerHostname="model"))
    same(through_pipeline, predictions(local_aws, endpoints["alone"], cropped))
    # The probability maps (the model container answers the client's Accept) are the crop's,
    # not the whole frame's, which the model would resize to its input.
    maps = {name: probability_map(local_aws, endpoint, body) for name, endpoint, body in (
        ("pipeline", endpoints["cropped"], png(pixels)), ("crop", endpoints["alone"], cropped),
        ("frame", endpoints["alone"], png(pixels)))}
    assert np.abs(maps["pipeline"] - maps["crop"]).max() <= 1e-6
    assert np.abs(maps["pipeline"] - maps["frame"]).max() > 1e-4


def test_three_containers_and_the_clients_accept_reaches_the_last(local_aws, endpoints):
    pixels = frame(seed=8)
    expected = predictions(local_aws, endpoints["alone"], png(center(pixels)))[0]["defective"]
    content_type, answer = invoke(local_aws, endpoints["judged"], png(pixels), ContentType="image/png")
    assert (content_type, json.loads(answer)) == ("application/json", {"reject": expected})
    # text/plain is the last container's type alone: the model container would refuse it.
    content_type, answer = invoke(local_aws, endpoints["judged"], png(pixels), ContentType="image/png",
                                  Accept="text/plain")
    assert (content_type, answer) == ("text/plain", b"reject" if expected else b"accept")


def test_a_containers_error_is_a_model_error_naming_it(local_aws, endpoints):
    for endpoint, name in ((endpoints["cropped"], "container-1"), (endpoints["judged"], "crop")):
        with pytest.raises(ClientError) as error:
            invoke(local_aws, endpoint, b"not a png", ContentType="image/png")
        response = error.value.response
        assert response["Error"]["Code"] == "ModelError"
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert response["OriginalStatusCode"] == 400
        assert response["Error"]["Message"].startswith(f"Received client error (400) from {name} with message")
        assert "crop: not an image" in response["OriginalMessage"]


def test_direct_invocation_targets_one_container_and_deletion_stops_them(local_aws, endpoints):
    pixels = frame(seed=11)
    content_type, answer = invoke(local_aws, endpoints["direct"], png(pixels), ContentType="image/png",
                                  TargetContainerHostname="crop")
    assert content_type == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(answer))), center(pixels))
    for missing in ({}, {"TargetContainerHostname": "nowhere"}):
        with pytest.raises(ClientError) as error:
            invoke(local_aws, endpoints["direct"], png(pixels), ContentType="image/png", **missing)
        assert error.value.response["Error"]["Code"] == "ValidationError"

    # Each container is its own process (group): deleting the endpoint stops all of them.
    assert len(tagged("direct")) >= 2 and tagged("judged")
    client(local_aws, "sagemaker").delete_endpoint(EndpointName=endpoints["direct"])
    assert tagged("direct") == []
    assert tagged("judged")  # the other endpoints run on


def test_a_container_that_cannot_start_fails_the_endpoint_naming_it(local_aws, programs):
    deploy(local_aws, "unstartable", containers=[{"Image": CROP_IMAGE, "ContainerHostname": "crop"},
                                                 {"Image": FAILING_IMAGE, "ContainerHostname": "broken"}])
    described = wait_endpoint(local_aws, "unstartable")
    assert described["EndpointStatus"] == "Failed"
    assert "container broken of model unstartable exited with 3" in described["FailureReason"]
    assert "no model here" in described["FailureReason"]
    assert tagged("unstartable") == []  # the crop container that did start was stopped
