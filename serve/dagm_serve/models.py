"""Which models are loaded, and the multi-model API's rules for changing that.

SageMaker's multi-model contract: `POST /models` {"model_name", "url"} loads (409 if
that name is loaded, 507 if there is no memory for it), `GET /models[/{name}]` lists
and describes, `DELETE /models/{name}` unloads (404 if absent). Single-model serving
uses the same path for `/opt/ml/model`, so both modes load, check and warm a model
identically: this process reads the artefact's metadata, the MMS workers load and check
its weights, and a refusal comes back with their message.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from dagm_defects.model_files import WEIGHTS_FILE, ArtifactError, read_metadata
from dagm_defects.placement import Canvas
from dagm_defects.archive import resolve_model_dir
from dagm_serve.environment import MODEL_NAME, ServingSettings
from dagm_serve.model_server import ModelRefused, ModelServer, ModelServerError

# Resident memory of one MMS worker with torch imported and a model warmed up on the
# CPU (measured: about 550 MB RSS); the weights come on top, once per worker.
WORKER_MEMORY_MB = 560


@dataclass(frozen=True)
class LoadedModel:
    """What the front needs of a loaded model: where it came from and how to feed it."""

    url: str
    model_dir: Path
    canvas: Canvas
    threshold: float


class RegistryError(Exception):
    def __init__(self, status: HTTPStatus | int, message: str):
        super().__init__(message)
        self.status = int(status)


def available_memory_mb() -> float:
    """What this container can still allocate: MemAvailable, capped by a cgroup v2 limit."""
    available = float("inf")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, (int(limit) - used) / 2**20)
    except (OSError, ValueError):
        pass
    return available


class ModelRegistry:
    def __init__(self, server: ModelServer, settings: ServingSettings, scratch: Path):
        self.server = server
        self.settings = settings
        self.scratch = scratch
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def list(self) -> list[dict]:
        return [{"modelName": n, "modelUrl": m.url} for n, m in sorted(self._models.copy().items())]

    def describe(self, name: str) -> dict:
        model = self._models.get(name)
        if model is None:
            raise RegistryError(HTTPStatus.NOT_FOUND, f"model {name!r} is not loaded")
        return {"modelName": name, "modelUrl": model.url}

    def load_request(self, body: bytes) -> dict:
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise RegistryError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON ({exc})") from None
        if not (isinstance(document, dict) and isinstance(document.get("model_name"), str)
                and isinstance(document.get("url"), str)):
            raise RegistryError(HTTPStatus.BAD_REQUEST, 'body must be {"model_name": "...", "url": "/path/to/model"}')
        return self.load(document["model_name"], document["url"])

    def _check_memory(self, name: str, model_dir: Path) -> None:
        weights_mb = (model_dir / WEIGHTS_FILE).stat().st_size / 2**20
        needed = self.settings.workers * (WORKER_MEMORY_MB + weights_mb)
        spare = available_memory_mb() - self.settings.memory_reserve_mb
        if needed > spare:
            raise RegistryError(
                HTTPStatus.INSUFFICIENT_STORAGE,
                f"not enough memory to load model {name!r}: it needs about {needed:.0f} MB, "
                f"{max(spare, 0):.0f} MB are free above the {self.settings.memory_reserve_mb} MB "
                f"reserve (DAGM_MEMORY_RESERVE_MB)",
            )

    def resolve(self, name: str, url: str) -> Path:
        """The artefact's directory for `url` (a model.tar.gz unpacked safely first)."""
        if not MODEL_NAME.match(name):
            raise RegistryError(HTTPStatus.BAD_REQUEST,
                                f"model name {name!r} must be 1-128 letters, digits, '.', '_' or '-'")
        try:
            return resolve_model_dir(Path(url), self.scratch / name)
        except ArtifactError as exc:
            raise RegistryError(HTTPStatus.BAD_REQUEST, str(exc)) from None

    def inspect(self, url: str, model_dir: Path) -> LoadedModel:
        """What the front needs of the artefact, read from its metadata; the workers load
        the weights and check them (service.py) without this process importing torch."""
        try:
            metadata = read_metadata(model_dir)
        except ArtifactError as exc:
            raise RegistryError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        return LoadedModel(url, model_dir, metadata.config.canvas, metadata.threshold)

    def register(self, name: str, model_dir: Path) -> None:
        """MMS's workers load `model_dir` as `name` (it is not served until `add`); an
        artefact they refuse is the request's fault (400) and says why."""
        self._check_memory(name, model_dir)
        try:
            self.server.register(name, model_dir)
        except ModelRefused as exc:
            raise RegistryError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        except ModelServerError as exc:
            raise RegistryError(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc)) from None

    def add(self, name: str, model: LoadedModel) -> None:
        with self._lock:
            self._models[name] = model

    def load(self, name: str, url: str) -> dict:
        """Load `url` as `name` into MMS."""
        with self._lock:
            if name in self._models:
                raise RegistryError(HTTPStatus.CONFLICT, f"model {name!r} is already loaded")
            model = self.inspect(url, self.resolve(name, url))
            self.register(name, model.model_dir)
            self._models[name] = model
        return {"status": f"model {name!r} loaded"}

    def restart_server(self) -> None:
        """Restart MMS and load every model it had again (supervisor.py: after a worker or
        MMS itself died)."""
        with self._lock:
            self.server.restart()
            for name, model in self._models.items():
                self.server.register(name, model.model_dir)

    def unload(self, name: str) -> dict:
        with self._lock:
            if name not in self._models:
                raise RegistryError(HTTPStatus.NOT_FOUND, f"model {name!r} is not loaded")
            try:
                self.server.unregister(name)
            except ModelServerError as exc:
                raise RegistryError(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc)) from None
            del self._models[name]
        return {"status": f"model {name!r} unloaded"}
