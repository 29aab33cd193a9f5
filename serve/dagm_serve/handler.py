"""The MMS handler entry point, `dagm_serve.handler:handle`, a thin call into service.py.

A function entry point rather than the inference toolkit's handler-service class: MMS
logs and swallows an exception from a class's `initialize`, leaving a worker that looks
loaded but answers 500 forever, whereas an exception from `handle(None, context)` fails
the load, and `serve` reports it and exits. The toolkit's `Transformer` is not used
either: it decodes each request on its own, where here the front sends one batch of
already decoded images per call.
"""

from __future__ import annotations

import os

from dagm_defects.model_files import ArtifactError
from dagm_serve import environment
from dagm_serve.allocator import keep_freed_memory
from dagm_serve.service import Service

_service: Service | None = None


def _body(item) -> bytes | bytearray:
    """The request body as MMS read it (a bytearray: the arrays are used in place)."""
    body = item.get("body", item.get("data")) if isinstance(item, dict) else None
    if isinstance(body, str):
        return body.encode()
    return body if isinstance(body, (bytes, bytearray)) else bytes(body or b"")


def _report(settings: environment.ServingSettings, model_name: str, message: str) -> None:
    """Leave `message` where serve reads why this model was refused (model_server.py)."""
    if settings.load_reports_dir is None or not environment.MODEL_NAME.match(model_name):
        return
    report = settings.load_reports_dir / model_name
    partial = report.with_name(f".{model_name}.{os.getpid()}")
    try:
        partial.write_text(message + "\n")
        os.replace(partial, report)
    except OSError as exc:
        print(f"worker {os.getpid()}: cannot write {report}: {exc}", flush=True)


def handle(data, context):
    global _service
    if data is None:  # MMS's load call
        settings = environment.from_env()
        if settings.keep_freed_memory:
            keep_freed_memory()
        gpu_id = context.system_properties.get("gpu_id")
        try:
            _service = Service.load(context.system_properties["model_dir"], settings, gpu_id)
        except ArtifactError as exc:
            # serve answers with this message; MMS would log a traceback that only repeats it.
            print(f"worker {os.getpid()}: cannot load the model: {exc}", flush=True)
            _report(settings, context.model_name, str(exc))
            raise SystemExit(1) from None
        return None
    return [_service.answer(_body(item)) for item in data]
