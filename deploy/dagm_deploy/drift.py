"""The live-metrics drift judgement behind `dagm-drift` (dagm_deploy.drift_cli): the
serving image publishes statistics of the images it predicts on (namespace DAGM/Inputs,
per endpoint and variant; dagm_serve.input_watch; definitions in dagm_defects.drift);
`judge` reads them for the last minutes and compares them with the variant's training
statistics from its model.tar.gz (model.json). capture_monitor.py judges captured
requests against the same training statistics."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import datetime, timedelta, timezone

from dagm_defects.drift import DEFECTIVE, METRICS, NAMESPACE, SCORE, Reference, statistic_scores
from dagm_deploy.s3_objects import split


class NoVerdict(Exception):
    """Why there is nothing to judge by."""


def model_metadata(s3, model_data: str | None) -> dict:
    """model.json of the variant's model.tar.gz ({} when it is no JSON object)."""
    bucket, key = split(model_data or "")
    archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "model.json"), None)
        if member is None:
            raise NoVerdict(f"{model_data} holds no model.json")
        metadata = json.load(tar.extractfile(member))
    return metadata if isinstance(metadata, dict) else {}


def training_statistics(s3, model_data: str | None, metadata: dict | None = None) -> dict:
    """The model's training statistics, checked; `metadata`: its model.json, when read already."""
    metadata = model_metadata(s3, model_data) if metadata is None else metadata
    statistics = metadata.get("training_statistics") or {}
    try:  # the overall figures are what each statistic is reported against
        if not isinstance(statistics, dict):
            raise ValueError("its training_statistics is not an object")
        usable = Reference.from_training({"overall": statistics.get("overall")})
    except ValueError as exc:
        raise NoVerdict(f"the model in {model_data}: {exc}") from None
    if usable is None:
        raise NoVerdict(f"the model in {model_data} carries no training statistics")
    return statistics


def recent(cloudwatch, endpoint: str, variant: str, minutes: int) -> dict[str, tuple[float, int]]:
    """Each metric's average over the window and the number of images it covers, all read
    in one request so that they describe the same publications."""
    end = datetime.now(timezone.utc)
    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
    metrics = {**METRICS, DEFECTIVE: DEFECTIVE, SCORE: SCORE}
    queries = [{"Id": f"{stat.lower()}{i}", "MetricStat": {
        "Metric": {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dimensions},
        "Period": 60 * (minutes + 1), "Stat": stat}} for i, metric in enumerate(metrics.values())
        for stat in ("Sum", "SampleCount")]
    results = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=end - timedelta(minutes=minutes),
                                         EndTime=end + timedelta(minutes=1))["MetricDataResults"]
    totals = {result["Id"]: sum(result["Values"]) for result in results}
    averages = {}
    for i, name in enumerate(metrics):
        samples = totals.get(f"samplecount{i}", 0)
        if samples:
            averages[name] = (totals[f"sum{i}"] / samples, int(samples))
    return averages


def judge(endpoint: str, variant: dict, minutes: int, threshold: float, s3, cloudwatch) -> dict:
    training = training_statistics(s3, variant["model_data"])
    averages = recent(cloudwatch, endpoint, variant["variant"], minutes)
    name = variant["variant"]
    if DEFECTIVE not in averages:
        raise NoVerdict(f"variant {name} published no input statistics in the last {minutes} minutes")
    if SCORE not in averages:
        raise NoVerdict(f"variant {name} published no {SCORE} in the last {minutes} minutes: its serving image "
                        "found no usable training statistics in the model (see its log)")
    score = averages[SCORE][0]
    # Metrics differ in count only while a worker's publication is arriving: count the fewest.
    images = min(count for _, count in averages.values())
    overall = training["overall"]
    scores = statistic_scores({k: average for k, (average, _) in averages.items()}, overall)
    return {
        "endpoint": endpoint, "variant": name, "minutes": minutes, "images": images,
        "statistics": {k: {"recent": averages[k][0], "training_mean": overall[k]["mean"],
                           "training_std": overall[k]["std"], "score": round(scores[k], 3)} for k in scores},
        "defective_share": {"recent": averages[DEFECTIVE][0], "training": training.get("defective_share")},
        "drift_score": round(score, 3), "threshold": threshold, "drifted": score > threshold,
        "strength": "none" if score <= threshold else "moderate" if score <= 2 * threshold else "strong",
    }
