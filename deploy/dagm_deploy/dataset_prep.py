"""A valid profile becomes a training channel: a prepared prefix in the DAGM layout that
holds the existing training data and the profile's rows.

Objects are copied inside S3 (nothing passes through this machine) and nothing at the
source is changed. New rows go to `ClassN/Train/` under a name tagged with the profile
(`TAG_0001.PNG`, masks in `Train/Label/`), so they never overwrite an existing image,
and that split's `Labels.txt` is rewritten with the old rows and the new ones (a
defective row without a mask as an image-level label, mask columns `0`). The
`Test` splits stay as they are: the held-out data both the candidate and the serving
model are scored on.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass

from dagm_defects.data.labels import LabelRow, format_labels, parse_labels
from dagm_defects.data.profile import ProfileRow
from dagm_deploy.s3_objects import keys_under, locate, reader, split

_LABELS = re.compile(r"^class(\d+)/train/label/labels\.txt$", re.IGNORECASE)


@dataclass(frozen=True)
class Prepared:
    uri: str
    copied: int
    added: int
    classes: list[int]


def _number(rows: list[LabelRow]) -> int:
    numbers = [int(r.number) for r in rows if r.number.isdigit()]
    return max(numbers, default=0)


def prepare(s3, base_uri: str, rows: list[ProfileRow], profile_bucket: str, tag: str, target_uri: str) -> Prepared:
    base_bucket, base_prefix = split(base_uri.rstrip("/") + "/")
    target_bucket, target_prefix = split(target_uri.rstrip("/") + "/")
    tag = re.sub(r"[^A-Za-z0-9-]+", "-", tag).strip("-") or "profile"
    labels_keys, copied = {}, 0
    for key in keys_under(s3, base_bucket, base_prefix):
        relative = key[len(base_prefix):]
        found = _LABELS.match(relative)
        if found:
            labels_keys[int(found.group(1))] = key  # rewritten below, with the new rows
            continue
        s3.copy_object(Bucket=target_bucket, Key=target_prefix + relative,
                       CopySource={"Bucket": base_bucket, "Key": key})
        copied += 1

    by_class: dict[int, list[ProfileRow]] = defaultdict(list)
    for row in rows:
        by_class[row.dagm_class].append(row)
    read_base = reader(s3, base_bucket)
    for class_id in sorted(set(by_class) | set(labels_keys)):
        text = read_base(labels_keys[class_id]).decode("ascii", "replace") if class_id in labels_keys else ""
        labels, _ = parse_labels(text)
        train = f"{target_prefix}Class{class_id}/Train/"
        for row in by_class.get(class_id, []):
            number = f"{_number(labels) + 1:04d}"
            image = f"{tag}_{number}{posixpath.splitext(row.image_key)[1] or '.PNG'}"
            _copy(s3, row.image_key, profile_bucket, target_bucket, train + image)
            mask = None
            if row.mask_key:
                mask = f"{tag}_{number}_label{posixpath.splitext(row.mask_key)[1] or '.PNG'}"
                _copy(s3, row.mask_key, profile_bucket, target_bucket, train + "Label/" + mask)
            labels.append(LabelRow(number, bool(row.label), image, mask))
        s3.put_object(Bucket=target_bucket, Key=train + "Label/Labels.txt", Body=format_labels(labels).encode("ascii"))
    return Prepared(f"s3://{target_bucket}/{target_prefix}", copied, len(rows), sorted(by_class))


def _copy(s3, key: str, profile_bucket: str, target_bucket: str, target_key: str) -> None:
    source_bucket, source_key = locate(key, profile_bucket)
    s3.copy_object(Bucket=target_bucket, Key=target_key, CopySource={"Bucket": source_bucket, "Key": source_key})
