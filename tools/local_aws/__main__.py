"""`make local-aws`: run the local AWS in the foreground until interrupted.

    PYTHONPATH=tools python -m local_aws [--port 4566] [--work DIR]

Prints `local AWS ready at http://127.0.0.1:PORT` once it answers. Clients use
AWS_ENDPOINT_URL=http://127.0.0.1:PORT with any credentials (e.g. testing/testing).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

from moto.server import ThreadedMotoServer

from local_aws import alarms, builds, schedules
from local_aws.extensions import install
from local_aws.hosting import Hosting


def main() -> int:
    parser = argparse.ArgumentParser(description="local AWS: moto plus real SageMaker endpoints")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--work", type=Path, help="where endpoints, training jobs and build logs live "
                                                   "(default: a new temporary directory)")
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    hosting = Hosting(args.work)
    install(hosting)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    try:
        server.start()
    except OSError as exc:
        print(f"local-aws: error: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{args.port}"
    hosting.aws_env = {"AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    builds.install(hosting.aws_env, hosting.work)
    urllib.request.urlopen(f"{url}/moto-api/", timeout=10).read()  # answers: ready
    print(f"local AWS ready at {url}", flush=True)

    stop = threading.Event()
    alarms.start(stop)
    schedules.start(stop)  # after builds.install: scheduled rules' targets start builds
    # The handler only notes the signal. Setting the event there deadlocked when a second
    # signal came in during the first's Event.set (make passes the SIGTERM it gets on to
    # this process, which the process group's SIGTERM has already reached), on the event's
    # lock. The short sleeps let the handler run even when another thread took the signal.
    signalled: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _: signalled.append(number))
    while not signalled:
        time.sleep(0.2)
    stop.set()
    print("local AWS stopping: endpoints' serve processes first", flush=True)
    hosting.shutdown()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
