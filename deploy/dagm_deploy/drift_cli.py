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
import json
import sys
import tarfile

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from dagm_deploy import capture_monitor
from dagm_deploy.drift import NoVerdict, judge
from dagm_deploy.endpoint import Endpoint
from dagm_deploy.errors import Refused
from dagm_deploy.status import status

# CloudWatch keeps one-minute data for 15 days; a day is plenty to judge recent inputs by.
MAX_MINUTES = 24 * 60


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
    sys.exit(main())
