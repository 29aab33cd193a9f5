"""DataCaptureConfig as the SageMaker API takes and describes it (capture.py captures per it).

What it follows (the API reference's DataCaptureConfig and DataCaptureConfigSummary, and
botocore's sagemaker service model for the fields' limits):

- CreateEndpointConfig validates DataCaptureConfig as the service model says, answering
  ValidationError ("1 validation error detected: ..."): InitialSamplingPercentage,
  DestinationS3Uri and CaptureOptions are required; InitialSamplingPercentage 0..100;
  DestinationS3Uri at most 512 characters matching (https|s3)://([^/])/?(.*); KmsKeyId at
  most 2048 of [a-zA-Z0-9:/_-]; CaptureOptions 1..32 of {CaptureMode: Input | Output |
  InputAndOutput}; CaptureContentTypeHeader's CsvContentTypes / JsonContentTypes 1..10
  media types each (1..256 characters, the model's pattern); EnableCapture a boolean
  (default true). DescribeEndpointConfig answers the DataCaptureConfig as given (and none
  at all for a config without one). Serverless configs refuse DataCaptureConfig
  (serverless.py).
- DescribeEndpoint shows the endpoint's current config as a DataCaptureConfigSummary:
  EnableCapture, CaptureStatus (Started when enabled, else Stopped),
  CurrentSamplingPercentage, DestinationS3Uri and KmsKeyId.

Where it differs: DestinationS3Uri must be s3://BUCKET[/PREFIX] here (the API also takes
https:// object URLs, refused here with ValidationError). KmsKeyId is not checked against
KMS. DescribeEndpoint leaves KmsKeyId out of the summary when the config has none.
"""

from __future__ import annotations

import re
from typing import Any

from moto.sagemaker.exceptions import ValidationError

_DESTINATION = re.compile(r"(https|s3)://([^/])/?(.*)")
_KMS_KEY = re.compile(r"[a-zA-Z0-9:/_-]*")
_CONTENT_TYPE = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*\/[a-zA-Z0-9](-*[a-zA-Z0-9.])*")
_MODES = ("Input", "Output", "InputAndOutput")


def _invalid(value: Any, where: str, constraint: str) -> ValidationError:
    return ValidationError(message=f"1 validation error detected: Value '{value}' at 'dataCaptureConfig.{where}' "
                                   f"failed to satisfy constraint: {constraint}")


def _check_types(header: dict, key: str) -> None:
    types = header.get(key)
    if types is None:
        return
    where = f"captureContentTypeHeader.{key[0].lower()}{key[1:]}"
    if not isinstance(types, list) or not 1 <= len(types) <= 10:
        raise _invalid(types, where, "Member must have length between 1 and 10")
    for kind in types:
        if not (isinstance(kind, str) and 1 <= len(kind) <= 256 and _CONTENT_TYPE.fullmatch(kind)):
            raise _invalid(kind, f"{where}.member", "Member must have length between 1 and 256 and satisfy "
                                                    f"regular expression pattern: {_CONTENT_TYPE.pattern}")


def validate(config: Any) -> None:
    """DataCaptureConfig as CreateEndpointConfig checks it: ValidationError when wrong."""
    if config is None:
        return
    if not isinstance(config, dict):
        raise ValidationError(message="DataCaptureConfig must be a structure")
    for required in ("InitialSamplingPercentage", "DestinationS3Uri", "CaptureOptions"):
        if required not in config:
            raise ValidationError(message=f"1 validation error detected: Value null at 'dataCaptureConfig."
                                          f"{required[0].lower()}{required[1:]}' failed to satisfy constraint: "
                                          f"Member must not be null")
    unknown = set(config) - {"EnableCapture", "InitialSamplingPercentage", "DestinationS3Uri", "KmsKeyId",
                             "CaptureOptions", "CaptureContentTypeHeader"}
    if unknown:
        raise ValidationError(message=f"DataCaptureConfig has unknown field(s): {sorted(unknown)}")
    if "EnableCapture" in config and not isinstance(config["EnableCapture"], bool):
        raise _invalid(config["EnableCapture"], "enableCapture", "Member must be a boolean")
    percentage = config["InitialSamplingPercentage"]
    if isinstance(percentage, bool) or not isinstance(percentage, int) or not 0 <= percentage <= 100:
        raise _invalid(percentage, "initialSamplingPercentage",
                       "Member must have value greater than or equal to 0 and less than or equal to 100")
    destination = config["DestinationS3Uri"]
    if not (isinstance(destination, str) and len(destination) <= 512 and _DESTINATION.fullmatch(destination)):
        raise _invalid(destination, "destinationS3Uri", "Member must have length less than or equal to 512 and "
                                                        f"satisfy regular expression pattern: {_DESTINATION.pattern}")
    if not re.fullmatch(r"s3://[^/]+(/.*)?", destination):
        raise ValidationError(message=f"DestinationS3Uri {destination!r}: this local AWS writes captures to "
                                      f"s3://BUCKET[/PREFIX] destinations only")
    kms = config.get("KmsKeyId")
    if kms is not None and not (isinstance(kms, str) and len(kms) <= 2048 and _KMS_KEY.fullmatch(kms)):
        raise _invalid(kms, "kmsKeyId", "Member must have length less than or equal to 2048 and satisfy regular "
                                        f"expression pattern: {_KMS_KEY.pattern}")
    options = config["CaptureOptions"]
    if not isinstance(options, list) or not 1 <= len(options) <= 32:
        raise _invalid(options, "captureOptions", "Member must have length between 1 and 32")
    for option in options:
        mode = option.get("CaptureMode") if isinstance(option, dict) else None
        if mode not in _MODES:
            raise _invalid(mode, "captureOptions.member.captureMode",
                           f"Member must satisfy enum value set: [{', '.join(_MODES)}]")
    header = config.get("CaptureContentTypeHeader")
    if header is not None:
        if not isinstance(header, dict) or set(header) - {"CsvContentTypes", "JsonContentTypes"}:
            raise _invalid(header, "captureContentTypeHeader", "Member must have only CsvContentTypes and "
                                                               "JsonContentTypes")
        _check_types(header, "CsvContentTypes")
        _check_types(header, "JsonContentTypes")


def summary(config: dict | None) -> dict | None:
    """DescribeEndpoint's DataCaptureConfigSummary of the endpoint's current config."""
    if not config:
        return None
    enabled = config.get("EnableCapture", True)
    described = {"EnableCapture": enabled, "CaptureStatus": "Started" if enabled else "Stopped",
                 "CurrentSamplingPercentage": config["InitialSamplingPercentage"],
                 "DestinationS3Uri": config["DestinationS3Uri"]}
    if config.get("KmsKeyId"):
        described["KmsKeyId"] = config["KmsKeyId"]
    return described
