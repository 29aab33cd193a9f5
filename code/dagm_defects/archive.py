"""Find the artefact in a model directory, unpacking a `model.tar.gz` safely if that is
what the directory holds.

SageMaker unpacks `ModelDataUrl` itself, but people also point `serve` at a training
job's output (`model.tar.gz`) and multi-model endpoints hand over whatever was uploaded.
An archive is untrusted input: members with absolute paths, `..`, links or device files
are refused before anything is written.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from dagm_defects.model_files import WEIGHTS_FILE, ArtifactError

ARCHIVE_NAME = "model.tar.gz"


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise ArtifactError(f"{archive}: refused, member {member.name!r} points outside the archive")
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise ArtifactError(f"{archive}: refused, member {member.name!r} is a {kind}")


def unpack(archive: Path, destination: Path) -> Path:
    """Unpack `archive` into `destination` (created) after checking every member."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            destination.mkdir(parents=True, exist_ok=True)
            tar.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        # tarfile's "r:*" errors list every method it tried, one per line: keep one line.
        raise ArtifactError(f"{archive}: not a readable tar.gz archive ({' '.join(str(exc).split())})") from None
    return destination


def resolve_model_dir(model_dir: Path, scratch: Path | None = None) -> Path:
    """The directory holding `model.pt`/`model.json`: `model_dir` itself, or the unpacked
    `model_dir/model.tar.gz` (in `scratch`, since /opt/ml/model may be read-only)."""
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory {model_dir} does not exist")
    if (model_dir / WEIGHTS_FILE).is_file():
        return model_dir
    archive = model_dir / ARCHIVE_NAME
    if not archive.is_file():
        raise ArtifactError(f"model directory {model_dir} holds neither {WEIGHTS_FILE} nor {ARCHIVE_NAME}")
    key = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:16]
    root = scratch or Path(tempfile.gettempdir())
    return unpack(archive, root / f"dagm-model-{key}")
