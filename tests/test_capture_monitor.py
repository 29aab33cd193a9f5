"""The capture monitor (dagm-drift --capture; deploy/dagm_deploy/capture_monitor.py) on the
local AWS: requests of every type the endpoint takes are sent to a real endpoint, whose
workers publish their live input statistics, and written as SageMaker data capture
records (in the documented format, by this test: what the local AWS's own capture writes
is not assumed here). Then:

- Reproduction: on the same requests the monitor's figures are the live watch's
  (dagm-drift without --capture). Tolerance: each statistic's recent average within
  1e-9 relative (the same functions on the same images: only the order of float
  summation differs), the defective share within 1e-9, and drift_score, which both round
  to three decimals, within 0.0015 (one unit of the last decimal, plus float slack).
- Clean images are not judged drifted, brighter ones are (mean moved most).
- Undecodable records are counted, not fatal; records outside the window are left out;
  no captures leave nothing to judge by (exit 2).
- --report-uri writes constraint_violations.json and the report, --publish the metrics
  (each run's at its window's end), --threshold is the verdict's.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from conftest import aws_client, aws_env, jpeg, model_tarball, npy, png, upload
from test_deploy import DEPLOY, deploy_command, run
from test_drift import DRIFT, brighter, drift, split_images

ENDPOINT, VARIANT = "capmon", "v-v1"
BUCKET = "captures"
JSON_TYPES = ("application/json",)  # what dagm-deploy --capture-uri captures as JSON text


def stamp(when: datetime) -> str:
    return f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}Z"


def captured(content_type: str, body: bytes, mode: str) -> dict:
    if content_type in JSON_TYPES:
        return {"observedContentType": content_type, "mode": mode, "data": body.decode(), "encoding": "JSON"}
    return {"observedContentType": content_type, "mode": mode, "data": base64.b64encode(body).decode(),
            "encoding": "BASE64"}


def record(content_type: str, body: bytes, answer_type: str | None = None, answer: bytes | None = None,
           when: datetime | None = None) -> dict:
    data = {"endpointInput": captured(content_type, body, "INPUT")}
    if answer is not None:
        data["endpointOutput"] = captured(answer_type, answer, "OUTPUT")
    return {"captureData": data, "eventMetadata": {"eventId": str(uuid.uuid4()),
                                                   "inferenceTime": stamp(when or datetime.now(timezone.utc))},
            "eventVersion": "0"}


def write_captures(url: str, prefix: str, records: list, parts: int = 2) -> None:
    """`records` (dicts, or raw lines) as capture objects under s3://captures/PREFIX/ENDPOINT/VARIANT/hour/."""
    s3 = aws_client(url, "s3")
    now = datetime.now(timezone.utc)
    for i in range(parts):
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records[i::parts]]
        key = f"{prefix}/{ENDPOINT}/{VARIANT}/{now:%Y/%m/%d/%H}/{now:%M-%S}-{i:03d}-{uuid.uuid4()}.jsonl"
        s3.put_object(Bucket=BUCKET, Key=key, Body="\n".join(lines).encode())


def b64_instances(images: list[np.ndarray]) -> list[dict]:
    return [{"b64": base64.b64encode(png(image)).decode()} for image in images]


def requests(images: list[np.ndarray]) -> list[tuple[str, bytes, str | None]]:
    """The images as requests of every type the endpoint takes: (content type, body, accept)."""
    assert len(images) == 32
    jsonl = "".join(json.dumps(item) + "\n" for item in b64_instances(images[18:22])).encode()
    return ([("image/png", png(image), None) for image in images[:8]]
            + [("image/jpeg", jpeg(image), None) for image in images[8:12]]
            + [("application/json", json.dumps({"instances": b64_instances(images[i:i + 3])}).encode(), None)
               for i in (12, 15)]
            + [("application/jsonlines", jsonl, None),
               ("application/x-npy", npy(np.stack(images[22:26])), None),
               ("application/x-npy", npy(images[26]), None),
               ("application/json", json.dumps({"instances": b64_instances(images[27:32])}).encode(),
                "application/jsonlines")])


