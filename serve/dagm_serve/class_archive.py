"""`dagm-mms-class-archive`: records the Java classes multi-model-server loads while it
starts, registers a model and answers, into a class-data archive that its JVM then maps
at every start instead of loading and verifying those classes from the jars again.

On 2 cores the JVM's start took 0.65 s of wall time and 0.85 s of CPU without the
archive, 0.37 s and 0.50 s with it (Java 17, measured 2026-12-02); the CPU matters as
much as the wall time, since the worker's torch import runs beside it. The serving image
builds the archive once (Dockerfile.serve), `make venv` builds one for a checkout;
`serve` uses it when it exists (DAGM_MMS_CLASS_ARCHIVE), and a JVM that finds it stale
(another Java build, other jars) silently starts without it.

  dagm-mms-class-archive [PATH]    default: DAGM_MMS_CLASS_ARCHIVE's default
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dagm_serve import environment
from dagm_serve.model_server import ModelServer, ModelServerError


def build(output: Path) -> int:
    """Start MMS once with the JVM recording its classes and stop it; the archive's size."""
    settings = environment.from_env()
    config_file, log_config = environment.mms_files()
    work_dir = Path(tempfile.mkdtemp(prefix="dagm-class-archive-"))
    recorded = work_dir / "classes.jsa"
    server = ModelServer(settings, config_file, log_config, work_dir,
                         java_options=(f"-XX:ArchiveClassesAtExit={recorded}", "-Xlog:cds=error"))
    try:
        server.start()
        server.wait_until_up()
        try:  # a model that does not exist still takes MMS through registration's classes
            server.register("probe", work_dir / "no-model")
        except ModelServerError:
            pass
    finally:
        server.stop(grace=60)  # the JVM writes the archive on its way out
    try:
        if not recorded.is_file():
            raise ModelServerError(0, "the JVM wrote no class-data archive (its log above says why)")
        output.parent.mkdir(parents=True, exist_ok=True)
        staged = output.with_name(output.name + ".partial")
        shutil.move(recorded, staged)
        os.replace(staged, output)  # a server starting meanwhile sees the old archive or the new one
        return output.stat().st_size
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dagm-mms-class-archive", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, help="where to write it")
    args = parser.parse_args(argv)
    try:
        output = (args.path or environment.from_env().mms_class_archive or environment.DEFAULT_CLASS_ARCHIVE).absolute()
        size = build(output)
    except (environment.SettingsError, ModelServerError, OSError) as exc:
        print(f"dagm-mms-class-archive: error: {exc}", file=sys.stderr)
        return 1
    print(f"dagm-mms-class-archive: wrote {output} ({size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
