"""Judge drift from an endpoint's data capture (`dagm-drift --capture S3_URI`).

SageMaker data capture writes each captured request and answer as one JSON line under
DESTINATION/ENDPOINT/VARIANT/yyyy/mm/dd/hh/*.jsonl (the hour of its inference time, UTC):
    {"captureData": {"endpointInput": {"observedContentType", "mode": "INPUT", "data",
                                       "encoding": "BASE64" | "JSON" | "CSV"},
                     "endpointOutput": {... "mode": "OUTPUT" ...}},
     "eventMetadata": {"eventId", "inferenceTime": "2026-12-05T18:00:01Z" (milliseconds
                       optional), "inferenceId"?}, "eventVersion": "0"}
For each variant this module lists only the hour prefixes the window touches, keeps the
records whose inferenceTime lies in the window, decodes every request the endpoint
accepts (image/png, image/jpeg, application/x-npy, application/json {"instances":
[{"b64"}]}, application/jsonlines; one request may hold several images), places each
image on the model's input canvas with the serving front's function, and describes it by
the serving workers' statistics and drift distance (dagm_defects.imaging,
dagm_defects.drift: the functions dagm_serve.input_watch calls). So on the same requests
its figures are the live watch's (dagm-drift without --capture): the same numbers up to
the order of float summation; tests/test_capture_monitor.py holds them to 1e-9 relative
per statistic and the rounded drift_score to one unit of its last (third) decimal.

Whether an image was predicted defective comes from the captured answer: its
"defective" when the answer used the model's own threshold, else its score against that
threshold (what the live watch counts; a client may ask for another threshold). Answers
without scores (image/png masks, x-npy maps) or not captured leave it unknown:
defective_share covers the images with a known verdict ("verdicts").

A record that cannot be read (not JSON, no input, an unknown type, a corrupt image) is
counted in "undecodable", with the first reasons in "undecodable_reasons", never fatal.
No decodable image in the window leaves nothing to judge by (exit 2).

--report-uri writes, under REPORT_URI/ENDPOINT/VARIANT/<window end, yyyymmddThhmmssZ>/,
`constraint_violations.json` in SageMaker Model Monitor's shape ({"violations":
[{"feature_name", "constraint_check_type", "description"}]}: baseline_drift_check for
DriftScore above the threshold and for each statistic that moved more than the
threshold, completeness_check for undecodable records) and `report.json`, the report.
--publish puts the window's figures in CloudWatch, namespace DAGM/Monitor, dimensions
EndpointName and VariantName, timestamped at the window's end: DriftScore, InputMean,
InputStd, InputContrast, InputTexture, DefectiveShare (when known), CapturedImages; and
DriftScore with EndpointName alone (one value per variant), for an endpoint's alarm.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import boto3
import numpy as np

from dagm_defects.drift import DEFECTIVE, METRICS, SCORE, Reference, statistic_scores
from dagm_defects.imaging import STATISTICS, decode_opened, image_statistics, open_image
from dagm_defects.model_config import ModelConfig
from dagm_defects.placement import Canvas, place
from dagm_deploy.drift import NoVerdict, model_metadata, training_statistics
from dagm_deploy.s3_objects import split

MONITOR_NAMESPACE = "DAGM/Monitor"
IMAGES = "CapturedImages"
VIOLATIONS_FILE = "constraint_violations.json"
REPORT_FILE = "report.json"
# How many reasons for undecodable records a report names.
REASONS = 5

PNG, JPEG, NPY, JSON, JSONLINES = "image/png", "image/jpeg", "application/x-npy", "application/json", "application/jsonlines"
ALIASES = {"image/jpg": JPEG, "application/x-jsonlines": JSONLINES, "application/jsonl": JSONLINES}
# Pillow's parsers per declared type, as the endpoint parses them (dagm_serve.codec).
FORMATS = {PNG: ("PNG",), JPEG: ("JPEG",), JSON: ("PNG", "JPEG"), JSONLINES: ("PNG", "JPEG")}


class Undecodable(ValueError):
    """A captured record this monitor cannot read; the message says why."""


def media_type(header: str | None) -> str:
    value = (header or "").split(";", 1)[0].strip().lower()
    return ALIASES.get(value, value)


def captured_body(part: dict) -> bytes:
    """The bytes of a captured endpointInput or endpointOutput."""
    data, encoding = part.get("data"), str(part.get("encoding") or "BASE64").upper()
    if encoding == "BASE64":
        if not isinstance(data, str):
            raise Undecodable("BASE64 data is not a string")
        return base64.b64decode(data, validate=True)
    if encoding in ("JSON", "CSV"):
        return data.encode() if isinstance(data, str) else json.dumps(data).encode()
    raise Undecodable(f"unknown encoding {encoding!r}")


def _image(data: bytes, kind: str, name: str) -> np.ndarray:
    return decode_opened(open_image(data, name, allow_wide=False, formats=FORMATS[kind]), name)[0]


def request_images(body: bytes, content_type: str | None) -> list[np.ndarray]:
    """The request's images as 8-bit HxW arrays, as the endpoint decodes them."""
    kind = media_type(content_type)
    if kind == NPY:
        array = np.load(io.BytesIO(body), allow_pickle=False)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise Undecodable(f"x-npy holds a {array.dtype} array of shape {array.shape}, not HxW or NxHxW uint8")
        return [array] if array.ndim == 2 else list(array)
    if kind in (PNG, JPEG):
        return [_image(body, kind, "request body")]
    if kind == JSON:
        items = json.loads(body)["instances"]
    elif kind == JSONLINES:
        items = [json.loads(line) for line in body.splitlines() if line.strip()]
    else:
        raise Undecodable(f"content type {content_type!r} is not one the endpoint accepts")
    if not isinstance(items, list) or not items:
        raise Undecodable("no instances")
    return [_image(base64.b64decode(item["b64"], validate=True), kind, f"instance {i}") for i, item in enumerate(items)]