def send(url: str, batch: list[tuple[str, bytes, str | None]]) -> list[dict]:
    """Invoke the endpoint with each request; the capture record of each."""
    runtime, records = aws_client(url, "sagemaker-runtime"), []
    for content_type, body, accept in batch:
        reply = runtime.invoke_endpoint(EndpointName=ENDPOINT, ContentType=content_type, Body=body,
                                        **({"Accept": accept} if accept else {}))
        records.append(record(content_type, body, reply["ContentType"], reply["Body"].read()))
    return records


@pytest.fixture(scope="module")
def traffic(local_aws, trained_job, tiny_dataset):
    """One endpoint, sent the clean test images (every request type), then the same images
    brighter; their captures under captures/clean, captures/brighter and captures/all, and
    the live watch's report after each."""
    model_data = upload(local_aws, "capmon/model.tar.gz", model_tarball(trained_job.model_dir))
    deploy = subprocess.run(deploy_command(local_aws, ENDPOINT, "v1", model_data, "--model-env",
                                           "DAGM_DRIFT_PUBLISH_SECONDS=1"),
                            capture_output=True, text=True, env=aws_env(local_aws), timeout=300)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    s3 = aws_client(local_aws, "s3")
    s3.create_bucket(Bucket=BUCKET)
    images = sum(split_images(tiny_dataset, "Test").values(), [])
    clean = send(local_aws, requests(images))
    past = datetime.now(timezone.utc) - timedelta(hours=2)
    extra = [record("image/png", b"not a png"),  # undecodable
             "this line is no JSON",  # undecodable
             record("image/png", png(images[0]), when=past)]  # outside the window: left out
    write_captures(local_aws, "clean", clean + extra)
    live_clean = drift(local_aws, ENDPOINT, len(images))[1]
    bright = send(local_aws, [("image/png", png(brighter(image)), None) for image in images])
    write_captures(local_aws, "brighter", bright)
    write_captures(local_aws, "all", clean + bright, parts=3)
    live_all = drift(local_aws, ENDPOINT, 2 * len(images))[1]
    yield {"images": len(images), "clean_requests": len(clean), "live_clean": live_clean, "live_all": live_all}
    run(local_aws, *DEPLOY, "delete", "--endpoint", ENDPOINT)


def monitor(url: str, prefix: str, *extra: str) -> tuple[int, list[dict] | None, str]:
    result = run(url, *DRIFT, "--endpoint", ENDPOINT, "--capture", f"s3://{BUCKET}/{prefix}", "--minutes", "5",
                 *extra)
    reports = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, reports, result.stderr


def published(url: str, report: dict, metric: str) -> list[float]:
    """The `metric` values of the variant stamped at `report`'s window end: what its own run
    published, not an earlier run's."""
    end = datetime.fromisoformat(report["window"]["end"])
    points = aws_client(url, "cloudwatch").get_metric_statistics(
        Namespace="DAGM/Monitor", MetricName=metric, Statistics=["Maximum"], Period=60,
        Dimensions=[{"Name": "EndpointName", "Value": ENDPOINT}, {"Name": "VariantName", "Value": VARIANT}],
        StartTime=end - timedelta(seconds=1), EndTime=end + timedelta(seconds=1))["Datapoints"]
    return [p["Maximum"] for p in points]


def assert_reproduces(capture: dict, live: dict) -> None:
    assert capture["images"] == live["images"]
    assert set(capture["statistics"]) == set(live["statistics"])
    for name, figures in live["statistics"].items():
        assert capture["statistics"][name]["recent"] == pytest.approx(figures["recent"], rel=1e-9), name
        assert capture["statistics"][name]["training_mean"] == figures["training_mean"]
    assert capture["defective_share"]["recent"] == pytest.approx(live["defective_share"]["recent"], abs=1e-9)
    assert abs(capture["drift_score"] - live["drift_score"]) <= 0.0015, (capture["drift_score"], live["drift_score"])
    assert capture["drifted"] == live["drifted"]


