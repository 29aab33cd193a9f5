"""Have the endpoint's recent inputs drifted away from its model's training data?

    dagm-drift --endpoint E [--variant V] [--minutes 60] [--threshold 3]

The serving image publishes statistics of the images it predicts on (namespace
DAGM/Inputs, per endpoint and variant; dagm_serve.input_watch; definitions in dagm_defects.drift). This command reads
them for the last --minutes, reads each variant's training statistics from its
model.tar.gz (model.json), and prints one JSON report per variant: per statistic the
recent average, the whole training set's mean and spread, and the distance between them
in training standard deviations (which statistic moved); the share of images predicted
defective against the training data's share (reported, not judged: real defects move it
too); and the verdict. `drift_score` is DriftScore's average over the window, the number
the template's alarm watches: how far the recent images lie, on average, from the
nearest trained class. `drifted` means above --threshold; `strength` is none, moderate,
or strong above twice the threshold. Exit 0 when no variant drifted, 1 when one did, 2
when there is nothing to judge by (no traffic in the window, no training statistics) or
AWS fails.

    dagm-drift --endpoint E --capture s3://BUCKET/PREFIX [--report-uri s3://...] [--publish] ...

judges the endpoint's data capture instead of the live metrics: the captured requests of
the window, decoded and described as the serving workers describe them, in the same
report (plus "source": "capture"); --report-uri writes Model Monitor's
constraint_violations.json beside it, --publish puts the window's figures in
CloudWatch (DAGM/Monitor). See dagm_deploy.capture_monitor.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from datetime import datetime, timedelta, timezone

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from dagm_defects.drift import DEFECTIVE, METRICS, NAMESPACE, SCORE, Reference, statistic_scores
from dagm_deploy.endpoint import Endpoint
from dagm_deploy.errors import Refused
from dagm_deploy.status import status
from dagm_deploy.s3_objects import split


# CloudWatch keeps one-minute data for 15 days; a day is plenty to judge recent inputs by.
MAX_MINUTES = 24 * 60


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dagm-drift", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--variant", help="default: every variant of the endpoint")
    parser.add_argument("--minutes", type=int, default=60, help="how far back recent inputs go")
    parser.add_argument("--threshold", type=float, default=3.0, help="drift score (training standard deviations) that counts as drift")
    parser.add_argument("--capture", metavar="S3_URI", help="judge the endpoint's data capture under this "
                        "destination instead of the live metrics (dagm_deploy.capture_monitor)")
    parser.add_argument("--report-uri", metavar="S3_URI", help="with --capture: write constraint_violations.json "
                        "and the report under REPORT_URI/ENDPOINT/VARIANT/WINDOW_END/")
    parser.add_argument("--publish", action="store_true", help="with --capture: publish the window's figures "
                        "to CloudWatch (namespace DAGM/Monitor)")
    args = parser.parse_args(argv)
    if (args.report_uri or args.publish) and not args.capture:
        parser.error("--report-uri and --publish judge captures: give --capture")
    if not 1 <= args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes {args.minutes}: expected 1 to {MAX_MINUTES}")
    if not args.threshold > 0:
        parser.error(f"--threshold {args.threshold}: expected a number above 0")
    try:
        variants = status(Endpoint(args.endpoint))["variants"]
        chosen = [v for v in variants if args.variant in (None, v["variant"])]
        if not chosen:
            raise NoVerdict(f"endpoint {args.endpoint} has no variant {args.variant}")
        if args.capture:
            from dagm_deploy import capture_monitor  # imported here: it builds on this module

            reports = capture_monitor.monitor(args.endpoint, chosen, args.capture, args.minutes, args.threshold,
                                              args.report_uri, args.publish)
        else:
            s3, cloudwatch = boto3.client("s3"), boto3.client("cloudwatch")
            reports = [judge(args.endpoint, v, args.minutes, args.threshold, s3, cloudwatch) for v in chosen]
    except (NoVerdict, Refused) as reason:
        print(f"drift: cannot tell: {reason}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError, tarfile.TarError, ValueError) as error:
        print(f"drift: cannot tell: {error}", file=sys.stderr)
        return 2
    print(json.dumps(reports, indent=2))
    return 1 if any(r["drifted"] for r in reports) else 0


if __name__ == "__main__":
    # Run as dagm_deploy.drift, not as a second copy named __main__: capture_monitor imports
    # dagm_deploy.drift, and the NoVerdict it raises must be the one main() catches.
    from dagm_deploy.drift import main as module_main

    sys.exit(module_main())