def answers(part: dict | None, count: int) -> list[dict] | None:
    """The captured answer's `count` predictions; None when the answer does not hold them
    (no scores, not captured, unreadable)."""
    if not part:
        return None
    kind = media_type(part.get("observedContentType"))
    try:
        body = captured_body(part)
        if kind == JSON:
            records = json.loads(body)["predictions"]
        elif kind == JSONLINES:
            records = [json.loads(line) for line in body.splitlines() if line.strip()]
        else:
            return None
    except (ValueError, KeyError, TypeError, AttributeError, Undecodable):
        return None
    if not isinstance(records, list) or len(records) != count or not all(isinstance(r, dict) for r in records):
        return None
    return records


def verdicts(part: dict | None, threshold: float, count: int) -> list[bool] | None:
    """Per image, whether the captured answer predicted it defective at the model's
    threshold; None when the answer does not say."""
    records = answers(part, count)
    try:
        return None if records is None else [
            bool(r["defective"]) if r.get("threshold") == threshold else float(r["score"]) >= threshold
            for r in records]
    except (ValueError, KeyError, TypeError):
        return None


def inference_time(record: dict) -> datetime:
    stamp = datetime.fromisoformat(record["eventMetadata"]["inferenceTime"])
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def hour_prefixes(destination: str, endpoint: str, variant: str, start: datetime, end: datetime) -> list[str]:
    """The S3 prefixes of every hour the window touches."""
    base = "/".join(part for part in (destination.strip("/"), endpoint, variant) if part)
    hour, prefixes = start.replace(minute=0, second=0, microsecond=0), []
    while hour <= end:
        prefixes.append(f"{base}/{hour:%Y/%m/%d/%H}/")
        hour += timedelta(hours=1)
    return prefixes