@pytest.mark.slow
def test_captures_reproduce_the_live_watch_and_clean_images_do_not_drift(local_aws, traffic):
    code, reports, stderr = monitor(local_aws, "clean", "--report-uri", f"s3://{BUCKET}/reports",
                                    "--threshold", "2.5", "--publish")
    assert code == 0, stderr
    [report] = reports
    assert (report["source"], report["endpoint"], report["variant"]) == ("capture", ENDPOINT, VARIANT)
    # Every request counted, the two unreadable ones undecodable, the one outside the window left out.
    assert report["records"] == traffic["clean_requests"] + 2 and report["undecodable"] == 2, report
    assert report["verdicts"] == traffic["images"]
    assert_reproduces(report, traffic["live_clean"])
    assert not report["drifted"] and report["strength"] == "none" and report["drift_score"] < 2
    assert report["threshold"] == 2.5
    assert published(local_aws, report, "DriftScore") == [report["drift_score"]]
    assert published(local_aws, report, "CapturedImages") == [traffic["images"]]
    violations = json.loads(aws_client(local_aws, "s3").get_object(
        Bucket=BUCKET, Key=report["report_uri"][len(f"s3://{BUCKET}/"):] + "constraint_violations.json")["Body"].read())
    assert [(v["feature_name"], v["constraint_check_type"]) for v in violations["violations"]] == [
        ("input", "completeness_check")]
    assert "2 of" in violations["violations"][0]["description"]
    # Clean and brighter together: still the live watch's numbers.
    code, [mixed], stderr = monitor(local_aws, "all")
    assert code == (1 if mixed["drifted"] else 0), stderr
    assert_reproduces(mixed, traffic["live_all"])
    assert mixed["undecodable"] == 0 and mixed["records"] == traffic["clean_requests"] + traffic["images"]


@pytest.mark.slow
def test_brighter_captures_drift_and_are_reported_and_published(local_aws, traffic):
    code, [report], stderr = monitor(local_aws, "brighter", "--report-uri", f"s3://{BUCKET}/reports", "--publish")
    assert code == 1, stderr
    assert report["drifted"] and report["drift_score"] > 3 and report["images"] == traffic["images"], report
    scores = {name: s["score"] for name, s in report["statistics"].items()}
    assert max(scores, key=scores.get) == "mean", scores
    s3 = aws_client(local_aws, "s3")
    prefix = f"reports/{ENDPOINT}/{VARIANT}/"
    assert report["report_uri"].startswith(f"s3://{BUCKET}/{prefix}")
    key = report["report_uri"][len(f"s3://{BUCKET}/"):]
    violations = json.loads(s3.get_object(Bucket=BUCKET, Key=key + "constraint_violations.json")["Body"].read())
    checks = {(v["feature_name"], v["constraint_check_type"]) for v in violations["violations"]}
    assert {("DriftScore", "baseline_drift_check"), ("mean", "baseline_drift_check")} <= checks, violations
    assert all(v["description"] for v in violations["violations"])
    written = json.loads(s3.get_object(Bucket=BUCKET, Key=key + "report.json")["Body"].read())
    assert written["drift_score"] == report["drift_score"] and written["source"] == "capture"
    assert published(local_aws, report, "DriftScore") == [report["drift_score"]]
    series = {tuple((d["Name"], d["Value"]) for d in m["Dimensions"]) for m in aws_client(local_aws, "cloudwatch")
              .list_metrics(Namespace="DAGM/Monitor", MetricName="DriftScore")["Metrics"]}
    assert (("EndpointName", ENDPOINT),) in series  # endpoint-wide: what CapturedDriftAlarm watches
    assert published(local_aws, report, "CapturedImages") == [traffic["images"]]
    assert published(local_aws, report, "InputMean") == [pytest.approx(report["statistics"]["mean"]["recent"])]
    assert published(local_aws, report, "DefectiveShare") == [pytest.approx(report["defective_share"]["recent"])]


@pytest.mark.slow
def test_no_captures_leave_nothing_to_judge(local_aws, traffic):
    code, reports, stderr = monitor(local_aws, "nothing-here")
    assert code == 2 and reports is None and "no decodable captured request" in stderr, stderr
    result = run(local_aws, *DRIFT, "--endpoint", ENDPOINT, "--capture", f"s3://{BUCKET}/clean", "--publish",
                 "--minutes", "0")
    assert result.returncode == 2 and "--minutes 0" in result.stderr
    result = run(local_aws, *DRIFT, "--endpoint", ENDPOINT, "--publish")
    assert result.returncode == 2 and "give --capture" in result.stderr
