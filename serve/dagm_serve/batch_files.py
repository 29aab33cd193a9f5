"""The front's batch files: where each batch's pixels and its answer pass between the
front and an MMS worker without going through MMS (wire.py says why).

One private directory per server, made under DAGM_BATCH_FILES_DIR (default /dev/shm,
a RAM file system in a container) and removed when the server stops; the workers are
told its path and read or write nothing outside it. Each exchange takes two files, the
batch and its answer, and removes both when it ends, whatever happened, so a worker
that died or hung leaves nothing behind. Where no such directory can be made, or a
file cannot be written (Docker's /dev/shm holds 64 MB unless told otherwise), the
arrays travel inline in the MMS body as before.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exchange:
    batch: Path
    answer: Path


class BatchFiles:
    def __init__(self, directory: Path | None):
        self.directory = directory
        self._names = itertools.count()

    @classmethod
    def create(cls, parent: Path | None) -> "BatchFiles":
        """A private directory under `parent`; None (inline arrays) when there is none."""
        if parent is None:
            return cls(None)
        try:
            return cls(Path(tempfile.mkdtemp(prefix="dagm-batches-", dir=parent)))
        except OSError as exc:
            log.warning("batches go inline through MMS: no batch directory under %s (%s)", parent, exc.strerror)
            return cls(None)

    @contextlib.contextmanager
    def exchange(self) -> Iterator[Exchange | None]:
        """Two new empty files for one exchange (None when there is no directory or they
        cannot be made), removed on leaving."""
        if self.directory is None:
            yield None
            return
        n = next(self._names)
        paths = Exchange(self.directory / f"{n}.batch", self.directory / f"{n}.answer")
        try:
            for path in (paths.batch, paths.answer):
                path.touch(exist_ok=False)
            files = paths
        except OSError as exc:
            log.warning("batch %d goes inline through MMS: %s", n, exc)
            files = None
        try:
            yield files
        finally:
            for path in (paths.batch, paths.answer):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def close(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
