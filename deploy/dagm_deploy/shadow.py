"""Shadow tests: the candidate beside production as a shadow variant, judged by agreement.

With --shadow-requests N, a real-time rollout first puts the candidate on the endpoint as
SageMaker's shadow variant (ShadowProductionVariants at the production variant's weight:
a copy of every request; only production answers clients, so the shadow's errors and
latency never reach them), with data capture at 100 % for the test (the endpoint's
capture destination: --capture-uri, or the one it has). Once N requests were answered by
both (their captured records paired by the request's body: the same image has the same
production answer), it compares the two on them:
  disagreement       the share of images whose defective verdict differs (each variant at
                     its own threshold, as clients would see it);
  score_correlation  Pearson's r of the scores (None when either side's scores are flat).
Above --max-disagreement, or when the shadow answered fewer than N within
--shadow-timeout seconds (a shadow that hangs or fails answers nothing captured), the
candidate is refused with the report, exit 1; otherwise it goes on to the usual canary.
Either way the shadow config is left: the endpoint returns to production alone (refused)
or moves to the canary config (promoted). A signal or error during the shadow phase ends
it the same safe way as a refusal. Per-class figures need labels the captured requests do
not carry, so they are not reported.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np

from dagm_deploy import aws, signals
from dagm_deploy.capture_monitor import answers, captured_records
from dagm_deploy.errors import Refused, cause, exit_code
from dagm_deploy.lock import Lock
from dagm_deploy.modes import ShadowTest
from dagm_deploy.rolling import Rolling


class CapturedAnswers:
    """A variant's captured single-image answers since `since`, by a digest of the request's
    body; each poll reads only the capture objects written since the last."""

    def __init__(self, s3, capture: dict, endpoint: str, variant: str, since: datetime):
        self.s3, self.uri, self.endpoint, self.variant, self.since = s3, capture["DestinationS3Uri"], endpoint, variant, since
        self.read: set[str] = set()
        self.by_body: dict[str, list[dict]] = {}

    def poll(self) -> dict[str, list[dict]]:
        # A little past now: a record is in an object already written, and that object is read once.
        until = datetime.now(timezone.utc) + timedelta(minutes=5)
        for record in captured_records(self.s3, self.uri, self.endpoint, self.variant, self.since, until,
                                       lambda reason: None, self.read):
            try:
                data = record["captureData"]
                predictions = answers(data.get("endpointOutput"), 1)
                body = data["endpointInput"]["data"]
            except (KeyError, TypeError, AttributeError):
                continue
            if predictions:  # single-image answers with a score and a verdict
                self.by_body.setdefault(hashlib.sha256(str(body).encode()).hexdigest(), []).append(predictions[0])
        return self.by_body


def pairs(production: dict[str, list[dict]], shadow: dict[str, list[dict]]) -> list[tuple[dict, dict]]:
    return [(p, s) for digest, given in shadow.items() for p, s in zip(production.get(digest, []), given)]


def compare(paired: list[tuple[dict, dict]]) -> dict:
    production = np.array([float(p["score"]) for p, _ in paired])
    shadow = np.array([float(s["score"]) for _, s in paired])
    disagree = [bool(p["defective"]) != bool(s["defective"]) for p, s in paired]
    flat = production.std() == 0 or shadow.std() == 0
    return {"pairs": len(paired), "disagreement": round(float(np.mean(disagree)), 4) if paired else None,
            "score_correlation": None if flat or not paired else round(float(np.corrcoef(production, shadow)[0, 1]), 4)}


def run(rollout: Rolling, old: dict, capture: dict, lock: Lock, test: ShadowTest) -> dict:
    """Shadow the candidate beside `old` (its VARIANT_FIELDS) until the test is decided; the report. Refused,
    with the endpoint back on `old` alone, when the candidate fails (or anything stops it)."""
    o, endpoint = rollout.o, rollout.endpoint
    config = o.config("shadow")
    production_only = o.config("unshadowed")
    extras = o.mode.endpoint_config(capture)
    started = datetime.now(timezone.utc) - timedelta(seconds=1)
    report: dict = {"production": old["VariantName"], "shadow": o.variant, "wanted": test.requests,
                    "max_disagreement": test.max_disagreement}
    try:
        endpoint.create_config(config, [{**old, "InitialVariantWeight": 1.0}], {
            **extras, "DataCaptureConfig": {**capture, "InitialSamplingPercentage": 100},
            "ShadowProductionVariants": [rollout.new_variant(1.0)]})
        rollout.say(f"shadow test: {o.variant} beside {old['VariantName']} until {test.requests} requests are paired")
        endpoint.update(config, time.monotonic() + rollout.update_timeout)
        deadline, s3 = time.monotonic() + test.timeout, aws.control("s3")
        production, candidate = (CapturedAnswers(s3, capture, o.endpoint, name, started)
                                 for name in (old["VariantName"], o.variant))
        while True:
            lock.check()
            report.update(compare(pairs(production.poll(), candidate.poll())))
            if report["pairs"] >= test.requests or time.monotonic() >= deadline:
                break
            time.sleep(min(o.poll_seconds, 2.0))
        passed = report["pairs"] >= test.requests and report["disagreement"] <= test.max_disagreement
        report["verdict"] = "promoted" if passed else "refused"
        print("shadow test: " + json.dumps(report), flush=True)
        if passed:
            return report
        why = (f"disagreement {report['disagreement']} above --max-disagreement {test.max_disagreement}"
               if report["pairs"] >= test.requests else
               f"the shadow answered {report['pairs']} of {test.requests} requests within {test.timeout:g} s")
        raise Refused(f"shadow test refused {o.variant}: {why}")
    except BaseException as stop:
        with signals.shielded("ending the shadow test"):
            endpoint.create_config(production_only, [{**old, "InitialVariantWeight": 1.0}], extras)
            rollout.restore_config(production_only)
            rollout.discard_candidate()
        if isinstance(stop, Refused):
            raise
        raise Refused(f"{cause(stop)} during the shadow test: the endpoint is back on {old['VariantName']} alone",
                      exit_code(stop)) from None