@dataclass
class Window:
    """What one variant's captures of the window hold."""

    canvas: Canvas
    threshold: float
    reference: Reference
    records: int = 0
    undecodable: int = 0
    reasons: list[str] = field(default_factory=list)
    statistics: list[dict[str, np.ndarray]] = field(default_factory=list)
    distances: list[np.ndarray] = field(default_factory=list)
    defective: list[bool] = field(default_factory=list)

    def add(self, record: dict) -> None:
        """One captured request in the window: its images described, or counted undecodable."""
        self.records += 1
        try:
            captured = record["captureData"]
            given = captured.get("endpointInput")
            if not given:
                raise Undecodable("the record holds no endpointInput")
            images = request_images(captured_body(given), given.get("observedContentType"))
            batch = np.stack([place(image, self.canvas) for image in images])
        except Exception as exc:  # any unreadable record is counted, never fatal
            self.unreadable(f"{type(exc).__name__}: {exc}")
            return
        statistics = image_statistics(batch)
        self.statistics.append(statistics)
        self.distances.append(self.reference.distances(statistics))
        self.defective.extend(verdicts(captured.get("endpointOutput"), self.threshold, len(images)) or [])

    def unreadable_line(self, reason: str) -> None:
        """A line of a capture object that is no capture record."""
        self.records += 1
        self.unreadable(reason)

    def unreadable(self, reason: str) -> None:
        self.undecodable += 1
        if len(self.reasons) < REASONS:
            self.reasons.append(reason)

    @property
    def images(self) -> int:
        return sum(len(d) for d in self.distances)


def captured_records(s3, capture_uri: str, endpoint: str, variant: str, start: datetime, end: datetime,
                     unreadable: Callable[[str], None], read: set[str] | None = None):
    """The variant's capture records whose inference time lies in [start, end]; a line
    that is no capture record goes to `unreadable`. With `read`, the capture objects named
    there are skipped and the ones read are added: SageMaker never rewrites one, so a
    caller polling the captures reads each once."""
    bucket, destination = split(capture_uri)
    paginator = s3.get_paginator("list_objects_v2")
    for prefix in hour_prefixes(destination, endpoint, variant, start, end):
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].endswith(".jsonl") or (read is not None and item["Key"] in read):
                    continue
                if read is not None:
                    read.add(item["Key"])
                lines = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().splitlines()
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        when = inference_time(record)
                    except (ValueError, KeyError, TypeError, AttributeError) as exc:
                        unreadable(f"{item['Key']}: not a capture record ({type(exc).__name__}: {exc})")
                        continue
                    if start <= when <= end:
                        yield record


def read_window(s3, capture_uri: str, endpoint: str, window: Window, start: datetime, end: datetime,
                variant: str) -> None:
    for record in captured_records(s3, capture_uri, endpoint, variant, start, end, window.unreadable_line):
        window.add(record)


