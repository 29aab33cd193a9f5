"""InvokeEndpointAsync for real: a queue per endpoint, worker threads that call the
endpoint's `serve` processes, results in the local S3 and notifications in the local SNS.

This module is the API call, DeleteEndpoint's closing of the queue and the control API;
async_request.py checks a request's headers, async_queue.py queues and works the requests,
async_output.py writes their outcomes to S3, SNS and CloudWatch.

What it follows (the InvokeEndpointAsync API reference, the sagemaker-runtime and
sagemaker service models in botocore, and the developer guide's pages "Asynchronous
inference", "Check prediction results" and "Alarms and logs for tracking metrics from
asynchronous endpoints"):

- An endpoint whose config has `AsyncInferenceConfig` takes
  POST /endpoints/NAME/async-invocations (the headers: async_request.py). It answers 202
  with {"InferenceId"} and the headers X-Amzn-SageMaker-OutputLocation and
  X-Amzn-SageMaker-FailureLocation.
- Refusals are `ValidationError` (400): no such endpoint, an endpoint without
  AsyncInferenceConfig or not in service, a parameter outside the service model's limits.
- A full queue answers `ServiceUnavailable` (503, "The service is unavailable. Try your
  call again."): the service model lists InternalFailure, ServiceUnavailable and
  ValidationError as the operation's only errors, and a full queue is the retryable one.
  AWS documents no queue size; here it is `LOCAL_AWS_ASYNC_QUEUE` (default 1000) requests
  waiting for a worker, changeable at run time through the control API below.
- DeleteEndpoint (and the local AWS stopping) closes the queue: requests still waiting
  fail with a failure object and an ErrorTopic notification, in-flight ones get their
  answer while the processes drain, and the workers end.

Control API (JSON), for tests: GET /_local_aws/async answers {"queue_size", "endpoints":
{NAME: {"pending", "in_flight", "workers"}}, "worker_threads": the live worker threads of
all endpoints}; PUT (or POST) {"queue_size": N} sets the queue size for every endpoint
(null: back to LOCAL_AWS_ASYNC_QUEUE, else 1000).
"""

from __future__ import annotations

import json
import re

from moto.sagemaker import models as sagemaker_models
from moto.sagemakerruntime import responses as runtime_responses

from local_aws import async_queue, control
from local_aws.async_queue import QUEUES
from local_aws.async_request import Invalid, build_request
from local_aws.hosting import Hosting

CONTROL_PATH = "/_local_aws/async"

_ENDPOINT_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")


def _async_config(backend, endpoint, queue_config: dict | None) -> dict | None:
    config = backend.endpoint_configs.get(endpoint.endpoint_config_name)
    if config is None:  # deleted after the endpoint was made from it; the endpoint keeps what it had
        return queue_config
    return config.async_inference_config or None


def _error(status: int, code: str, message: str):
    # moto takes the status from the headers' "status", not from the tuple.
    return status, {"status": status, "x-amzn-ErrorType": code, "Content-Type": "application/json"}, json.dumps(
        {"__type": code, "message": message})


def _invoke_endpoint_async(self, hosting: Hosting):
    name = self.path.split("/")[2]
    if len(name) > 63 or not _ENDPOINT_NAME.fullmatch(name):
        return _error(400, "ValidationError", f"EndpointName {name!r} must match {_ENDPOINT_NAME.pattern} "
                                              f"(at most 63 characters)")
    backend = sagemaker_models.sagemaker_backends[self.current_account][self.region]
    endpoint = backend.endpoints.get(name)
    if endpoint is None:
        return _error(400, "ValidationError", f"Endpoint {name} of account {self.current_account} not found.")
    queue = QUEUES.by_endpoint.get(name)
    config = _async_config(backend, endpoint, getattr(queue, "config", None))
    if not config:
        return _error(400, "ValidationError", f"Endpoint {name} is not configured for asynchronous inference "
                                              f"(its endpoint config {endpoint.endpoint_config_name} has no "
                                              f"AsyncInferenceConfig); use InvokeEndpoint")
    if endpoint.endpoint_status not in ("InService", "Updating"):
        return _error(400, "ValidationError", f"Endpoint {name} is {endpoint.endpoint_status}, not InService")
    try:
        request = build_request(self, name, config)
    except Invalid as exc:
        return _error(400, "ValidationError", str(exc))
    queue = QUEUES.get(name, self.current_account, self.region, hosting)
    queue.config = config
    queue.resize(*async_queue.worker_count(endpoint, config))
    if not queue.put(request, QUEUES.size):
        return _error(503, "ServiceUnavailable", f"The service is unavailable. Try your call again. (endpoint "
                                                 f"{name}'s queue of asynchronous requests is full: "
                                                 f"{QUEUES.size} waiting)")
    return 202, {"status": 202, "Content-Type": "application/json",
                 "X-Amzn-SageMaker-OutputLocation": request.output_location,
                 "X-Amzn-SageMaker-FailureLocation": request.failure_location}, json.dumps(
        {"InferenceId": request.inference_id})


# The control API.

def _control(environ: dict, start_response) -> list[bytes]:

    method = environ.get("REQUEST_METHOD", "GET")
    status, value = 200, None
    if method in ("PUT", "POST"):
        try:
            body = control.read_json(environ, empty={})
            size = body["queue_size"]
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
                raise ValueError(f"queue_size must be a whole number >= 0 or null, not {size!r}")
            QUEUES.size_override = size
        except (ValueError, KeyError, TypeError) as exc:
            status, value = 400, {"error": f"send {{\"queue_size\": N}}: {exc}"}
    elif method != "GET":
        status, value = 405, {"error": f"{method} {CONTROL_PATH}: use GET or PUT"}
    return control.answer(start_response, status, value if value is not None else QUEUES.state())


def _install_control() -> None:
    control.mount(CONTROL_PATH, _control)


def install(hosting: Hosting) -> None:
    """InvokeEndpointAsync for real; DeleteEndpoint and hosting.shutdown close the queues.
    Call after extensions.install has put its own DeleteEndpoint in place (it wraps it)."""
    runtime_responses.SageMakerRuntimeResponse.invoke_endpoint_async = (
        lambda self: _invoke_endpoint_async(self, hosting))

    backend_class = sagemaker_models.SageMakerModelBackend
    original_delete = backend_class.delete_endpoint

    def delete_endpoint(self, endpoint_name):
        queue = QUEUES.pop(endpoint_name) if endpoint_name in self.endpoints else None
        if queue is not None:
            async_queue.close([queue])
        original_delete(self, endpoint_name)  # in-flight requests get their answers while processes drain
        if queue is not None:
            queue.join()

    backend_class.delete_endpoint = delete_endpoint

    original_shutdown = hosting.shutdown

    def shutdown() -> None:
        queues = QUEUES.pop_all()
        async_queue.close(queues)
        original_shutdown()
        for queue in queues:
            queue.join()

    hosting.shutdown = shutdown
    _install_control()
