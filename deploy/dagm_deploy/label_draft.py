"""Captured images back into training: pick the ones worth labelling and draft a profile.

    dagm-label-draft --endpoint E --capture s3://BUCKET/capture --out s3://BUCKET/labelling/BATCH/
        [--variant V] [--minutes 60] [--drifted 20] [--uncertain 20]

From the endpoint's data capture of the last --minutes (capture_monitor.py reads it), this
takes the --drifted images that lie farthest from the trained classes (drift distance)
and the --uncertain ones whose score lies nearest the model's threshold, each image once,
and writes under --out (s3:// or a local directory):
  ClassN/Train/NNNN.PNG   each image as the endpoint decoded it (8-bit gray), in the folder
                          of the trained class it lies nearest to (a guess to check);
  ClassN/Train/Label/     where a labeller may put masks of the defective ones
                          (NNNN_label.PNG, as in DAGM);
  profile-draft.csv       the dataset profile to fill in: image_key, label (empty),
                          class (the guess), mask_key (empty); keys as `dagm-retrain
                          validate` resolves them (in the bucket, or under --out);
  selection.json          why each image was picked: drift distance, score, threshold,
                          inference time and ids.
The draft is refused by `dagm-retrain validate` until every label is filled in. A mask is
optional: a defective row whose mask_key stays empty is an image-level label, so a draft
filled in with labels alone is valid. Dropping it under the pipeline's profiles prefix
then retrains on it as on any profile. Exit 0 with a one-line summary on stdout; 2 when there
is nothing to pick from (no captured image in the window) or AWS fails.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image

from dagm_defects.drift import Reference
from dagm_defects.imaging import image_statistics
from dagm_defects.model_config import ModelConfig
from dagm_defects.placement import place
from dagm_deploy.capture_monitor import Undecodable, Window, answers, captured_body, captured_records, request_images
from dagm_deploy.drift import NoVerdict, model_metadata, training_statistics
from dagm_deploy.endpoint import Endpoint
from dagm_deploy.errors import Refused
from dagm_deploy.s3_objects import split
from dagm_deploy.status import status

PROFILE, SELECTION = "profile-draft.csv", "selection.json"


@dataclass
class Candidate:
    image: np.ndarray
    distance: float
    nearest: str
    score: float | None
    threshold: float
    metadata: dict


def candidates(s3, endpoint: str, variant: dict, capture_uri: str, start: datetime, end: datetime) -> list[Candidate]:
    """Every captured image of the variant in the window, described."""
    metadata = model_metadata(s3, variant["model_data"])
    training = training_statistics(s3, variant["model_data"], metadata)
    reference = Reference.from_training(training)
    if reference is None:
        raise NoVerdict(f"the model in {variant['model_data']} carries no usable training statistics")
    canvas, threshold = ModelConfig.from_dict(metadata["model_config"]).canvas, float(metadata["threshold"])
    window, found = Window(canvas, threshold, reference), []
    for record in captured_records(s3, capture_uri, endpoint, variant["variant"], start, end, window.unreadable_line):
        window.records += 1
        try:
            given = record["captureData"]["endpointInput"]
            images = request_images(captured_body(given), given.get("observedContentType"))
        except (Undecodable, ValueError, KeyError, TypeError, OSError) as exc:
            window.unreadable(f"{type(exc).__name__}: {exc}")
            continue
        statistics = image_statistics(np.stack([place(image, canvas) for image in images]))
        distances, nearest = reference.nearest(statistics)
        scored = answers(record["captureData"].get("endpointOutput"), len(images)) or [{}] * len(images)
        event = record.get("eventMetadata", {})
        for i, image in enumerate(images):
            score = scored[i].get("score")
            found.append(Candidate(image, float(distances[i]), nearest[i],
                                   float(score) if isinstance(score, (int, float)) else None, threshold,
                                   {"variant": variant["variant"], "image_in_request": i,
                                    **{k: event[k] for k in ("eventId", "inferenceId", "inferenceTime") if k in event}}))
    return found


def pick(found: list[Candidate], drifted: int, uncertain: int) -> list[tuple[Candidate, str]]:
    """The most drifted, then the least confident not picked already."""
    by_drift = sorted(range(len(found)), key=lambda i: -found[i].distance)[:drifted]
    scored = [i for i in range(len(found)) if found[i].score is not None and i not in by_drift]
    by_doubt = sorted(scored, key=lambda i: abs(found[i].score - found[i].threshold))[:uncertain]
    return [(found[i], "drifted") for i in by_drift] + [(found[i], "uncertain") for i in by_doubt]


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


class Output:
    """--out: an s3:// prefix or a local directory; keys are what a profile there names."""

    def __init__(self, out: str):
        self.s3 = out.startswith("s3://")
        if self.s3:
            self.bucket, prefix = split(out)
            self.prefix = prefix.rstrip("/") + "/" if prefix else ""
            self.client = boto3.client("s3")
        else:
            self.root = Path(out)

    def key(self, relative: str) -> str:
        return self.prefix + relative if self.s3 else relative

    def write(self, relative: str, data: bytes) -> None:
        if self.s3:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + relative, Body=data)
        else:
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def draft(chosen: list[tuple[Candidate, str]], out: Output) -> None:
    rows, selection = [], []
    for n, (candidate, why) in enumerate(chosen, start=1):
        dagm_class = candidate.nearest if candidate.nearest.isdigit() else ""
        relative = f"Class{dagm_class or 'Unknown'}/Train/{n:04d}.PNG"
        out.write(relative, png(candidate.image))
        rows.append({"image_key": out.key(relative), "label": "", "class": dagm_class, "mask_key": ""})
        selection.append({"image_key": out.key(relative), "why": why, "drift_distance": round(candidate.distance, 3),
                          "nearest_class": candidate.nearest, "score": candidate.score, "threshold": candidate.threshold,
                          **candidate.metadata})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["image_key", "label", "class", "mask_key"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out.write(PROFILE, text.getvalue().encode())
    out.write(SELECTION, json.dumps(selection, indent=2).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dagm-label-draft", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--capture", required=True, help="the endpoint's data capture destination (s3://)")
    parser.add_argument("--out", required=True, help="s3:// prefix or local directory for the images and the draft")
    parser.add_argument("--variant", help="default: every variant of the endpoint")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--drifted", type=int, default=20, help="most drifted images to pick")
    parser.add_argument("--uncertain", type=int, default=20, help="images scored nearest the threshold to pick")
    args = parser.parse_args(argv)
    if not args.capture.startswith("s3://"):
        parser.error(f"--capture {args.capture!r}: expected an s3:// URI")
    if args.minutes < 1 or args.drifted < 0 or args.uncertain < 0 or args.drifted + args.uncertain < 1:
        parser.error("--minutes must be at least 1, and --drifted/--uncertain at least 0 with one above 0")
    end = datetime.now(timezone.utc)
    try:
        variants = [v for v in status(Endpoint(args.endpoint))["variants"] if args.variant in (None, v["variant"])]
        if not variants:
            raise NoVerdict(f"endpoint {args.endpoint} has no variant {args.variant}")
        s3, start = boto3.client("s3"), end - timedelta(minutes=args.minutes)
        found = [c for variant in variants for c in candidates(s3, args.endpoint, variant, args.capture, start, end)]
        if not found:
            raise NoVerdict(f"no decodable captured image under {args.capture} in the last {args.minutes} minutes")
        chosen = pick(found, args.drifted, args.uncertain)
        draft(chosen, Output(args.out))
    except (NoVerdict, Refused) as reason:
        print(f"label-draft: nothing to pick: {reason}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError, OSError, ValueError) as error:
        print(f"label-draft: {error}", file=sys.stderr)
        return 2
    print(f"label-draft: {len(chosen)} of {len(found)} captured images drafted for labelling under {args.out} "
          f"({PROFILE}, {SELECTION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