def judge(endpoint: str, variant: dict, capture_uri: str, minutes: int, threshold: float, s3,
          end: datetime) -> dict:
    """One variant's report from the captures of the `minutes` before `end`."""
    name = variant["variant"]
    metadata = model_metadata(s3, variant["model_data"])
    training = training_statistics(s3, variant["model_data"], metadata)
    try:
        reference = Reference.from_training(training)
        canvas = ModelConfig.from_dict(metadata["model_config"]).canvas
        model_threshold = float(metadata["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise NoVerdict(f"the model in {variant['model_data']}: {type(exc).__name__}: {exc}") from None
    if reference is None:
        raise NoVerdict(f"the model in {variant['model_data']} carries no usable training statistics")
    start = end - timedelta(minutes=minutes)
    window = Window(canvas, model_threshold, reference)
    read_window(s3, capture_uri, endpoint, window, start, end, name)
    if not window.images:
        raise NoVerdict(f"variant {name}: no decodable captured request under {capture_uri} in the last {minutes} "
                        f"minutes ({window.records} records, {window.undecodable} undecodable"
                        + (f": {window.reasons[0]}" if window.reasons else "") + ")")
    per_image = {k: np.concatenate([s[k] for s in window.statistics]) for k in STATISTICS}
    averages = {k: float(v.mean()) for k, v in per_image.items()}
    score = float(np.concatenate(window.distances).mean())
    overall = training["overall"]
    scores = statistic_scores(averages, overall)
    share = float(np.mean(window.defective)) if window.defective else None
    return {
        "endpoint": endpoint, "variant": name, "minutes": minutes, "images": window.images,
        "statistics": {k: {"recent": averages[k], "training_mean": overall[k]["mean"],
                           "training_std": overall[k]["std"], "score": round(scores[k], 3)} for k in scores},
        "defective_share": {"recent": share, "training": training.get("defective_share")},
        "drift_score": round(score, 3), "threshold": threshold, "drifted": score > threshold,
        "strength": "none" if score <= threshold else "moderate" if score <= 2 * threshold else "strong",
        "source": "capture", "capture": capture_uri,
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "records": window.records, "undecodable": window.undecodable, "undecodable_reasons": window.reasons,
        "verdicts": len(window.defective),
    }


def violations(report: dict) -> dict:
    """The report as Model Monitor's constraint_violations.json."""
    found = []
    if report["drifted"]:
        found.append({"feature_name": SCORE, "constraint_check_type": "baseline_drift_check",
                      "description": f"{SCORE} {report['drift_score']} over {report['images']} captured images is "
                                     f"above the threshold {report['threshold']} ({report['strength']} drift): the "
                                     "images lie that many training standard deviations from the nearest trained "
                                     "class"})
    for name, figures in report["statistics"].items():
        if figures["score"] > report["threshold"]:
            found.append({"feature_name": name, "constraint_check_type": "baseline_drift_check",
                          "description": f"recent average {figures['recent']:.4g} lies {figures['score']} training "
                                         f"standard deviations from the training mean {figures['training_mean']:.4g}"})
    if report["undecodable"]:
        found.append({"feature_name": "input", "constraint_check_type": "completeness_check",
                      "description": f"{report['undecodable']} of {report['records']} captured records could not be "
                                     "decoded" + (f" (first: {report['undecodable_reasons'][0]})"
                                                  if report["undecodable_reasons"] else "")})
    return {"violations": found}


def report_prefix(report_uri: str, report: dict, end: datetime) -> tuple[str, str]:
    bucket, prefix = split(report_uri)
    parts = (prefix.strip("/"), report["endpoint"], report["variant"], f"{end:%Y%m%dT%H%M%SZ}")
    return bucket, "/".join(p for p in parts if p) + "/"


def write_report(s3, report_uri: str, report: dict, end: datetime) -> str:
    """Write the violations and the report; the s3:// prefix they are under."""
    bucket, prefix = report_prefix(report_uri, report, end)
    for name, document in ((VIOLATIONS_FILE, violations(report)), (REPORT_FILE, report)):
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=json.dumps(document, indent=2).encode(),
                      ContentType="application/json")
    return f"s3://{bucket}/{prefix}"


def metric_data(report: dict, end: datetime) -> list[dict]:
    dimensions = [{"Name": "EndpointName", "Value": report["endpoint"]},
                  {"Name": "VariantName", "Value": report["variant"]}]
    values = {SCORE: report["drift_score"], IMAGES: report["images"],
              **{METRICS[k]: figures["recent"] for k, figures in report["statistics"].items()}}
    if report["defective_share"]["recent"] is not None:
        values[DEFECTIVE] = report["defective_share"]["recent"]
    data = [{"MetricName": name, "Dimensions": dimensions, "Timestamp": end, "Value": float(value),
             "Unit": "Count" if name == IMAGES else "None"} for name, value in values.items()]
    # Also endpoint-wide, as the live watch publishes it: the series pipeline.yml's
    # CapturedDriftAlarm watches (a CloudWatch alarm matches its dimensions exactly).
    data.append({**data[0], "Dimensions": dimensions[:1]})
    return data


def monitor(endpoint: str, variants: list[dict], capture_uri: str, minutes: int, threshold: float,
            report_uri: str | None = None, publish: bool = False) -> list[dict]:
    """Every variant's report for the window that ends now; written and published as asked."""
    split(capture_uri)  # a malformed URI is refused before anything is read
    if report_uri:
        split(report_uri)
    end = datetime.now(timezone.utc)
    s3 = boto3.client("s3")
    reports = [judge(endpoint, v, capture_uri, minutes, threshold, s3, end) for v in variants]
    for report in reports:
        if report_uri:
            report["report_uri"] = write_report(s3, report_uri, report, end)
    if publish:
        cloudwatch = boto3.client("cloudwatch")
        for report in reports:
            cloudwatch.put_metric_data(Namespace=MONITOR_NAMESPACE, MetricData=metric_data(report, end))
    return reports
