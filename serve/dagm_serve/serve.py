"""`serve`: the serving image's entry point (docker/entrypoint.sh serve).

It reads the settings and starts multi-model-server on private ports before anything
else, importing nothing it does not need for that (asyncio, numpy and Pillow come
later): MMS's JVM takes 0.4-0.7 s to answer and importing the HTTP front (aiohttp, the
codecs) about 0.4 s on 2 cores, so the two overlap instead of adding up; lifecycle.py
does the rest. A bad setting ends the process with exit code 2 and a message, a broken artefact
with exit code 1, never a server answering 500 forever. Whatever ends it, MMS's whole
process group is stopped.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from dagm_serve import environment
from dagm_serve.batch_files import BatchFiles
from dagm_serve.model_server import ModelServer, become_subreaper


def _fail(message: str, code: int) -> int:
    print(f"serve: error: {message}", file=sys.stderr, flush=True)
    return code


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s")
    try:
        settings = environment.from_env()
        config_file, log_config = environment.mms_files()
    except environment.SettingsError as exc:
        return _fail(str(exc), 2)
    # Until lifecycle.py's event loop takes the signals over, one is noted rather than
    # obeyed mid-step, so that MMS, once started, is always stopped below.
    received: list[str] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: received.append(signal.Signals(number).name))
    become_subreaper()
    work_dir = Path(tempfile.mkdtemp(prefix="dagm-serve-"))
    batch_files = BatchFiles.create(settings.batch_files_dir)
    server = ModelServer(settings, config_file, log_config, work_dir, batch_files.directory)
    try:
        server.start()
        from dagm_serve import lifecycle  # imported once MMS is starting: see above

        try:
            return lifecycle.serve(settings, server, work_dir, batch_files, received)
        except lifecycle.Failed as exc:
            return _fail(str(exc), 1)
    finally:
        server.stop()
        batch_files.close()
        shutil.rmtree(work_dir, ignore_errors=True)
