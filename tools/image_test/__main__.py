"""Build both images from the committed Dockerfiles and run them for real (`make image-test`).

    PYTHONPATH=tools python -m image_test [--engine auto|docker|buildah] [--keep] [--reuse] [--work DIR]

With a Docker daemon it uses Docker and the Dockerfiles' default (CUDA) base. Without one
it uses buildah (vfs storage, chroot isolation, a storage root of its own under --work) on
a Debian 12 Python 3.11 base made here with debootstrap (PYTHON_BASE build argument).
Then, inside the built images, run as SageMaker runs them (the image's ENTRYPOINT with
`train` or `serve`, /opt/ml mounted):
  train   a tiny synthetic job: exit 0, model.pt, model.json, evaluation.json;
          a bad hyperparameter: non-zero exit and output/failure naming it;
  serve   that model: /ping 200, /invocations predictions, a bad body answered 4xx,
          SIGTERM stops it and leaves no process behind;
and check what each image holds: no compiler or headers, not the other image's packages,
not the synthetic generator, none of core's training-only modules in the serving image
(docker/serve-omits.txt), the OCI labels, the serving user, the size. Every step prints its time. Images, containers
and the storage root are removed at the end unless --keep. Exit 0 only if every check held.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from image_test.contents import check_contents
from image_test.engines import IMAGES, REPO, Buildah, Engine, choose_engine
from image_test.serving import check_omissions, test_serve
from image_test.steps import CheckFailed, Steps, log
from image_test.training import test_failing_train, test_train


def build_args() -> dict[str, str]:
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"SOURCE": "https://example.invalid/dagm-defects", "REVISION": revision or "unknown", "VERSION": "image-test"}


def build_and_inspect(engine: Engine, steps: Steps, kind: str, args: dict[str, str], reuse: set[str]) -> None:
    if kind not in reuse:
        with steps.step(f"build {kind} image (Dockerfile.{kind})"):
            engine.build(kind, args)
    with steps.step(f"{kind} image holds what it needs, nothing more"):
        check_contents(engine, kind, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image_test", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["auto", "docker", "buildah"], default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the images and the work folder")
    parser.add_argument("--reuse", action="store_true",
                        help="use images a --keep run left instead of building them (to rerun the checks)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("IMAGE_TEST_DIR", "/var/tmp/dagm-image-test")),
                        help="buildah's storage root and the test's files (default %(default)s)")
    options = parser.parse_args(argv)
    steps = Steps()
    engine: Engine | None = None
    try:
        with steps.step("engine"):
            engine = choose_engine(options.engine, options.work)
            options.work.mkdir(parents=True, exist_ok=True)
            log(f"   {engine.name}")
        args = {**engine.build_base_args, **build_args()}
        reuse = {kind for kind in IMAGES if options.reuse and engine.exists(kind)}
        if len(reuse) < len(IMAGES):
            engine.prepare(steps)
        build_and_inspect(engine, steps, "train", args, reuse)
        with steps.step("train: a tiny synthetic job"):
            model = test_train(engine, options.work)
        with steps.step("train: a bad hyperparameter"):
            test_failing_train(engine, options.work)
        if isinstance(engine, Buildah) and not options.keep:
            engine.remove("train")  # vfs copies every layer: free the space before the next build
        build_and_inspect(engine, steps, "serve", args, reuse)
        with steps.step("serve image lacks core's training-only modules and the generator"):
            check_omissions(engine)
        with steps.step("serve: ping, predict, a bad body, SIGTERM"):
            test_serve(engine, model)
    except CheckFailed as failure:
        log(f"FAILED: {failure}")
        return 1
    finally:
        if engine is not None and not options.keep:
            with steps.step("clean up images, containers and storage"):
                engine.cleanup()
        log("\n" + steps.table())
    log("image test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
