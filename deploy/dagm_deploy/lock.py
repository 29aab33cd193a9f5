"""One deploy at a time per endpoint: a DynamoDB item written only if absent or expired.

The item (key `Endpoint`) names its owner (host/pid/random) and when its lease ends. A
deploy takes it with a conditional put, which is atomic: of two deploys started together
exactly one gets it. The owner renews the lease from a background thread every third of
its length, so a crashed deploy's lock expires within one lease (minutes), and the next
deploy takes it over. Release and `unlock` are conditional on the owner, so nobody can
remove a lock that is not theirs by accident.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Callable

from botocore.exceptions import BotoCoreError, ClientError

from dagm_deploy import aws
from dagm_deploy.errors import Refused

NAMES = {"#k": "Endpoint", "#o": "Owner", "#s": "Since", "#e": "Expires"}


def _conditional_failure(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def ensure_table(dynamodb, table: str) -> None:
    """The pipeline's template creates the table; a first deploy elsewhere makes it."""
    try:
        dynamodb.describe_table(TableName=table)
        return
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
    try:
        dynamodb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "Endpoint", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "Endpoint", "KeyType": "HASH"}])
    except ClientError as error:  # another deploy made it at the same moment
        if error.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
    dynamodb.get_waiter("table_exists").wait(TableName=table)


def holder(dynamodb, table: str, endpoint: str) -> dict | None:
    """{"owner", "since", "expires"} of the lock on `endpoint`, or None."""
    item = dynamodb.get_item(TableName=table, Key={"Endpoint": {"S": endpoint}}, ConsistentRead=True).get("Item")
    if not item:
        return None
    return {"owner": item["Owner"]["S"], "since": float(item["Since"]["N"]), "expires": float(item["Expires"]["N"])}


def describe(held: dict) -> str:
    now = time.time()
    lease = (f"lease ends in {held['expires'] - now:.0f} s" if held["expires"] > now
             else f"lease expired {now - held['expires']:.0f} s ago")
    return f"{held['owner']}, started {now - held['since']:.0f} s ago, {lease}"


def unlock(dynamodb, table: str, endpoint: str, owner: str) -> None:
    """Remove the lock on `endpoint` if `owner` holds it; Refused naming the holder if not."""
    try:
        dynamodb.delete_item(TableName=table, Key={"Endpoint": {"S": endpoint}},
                             ConditionExpression="#o = :me", ExpressionAttributeNames={"#o": "Owner"},
                             ExpressionAttributeValues={":me": {"S": owner}})
    except ClientError as error:
        if not _conditional_failure(error):
            raise
        held = holder(dynamodb, table, endpoint)
        raise Refused(f"the lock on {endpoint} is held by {describe(held)}, not by {owner}: left in place"
                      if held else f"no lock is held on {endpoint}") from None


class Lock:
    def __init__(self, table: str, endpoint: str, lease_seconds: float, say: Callable[[str], None]):
        self.table, self.endpoint, self.lease, self.say = table, endpoint, lease_seconds, say
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.dynamodb = aws.control("dynamodb")
        self.stop = threading.Event()
        self.lost: str | None = None
        self.thread: threading.Thread | None = None
        self.waited_for: str | None = None

    def acquire(self, wait: float = 0) -> None:
        """Take the lock; while another deploy holds it, wait up to `wait` seconds for it."""
        ensure_table(self.dynamodb, self.table)
        deadline = time.monotonic() + wait
        while not self._take(deadline):
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        self.thread = threading.Thread(target=self._renew, name="deploy-lock-lease", daemon=True)
        self.thread.start()

    def _take(self, deadline: float) -> bool:
        """True once the lock is ours; False while it is held and the deadline is ahead."""
        now = time.time()
        try:
            previous = self.dynamodb.put_item(
                TableName=self.table, ReturnValues="ALL_OLD",
                Item={"Endpoint": {"S": self.endpoint}, "Owner": {"S": self.owner}, "Since": {"N": f"{now:.3f}"},
                      "Expires": {"N": f"{now + self.lease:.3f}"}},
                ConditionExpression="attribute_not_exists(#k) OR #e < :now",
                ExpressionAttributeNames={"#k": "Endpoint", "#e": "Expires"},
                ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}}).get("Attributes")
        except ClientError as error:
            if not _conditional_failure(error):
                raise
            held = holder(self.dynamodb, self.table, self.endpoint)
            if time.monotonic() < deadline:
                if held and held["owner"] != self.waited_for:
                    self.waited_for = held["owner"]
                    self.say(f"waiting for the deploy lock held by {describe(held)}")
                return False
            raise Refused(f"another deploy ({describe(held) if held else 'just finished'}) holds the lock on "
                          f"this endpoint; wait for it or for its lease to expire") from None
        if previous:
            self.say(f"took over the lock of {previous['Owner']['S']}, whose lease had expired")
        return True

    def _renew(self) -> None:
        good_until = time.time() + self.lease
        while not self.stop.wait(self.lease / 3):
            now = time.time()
            try:
                self.dynamodb.update_item(
                    TableName=self.table, Key={"Endpoint": {"S": self.endpoint}},
                    UpdateExpression="SET #e = :until", ConditionExpression="#o = :me",
                    ExpressionAttributeNames={"#e": "Expires", "#o": "Owner"},
                    ExpressionAttributeValues={":until": {"N": f"{now + self.lease:.3f}"}, ":me": {"S": self.owner}})
                good_until = now + self.lease
            except (ClientError, BotoCoreError) as error:
                if isinstance(error, ClientError) and _conditional_failure(error):
                    self.lost = "another deploy took the lock over"
                    return
                if now > good_until:  # a passing error is tried again at the next renewal
                    self.lost = f"the lease could not be renewed before it expired ({error})"
                    return

    def check(self) -> None:
        """Refused once the lease is lost: the rollout must stop and roll back."""
        if self.lost:
            raise Refused(f"lost the deploy lock: {self.lost}")

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        try:
            aws.until(time.monotonic() + 30, lambda: unlock(self.dynamodb, self.table, self.endpoint, self.owner),
                      "releasing the lock", self.say)
        except Refused as refused:
            self.say(f"lock not released: {refused}")
