"""The front's batch files: where each batch's pixels and its answer pass between the
front and an MMS worker without going through MMS (wire.py says why).

One private directory per server, made under DAGM_BATCH_FILES_DIR (default /dev/shm,
a RAM file system in a container) and removed when the server stops; the workers are
told its path and read or write nothing outside it. Each exchange takes two files, the
batch and its answer, under names never used before, so a worker that died or hung and
wakes up late can only touch files nobody reads any more. When an exchange ends, its
answer file is removed; its batch file too, unless the worker answered (so it has read
it): then it is kept, up to SPARE_BYTES in all, and renamed to the next exchange's
batch, whose pixels are written over its pages. Writing a 16-image 512x512 batch (4 MB)
into a new tmpfs file took 2.1 ms, over a kept one's pages 0.46 ms, and removing one
0.6 ms, all on the front's event loop between one batch's answer and the next batch.
Where no such directory can be made, or a file cannot be written (Docker's /dev/shm
holds 64 MB unless told otherwise), the arrays travel inline in the MMS body as before.
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

# At most this many bytes of batch files are kept for reuse (a quarter of Docker's
# default /dev/shm): four 16-image 512x512 batches.
SPARE_BYTES = 16 * 2**20
SPARE_PREFIX = "spare-"


@dataclass(frozen=True)
class Exchange:
    batch: Path
    answer: Path


class BatchFiles:
    def __init__(self, directory: Path | None):
        self.directory = directory
        self._names = itertools.count()
        self._spares: list[tuple[Path, int]] = []  # kept batch files and their sizes

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
        """Two files under new names for one exchange (None when there is no directory or
        they cannot be made). On leaving, the answer file is removed, and so is the batch
        file unless the body of the `with` ended normally (the worker answered): then it
        is kept for a later exchange, within SPARE_BYTES."""
        if self.directory is None:
            yield None
            return
        n = next(self._names)
        paths = Exchange(self.directory / f"{n}.batch", self.directory / f"{n}.answer")
        try:
            self._new_batch_file(paths.batch)
            paths.answer.touch(exist_ok=False)
            files = paths
        except OSError as exc:
            log.warning("batch %d goes inline through MMS: %s", n, exc)
            files = None
        answered = False
        try:
            yield files
            answered = files is not None
        finally:
            if not (answered and self._keep(paths.batch, n)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(paths.batch)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(paths.answer)

    def _new_batch_file(self, path: Path) -> None:
        """A kept batch file renamed to `path`, else a new empty one."""
        while self._spares:
            spare, _ = self._spares.pop()
            try:
                os.rename(spare, path)
                return
            except FileNotFoundError:  # removed by hand: try the next one
                continue
        path.touch(exist_ok=False)

    def _keep(self, path: Path, n: int) -> bool:
        try:
            size = path.stat().st_size
            if sum(kept for _, kept in self._spares) + size > SPARE_BYTES:
                return False
            spare = path.with_name(f"{SPARE_PREFIX}{n}")
            os.rename(path, spare)
        except OSError:
            return False
        self._spares.append((spare, size))
        return True

    def close(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self._spares.clear()
