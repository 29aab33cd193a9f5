"""S3 the way the deploy scripts use it: s3:// URIs, reads that tell a missing object
from a failing request, and moves that never lose the original."""

from __future__ import annotations

import json
from typing import Callable

from botocore.exceptions import ClientError

MISSING = ("NoSuchKey", "404", "NoSuchBucket")


def split(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ValueError(f"{uri!r} is not an s3://BUCKET/KEY URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def locate(key: str, bucket: str) -> tuple[str, str]:
    """(bucket, key) of a profile's key: an s3:// URI as it is, else a key in `bucket`."""
    return split(key) if key.startswith("s3://") else (bucket, key)


def reader(s3, bucket: str) -> Callable[[str], bytes | None]:
    """read(key) -> the object's bytes, or None when it does not exist."""

    def read(key: str) -> bytes | None:
        target_bucket, target_key = locate(key, bucket)
        try:
            return s3.get_object(Bucket=target_bucket, Key=target_key)["Body"].read()
        except ClientError as error:
            if error.response["Error"]["Code"] in MISSING:
                return None
            raise

    return read


def objects_under(s3, bucket: str, prefix: str) -> list[dict]:
    """ListObjectsV2's entries (Key, LastModified, ...) under `prefix`, folder markers left out."""
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item for item in page.get("Contents", []) if not item["Key"].endswith("/")]
    return found


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    return [item["Key"] for item in objects_under(s3, bucket, prefix)]


def move(s3, bucket: str, key: str, new_key: str) -> None:
    """Copy, check the copy, then delete the original: a failure on the way keeps it."""
    s3.copy_object(Bucket=bucket, Key=new_key, CopySource={"Bucket": bucket, "Key": key})
    s3.head_object(Bucket=bucket, Key=new_key)
    s3.delete_object(Bucket=bucket, Key=key)


def put_json(s3, bucket: str, key: str, value: dict) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(value, indent=2, default=str).encode(),
                  ContentType="application/json")
