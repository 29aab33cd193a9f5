"""What this project adds to moto, installed into its classes in-process.

- Endpoints are real: CreateEndpoint starts a `serve` process per variant on the model
  data in the local S3; the endpoint is `Creating` until every variant answers /ping,
  then `InService` (or `Failed` with the reason).
- UpdateEndpoint (moto answers HTTP 500): `Updating` while the new config's variants
  start; then they take over and the old processes stop (with a blue/green
  `DeploymentConfig`, in its steps under its rollback alarms: guardrails.py). If they cannot start, the
  endpoint stays on its old config, `InService`, with a FailureReason, as SageMaker does.
- InvokeEndpoint (moto returns canned bodies): routed by the variants' current weights,
  or to `TargetVariant`; answers `InvokedProductionVariant`; a model's non-200 answer is
  a `ModelError` with the original status, as SageMaker reports it. Each call publishes
  `Invocations`, `Invocation4XXErrors`, `Invocation5XXErrors` and `ModelLatency` to the
  local CloudWatch (namespace AWS/SageMaker, dimensions EndpointName and VariantName).
- Binary request bodies (PNG, .npy) reach the model as they are; moto decodes every
  body as UTF-8 and fails on them.
- Faults (faults.py): tests make chosen API calls fail or stall through the control API
  at /_local_aws/faults, and slow a variant, make it answer an error status, or hang it;
  InvokeEndpoint applies the variant faults, so they show in the metrics above.
- InvokeEndpointAsync (moto returns canned data) for endpoints with AsyncInferenceConfig: a
  queue and workers per endpoint, results in S3, SNS notifications, backlog metrics
  (async_inference.py).
- Inference pipelines (containers.py): a model of several containers runs one process per
  container, invoked in series or one by TargetContainerHostname (Direct mode); a
  container's error is a ModelError naming the container.
- Serverless variants (serverless.py): started on demand (cold starts publish
  ModelSetupTime), stopped when idle, MaxConcurrency and the 4 MB payload enforced.
- Data capture (capture.py): DataCaptureConfig validated, DescribeEndpoint's summary, and
  sampled InvokeEndpoint / InvokeEndpointAsync requests and answers written to S3 as
  SageMaker's JSON lines by a background thread, per the endpoint's current config.
- Shadow variants (shadow.py): ShadowProductionVariants validated and described, the shadow's
  process run with the endpoint, sampled copies of requests sent to it in the background
  (never delaying a client), its answers captured and its metrics published.
- Training jobs really run (training.py).
- Variant weights: moto drops an `InitialVariantWeight` of 0 (a canary's starting point)
  and has no default; here 0 stays 0 and an absent weight is 1.0.
- The model registry (registry.py): default approval status, version numbers never
  reused, UpdateModelPackage that keeps what it is not given, state-change events to
  EventBridge, DeleteModelPackage(Group), and endpoints of models made from a package.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
import time
import uuid
from typing import Any

from moto.cloudwatch.models import cloudwatch_backends
from moto.s3.models import s3_backends
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker import responses as sagemaker_responses
from moto.sagemaker.exceptions import ValidationError
from moto.sagemakerruntime import responses as runtime_responses

from local_aws import async_inference, capture, containers, faults, guardrails, registry, serverless, shadow, training
from local_aws import hosting as hosting_module
from local_aws.hosting import Hosting, Refused

# CreateTrainingJob's Environment, from the request handler to the backend that starts the job.
job_environment: contextvars.ContextVar[dict | None] = contextvars.ContextVar("job_environment", default=None)


def _variants(production_variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    variants = []
    for given in production_variants:
        weight = float(given.get("InitialVariantWeight", 1.0))
        variant = {"VariantName": given["VariantName"], "CurrentWeight": weight, "DesiredWeight": weight}
        if given.get("ServerlessConfig"):  # no instances: the serverless configuration instead
            variant.update(CurrentServerlessConfig=given["ServerlessConfig"],
                           DesiredServerlessConfig=given["ServerlessConfig"])
        else:
            count = int(given.get("InitialInstanceCount", 1))
            variant.update(CurrentInstanceCount=count, DesiredInstanceCount=count)
        variants.append(variant)
    return variants


def _weights(config: dict) -> dict[str, float]:
    return {v["VariantName"]: v["CurrentWeight"] for v in _variants(config["ProductionVariants"])}


def _model_data(backend, model_name: str) -> bytes:
    url = registry.container(backend, model_name).get("ModelDataUrl", "")
    if not url.startswith("s3://"):
        raise ValueError(f"model {model_name} has no s3:// ModelDataUrl ({url!r})")
    bucket, _, key = url[len("s3://"):].partition("/")
    s3 = s3_backends[backend.account_id]["aws"]
    return s3.get_object(bucket, key).value


def _model_environment(backend, model_name: str) -> dict[str, str]:
    return dict(registry.container(backend, model_name).get("Environment") or {})


def _bring_up(backend, hosting: Hosting, endpoint, config_name: str, on_ready, on_failure,
              keep_running: bool = False) -> None:
    """Start the config's variants in the background (with `keep_running`, unchanged ones of
    the endpoint stay as they run); call on_ready(processes, config) or on_failure(reason)."""

    def run():
        try:
            config = backend.describe_endpoint_config(config_name)
            # A multi-container model's or a serverless variant's spec, else (model, data, environment).
            models = {v["VariantName"]: serverless.spec(backend, endpoint.endpoint_name, v, containers.pipeline_spec(
                backend, v["ModelName"]) or (v["ModelName"], _model_data(backend, v["ModelName"]),
                                             _model_environment(backend, v["ModelName"])))
                for v in [*config["ProductionVariants"], *shadow.config_shadows(config)]}
        except Exception as exc:  # a missing model or S3 object: the endpoint says why
            on_failure(f"{type(exc).__name__}: {exc}")
            return
        processes, failure = hosting.start_variants(models, endpoint.endpoint_name if keep_running else None)
        if failure:
            on_failure(failure)
        else:
            on_ready(processes, config)

    threading.Thread(target=run, name=f"endpoint-{endpoint.endpoint_name}", daemon=True).start()


def install(hosting: Hosting) -> None:
    faults.install()
    registry.install()
    containers.install()
    serverless.install()
    SageMakerBackend = sagemaker_models.SageMakerModelBackend
    original_create = SageMakerBackend.create_endpoint
    original_delete = SageMakerBackend.delete_endpoint

    sagemaker_models.FakeEndpoint._process_production_variants = lambda self, pv: _variants(pv)

    def create_endpoint(self, endpoint_name, endpoint_config_name, tags):
        if endpoint_name in self.endpoints:
            raise ValidationError(message=f"Cannot create already existing endpoint \"{endpoint_name}\".")
        endpoint = original_create(self, endpoint_name, endpoint_config_name, tags)
        endpoint.endpoint_status = "Creating"

        def ready(processes, config):
            live, shadows = shadow.split(processes, config)
            hosting.replace(endpoint_name, live, _weights(config), shadows)
            endpoint.endpoint_status = "InService"

        def failed(reason):
            endpoint.endpoint_status, endpoint.failure_reason = "Failed", reason

        _bring_up(self, hosting, endpoint, endpoint_config_name, ready, failed)
        return endpoint

    def update_endpoint(self, endpoint_name, endpoint_config_name, deployment_config=None):
        endpoint = self.endpoints.get(endpoint_name)
        if endpoint is None:
            raise ValidationError(message=f"Could not find endpoint \"{endpoint_name}\".")
        if endpoint.endpoint_status != "InService":
            raise ValidationError(
                message=f"Cannot update in-progress endpoint \"{endpoint_name}\" (status {endpoint.endpoint_status}).")
        self.describe_endpoint_config(endpoint_config_name)  # ValidationError when missing
        endpoint.endpoint_status, endpoint.failure_reason = "Updating", None

        def take_over(processes, config):
            live, shadows = shadow.split(processes, config)
            hosting.replace(endpoint_name, live, _weights(config), shadows)
            endpoint.endpoint_config_name = endpoint_config_name
            endpoint.production_variants = _variants(config["ProductionVariants"])
            shadow.described(endpoint, config, _variants)
            endpoint.data_capture_config = config.get("DataCaptureConfig") or {}  # moto kept the first config's
            endpoint.endpoint_status = "InService"

        def failed(reason):
            endpoint.endpoint_status, endpoint.failure_reason = "InService", f"update rolled back: {reason}"

        blue_green = bool((deployment_config or {}).get("BlueGreenUpdatePolicy"))

        def ready(processes, config):
            if not blue_green:
                take_over(processes, config)
                return
            live, shadows = shadow.split(processes, config)

            def rolled_back(reason):  # the green fleet's shadow is no endpoint's: stop it too
                hosting_module.stop_all(shadows.values())
                failed(reason)

            guardrails.run(hosting, endpoint_name, live, _weights(config), deployment_config, self.account_id,
                           self.region_name, lambda: take_over(processes, config), rolled_back)

        # A blue/green fleet is wholly new: rolling it back stops every process in it.
        _bring_up(self, hosting, endpoint, endpoint_config_name, ready, failed, keep_running=not blue_green)
        return endpoint.arn

    def delete_endpoint(self, endpoint_name):
        original_delete(self, endpoint_name)
        hosting.remove(endpoint_name)

    original_create_training_job = SageMakerBackend.create_training_job
    original_describe_training_job = SageMakerBackend.describe_training_job

    def create_training_job(self, training_job_name, *args, **kwargs):
        if training_job_name in self.training_jobs:
            raise ValidationError(message=f"Training job {training_job_name} already exists")
        job = original_create_training_job(self, training_job_name, *args, **kwargs)
        job.environment = job_environment.get() or {}
        training.start(job, self.account_id, hosting.work)
        return job

    def describe_training_job(self, training_job_name):
        described = original_describe_training_job(self, training_job_name)
        environment = self.training_jobs[training_job_name].environment
        return {**described, "Environment": environment} if environment else described

    SageMakerBackend.describe_training_job = describe_training_job

    SageMakerBackend.create_training_job = create_training_job
    SageMakerBackend.create_endpoint = create_endpoint
    SageMakerBackend.update_endpoint = update_endpoint
    SageMakerBackend.delete_endpoint = delete_endpoint

    def update_endpoint_response(self):
        arn = self.sagemaker_backend.update_endpoint(
            self._get_param("EndpointName"), self._get_param("EndpointConfigName"),
            self._get_param("DeploymentConfig"))
        return sagemaker_responses.ActionResult({"EndpointArn": arn})

    sagemaker_responses.SageMakerResponse.update_endpoint = update_endpoint_response

    original_create_training_job_response = sagemaker_responses.SageMakerResponse.create_training_job

    def create_training_job_response(self):
        # moto drops CreateTrainingJob's Environment; the job's process needs it.
        environment = self._get_param("Environment") or {}
        problem = training.environment_problem(environment)
        if problem:
            raise ValidationError(message=problem)
        token = job_environment.set(environment)
        try:
            return original_create_training_job_response(self)
        finally:
            job_environment.reset(token)

    sagemaker_responses.SageMakerResponse.create_training_job = create_training_job_response

    def invoke_endpoint(self):
        name = self.path.split("/")[2]
        backend = sagemaker_models.sagemaker_backends[self.current_account][self.region]
        endpoint = backend.endpoints.get(name)
        if endpoint is None or endpoint.endpoint_status not in ("InService", "Updating"):
            return _error(400, "ValidationError", f"Endpoint {name} of account {self.current_account} not found"
                          if endpoint is None else f"Endpoint {name} is {endpoint.endpoint_status}")
        weights = {v["VariantName"]: float(v.get("CurrentWeight", 1.0)) for v in endpoint.production_variants}
        try:
            variant, process = hosting.route(name, weights, self.headers.get("X-Amzn-SageMaker-Target-Variant"))
        except LookupError as exc:
            return _error(400, "ValidationError", str(exc))
        forwarded = {k: v for k in ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes",
                                    containers.TARGET_CONTAINER_HEADER) if (v := self.headers.get(k)) is not None}
        raw = self.raw_body
        raw = raw if isinstance(raw, bytes) else (raw or "").encode()
        started = time.perf_counter()
        try:
            # A serverless variant admits up to MaxConcurrency calls at once, from arrival to answer.
            with getattr(process, "admit", lambda _: contextlib.nullcontext())(raw):
                effect = faults.variant_effect(name, variant)
                effect.stall()  # an injected delay or hang: the model is slow to answer
                try:
                    if effect.status is not None:
                        status, headers = effect.status, {}
                        body = json.dumps({"error": f"status {effect.status} injected by a local AWS fault"}).encode()
                    else:
                        status, headers, body = process.invoke(raw, forwarded)
                except OSError as exc:
                    status, headers = 503, {}
                    body = json.dumps({"error": f"model container unreachable: {exc}"}).encode()
        except Refused as refused:  # before any model saw it: no invocation metrics
            return _error(refused.status, refused.code, refused.message)
        latency_us = (time.perf_counter() - started) * 1e6
        _publish(self.current_account, self.region, name, variant, status, latency_us)
        event_id, inference_id = str(uuid.uuid4()), self.headers.get(capture.INFERENCE_ID_HEADER)
        # A copy for the shadow variant, if any (shadow.py): queued, never waited for.
        shadow.mirror(hosting, endpoint, self.current_account, self.region, raw, forwarded,
                      self.headers.get("Content-Type"), inference_id, event_id)
        if status != 200:
            container = headers.get(containers.FAILED_CONTAINER_HEADER, "primary")
            kind = "client" if 400 <= status < 500 else "server"
            return _error(424, "ModelError", f"Received {kind} error ({status}) from {container} with message "
                          f"\"{body.decode(errors='replace')}\"", {"OriginalStatusCode": status,
                                                                   "OriginalMessage": body.decode(errors="replace")})
        answer_type = headers.get("Content-Type", "application/json")
        capture.invoked(endpoint, self.current_account, self.region, variant, raw, self.headers.get("Content-Type"),
                        body, answer_type, inference_id, event_id)
        return 200, {"Content-Type": answer_type, "x-Amzn-Invoked-Production-Variant": variant}, body

    runtime_responses.SageMakerRuntimeResponse.invoke_endpoint = invoke_endpoint
    # Image bodies are binary: moto would decode every body as UTF-8 and answer 500.
    runtime_responses.SageMakerRuntimeResponse.use_raw_body = True
    async_inference.install(hosting)  # after DeleteEndpoint above: it wraps it
    capture.install(hosting)  # after async_inference: its DeleteEndpoint flushes last
    shadow.install(hosting, _variants, _publish)  # after capture: its shutdown stops the copies first


def _error(status: int, code: str, message: str, extra: dict | None = None):
    body = {"__type": code, "message": message, **(extra or {})}
    # moto takes the status from the headers' "status", not from the tuple.
    return status, {"status": status, "x-amzn-ErrorType": code, "Content-Type": "application/json"}, json.dumps(body)


def _publish(account: str, region: str, endpoint: str, variant: str, status: int, latency_us: float) -> None:
    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
    metrics = [("Invocations", 1.0, "None"), ("Invocation4XXErrors", float(400 <= status < 500), "None"),
               ("Invocation5XXErrors", float(status >= 500), "None"), ("ModelLatency", latency_us, "Microseconds")]
    cloudwatch_backends[account][region].put_metric_data("AWS/SageMaker", [
        {"MetricName": name, "Value": value, "Unit": unit, "Dimensions": dimensions} for name, value, unit in metrics
    ])
