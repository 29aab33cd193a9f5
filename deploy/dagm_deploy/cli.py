"""dagm-deploy: roll a new model onto a SageMaker endpoint, and look after it.

    dagm-deploy deploy --endpoint E --role ARN
        (--image URI --model-data s3://... | --model-package ARN | --model-package-group NAME)
        [--lock-wait S] [--version V] [--instance-type T] [--instance-count N] [--steps 10,50,100]
        [--bake-seconds S] [--alarms A,B] [--samples IMG ...] [--latency-ms MS] [--model-env K=V ...]
        [--strategy variants|guardrails]
        [--async-output s3://... [--async-failure s3://...] [--async-success-topic ARN]
         [--async-error-topic ARN] [--async-max-concurrency N]]
        [--serverless-memory MB [--serverless-max-concurrency N] [--serverless-provisioned N]]
        [--before-container IMAGE ...] [--after-container IMAGE ...]
        [--capture-uri s3://... [--capture-percent N] | --no-capture]
        [--shadow-requests N [--max-disagreement F] [--shadow-timeout S]]
    dagm-deploy status|rollback|delete --endpoint E
    dagm-deploy unlock --endpoint E --owner OWNER
    dagm-deploy autoscale --endpoint E --variant V --min N --max M
        (--target-invocations K | --backlog-per-instance K)

A registered model (--model-package, or the newest Approved version of
--model-package-group, read again once the deploy lock is held) must be Approved: any
other status is refused, exit 1, before the lock is taken or anything is created; the
endpoint's model is then created from the package (registry.py). Deploying a group's
newest Approved version is what the pipeline's approval events run, so an approval, a
rejection of the serving version (back to the previous Approved one), or a duplicate or
stale event all converge on it; a version that already serves is left as it is.

Serving modes (modes.py): --async-output makes the endpoint asynchronous,
--serverless-memory serverless, --before/--after-container an inference pipeline
around the serving image. An endpoint keeps its mode: a model of another mode is
refused, exit 1, naming both. --capture-uri captures requests and answers (data
capture); a deploy without it keeps what the endpoint captures, --no-capture stops it.
--shadow-requests first runs the candidate as a shadow variant and refuses it when its
verdicts disagree with production's on more than --max-disagreement of them (shadow.py).

(also `python -m dagm_deploy ...`). boto3 alone; AWS_ENDPOINT_URL points it at the
local AWS (`make local-aws`). How a rollout goes and how it ends safe: rollout.py and
guardrails.py. Exit 0 on a completed rollout; 1 on a rollback, a refusal or an AWS
error, with a one-line reason; 128 + the signal's number (130 SIGINT, 143 SIGTERM)
when a signal stopped it, after rolling back. Each model's container gets
DAGM_ENDPOINT_NAME and DAGM_VARIANT_NAME, under which the serving image publishes its
input statistics (drift), plus any --model-env settings.

The deploy lock lives in the DynamoDB table --lock-table (default: $DAGM_DEPLOY_LOCK_TABLE,
else dagm-deploy-locks; made on first use when missing). `unlock` removes it only for
the owner named in the refusal or in `status`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from botocore.exceptions import BotoCoreError, ClientError

from dagm_deploy import aws, modes, options, registry, signals
from dagm_deploy.alarms import Alarms
from dagm_deploy.autoscaling import Scaling, autoscale
from dagm_deploy.endpoint import Endpoint
from dagm_deploy.errors import Interrupted, Refused
from dagm_deploy.lock import Lock, unlock
from dagm_deploy.rollout import Rollout, rollback
from dagm_deploy.status import delete, status

DEFAULT_LOCK_TABLE = "dagm-deploy-locks"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dagm-deploy", description=__doc__.splitlines()[0])
    lock_table = os.environ.get("DAGM_DEPLOY_LOCK_TABLE") or DEFAULT_LOCK_TABLE
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", required=True)
    common.add_argument("--lock-table", default=lock_table, help="DynamoDB table of deploy locks")
    common.add_argument("--poll-seconds", type=float, default=15)
    common.add_argument("--update-timeout", type=float, default=1800,
                        help="seconds to wait for one endpoint update before giving up")
    commands = parser.add_subparsers(dest="command", required=True)
    deploy = commands.add_parser("deploy", parents=[common], help="roll a new model onto the endpoint")
    for name in ("status", "rollback", "delete"):
        commands.add_parser(name, parents=[common])
    release = commands.add_parser("unlock", parents=[common], help="remove a deploy lock, given its owner")
    release.add_argument("--owner", required=True, help="the owner named by `status` or by a refused deploy")
    scale = commands.add_parser("autoscale", parents=[common], help="target-tracking autoscaling for one variant")
    scale.add_argument("--variant", required=True)
    scale.add_argument("--min", type=int, required=True, dest="minimum")
    scale.add_argument("--max", type=int, required=True, dest="maximum")
    target = scale.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-invocations", type=float,
                        help="SageMakerVariantInvocationsPerInstance to hold (per minute)")
    target.add_argument("--backlog-per-instance", type=float,
                        help="asynchronous endpoints: queued requests per instance to hold; --min may be 0")
    scale.add_argument("--scale-in-cooldown", type=int, default=300)
    scale.add_argument("--scale-out-cooldown", type=int, default=60)
    deploy.add_argument("--image", help="serving image URI (with --model-data)")
    deploy.add_argument("--model-data", help="s3:// URI of model.tar.gz (with --image)")
    deploy.add_argument("--model-package", help="ARN of an Approved model package")
    deploy.add_argument("--model-package-group", help="deploy this group's newest Approved version")
    deploy.add_argument("--lock-wait", type=float, default=0,
                        help="seconds to wait for another deploy's lock before refusing (default: refuse at once)")
    deploy.add_argument("--role", required=True, help="SageMaker execution role ARN for hosting")
    deploy.add_argument("--version", help="names the model and variant (default: the image tag; a registered model: its group and version)")
    deploy.add_argument("--instance-type", default="ml.m5.large")
    deploy.add_argument("--instance-count", type=int, default=1)
    deploy.add_argument("--steps", default="10,50,100", help="traffic percentages for the new variant")
    deploy.add_argument("--bake-seconds", type=float, default=300)
    deploy.add_argument("--alarms", default="", help="more CloudWatch alarms to watch, comma-separated")
    deploy.add_argument("--samples", nargs="*", default=[], help="PNG images for the pre-traffic check")
    deploy.add_argument("--latency-ms", type=float, default=2000, help="ModelLatency alarm threshold")
    deploy.add_argument("--alarm-period", type=int, default=60, help="seconds per alarm evaluation")
    deploy.add_argument("--check-timeout", type=float, default=60,
                        help="seconds a pre-traffic request may take before the candidate is refused")
    deploy.add_argument("--lease-seconds", type=float, default=300,
                        help="the deploy lock's lease: a crashed deploy's lock expires after this long")
    deploy.add_argument("--model-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more environment for the model's container, e.g. DAGM_SERVER_BATCH_SIZE=32")
    deploy.add_argument("--strategy", choices=["variants", "guardrails"], default="variants",
                        help="variants: this tool shifts weights; guardrails: SageMaker's blue/green DeploymentConfig")
    modes.add_arguments(deploy)
    return parser.parse_args(argv)


def locked_rollback(args: argparse.Namespace, endpoint: Endpoint) -> None:
    """The operator's rollback: under the lock (a live deploy is not fought), signals deferred."""
    lock = Lock(args.lock_table, args.endpoint, 300, endpoint.say)
    with signals.shielded("rolling back"):
        lock.acquire()
        try:
            described = endpoint.describe()
            if described is None:
                raise Refused("no such endpoint")
            endpoint.say(rollback(endpoint, args.update_timeout))
            # The undone rollout's alarms watch a variant that is gone (the endpoint is InService
            # now, so none protects an update: what a deploy removes when it starts).
            alarms = Alarms(args.endpoint)
            endpoint.delete_quietly(alarms.delete, names=alarms.own())
        finally:
            lock.release()


