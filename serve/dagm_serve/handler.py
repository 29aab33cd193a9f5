"""The MMS handler entry point, `dagm_serve.handler:handle`.

A function entry point rather than a handler-service class: MMS logs and swallows an
exception from a class's `initialize`, leaving a worker that looks loaded but answers
500 forever, whereas an exception from `handle(None, context)` fails the load, and
`serve` reports it and exits.
"""

from __future__ import annotations

from sagemaker_inference.default_handler_service import DefaultHandlerService

from dagm_serve.transformer import BatchTransformer

_service: DefaultHandlerService | None = None


def handle(data, context):
    global _service
    if _service is None:
        _service = DefaultHandlerService(transformer=BatchTransformer())
    if data is None:  # MMS's load call
        _service.initialize(context)
        return None
    return _service.handle(data, context)
