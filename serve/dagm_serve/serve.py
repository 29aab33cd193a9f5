"""`serve`: the serving image's entry point (docker/entrypoint.sh serve).

Order of events: bind the public port (so /ping says 503 rather than nothing), start
MMS on private ports, check the artefact while MMS boots, load it into MMS and wait for
every worker to finish its warm-up, then let /ping say 200. A broken artefact or a bad
setting ends the process with a message and exit code 1 (2 for settings) instead of a
server answering 500 forever. SIGTERM stops the front, then MMS's whole process group.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from dagm_serve import environment
from dagm_serve.front import SINGLE_MODEL, FrontServer
from dagm_serve.model_server import ModelServer, ModelServerError
from dagm_serve.models import ModelRegistry, RegistryError

log = logging.getLogger("dagm_serve")


class Stopping(Exception):
    """Raised in the main thread by SIGTERM/SIGINT, wherever start-up is."""


def _on_signal(signum, _frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopping(signal.Signals(signum).name)


def _fail(message: str, code: int) -> int:
    print(f"serve: error: {message}", file=sys.stderr, flush=True)
    return code


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s")
    started = time.monotonic()
    try:
        settings = environment.from_env()
        config_file, log_config = environment.mms_files()
    except environment.SettingsError as exc:
        return _fail(str(exc), 2)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    work_dir = Path(tempfile.mkdtemp(prefix="dagm-serve-"))
    server = ModelServer(settings, config_file, log_config, work_dir)
    registry = ModelRegistry(server, settings, work_dir / "models")
    front = front_thread = None
    try:
        try:
            front = FrontServer(settings, registry, server.ports.inference)
        except OSError as exc:
            return _fail(f"cannot listen on port {settings.port}: {exc}", 1)
        front_thread = threading.Thread(target=front.serve_forever, name="front", daemon=True)
        front_thread.start()
        model_dir = None if settings.multi_model else registry.prepare(SINGLE_MODEL, str(settings.model_dir))
        server.start()
        server.wait_until_up()
        if model_dir is not None:
            registry.load(SINGLE_MODEL, str(settings.model_dir), model_dir)
        front.ready.set()
        mode = "multi-model" if settings.multi_model else f"model from {settings.model_dir}"
        log.info("ready in %.1f s: port %d, %s, %d worker(s), batches of up to %d (%d ms delay)",
                 time.monotonic() - started, settings.port, mode, settings.workers,
                 settings.server_batch_size, settings.server_batch_delay_ms)
        code = server.process.wait()
        return _fail(f"multi-model-server exited unexpectedly (code {code})", 1)
    except Stopping as stop:
        log.info("%s received: stopping", stop)
        return 0
    except (ModelServerError, RegistryError) as exc:
        return _fail(str(exc), 1)
    finally:
        if front_thread is not None:
            front.shutdown()
        if front is not None:
            front.server_close()
        server.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