def run(args: argparse.Namespace) -> None:
    if args.command == "deploy":  # the options first: a bad one is named before any AWS client exists
        chosen = options.from_args(args)
        Rollout(registry.for_rollout(aws.control("sagemaker"), chosen), args.update_timeout).run()
        return
    endpoint = Endpoint(args.endpoint, args.poll_seconds)
    if args.command == "status":
        print(json.dumps(status(endpoint, args.lock_table), indent=2, default=str))
    elif args.command == "rollback":
        locked_rollback(args, endpoint)
    elif args.command == "unlock":
        unlock(aws.control("dynamodb"), args.lock_table, args.endpoint, args.owner)
        endpoint.say(f"lock of {args.owner} removed")
    elif args.command == "autoscale":
        autoscale(endpoint, Scaling(args.variant, args.minimum, args.maximum, args.target_invocations or 0.0,
                                    args.scale_in_cooldown, args.scale_out_cooldown, args.backlog_per_instance))
    else:
        delete(endpoint)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        run(args)
    except Refused as refused:
        print(f"deploy: {refused}", file=sys.stderr, flush=True)
        return refused.exit_code
    except (Interrupted, KeyboardInterrupt) as stop:  # outside a rollout: nothing was changed by halves
        print(f"deploy: interrupted by {stop or 'SIGINT'} after {time.monotonic() - started:.0f} s",
              file=sys.stderr, flush=True)
        return stop.exit_code if isinstance(stop, Interrupted) else 130
    except (ClientError, BotoCoreError) as error:
        print(f"deploy: AWS error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
