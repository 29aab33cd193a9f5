"""CodeBuild projects that really build when an EventBridge rule starts them.

moto matches events against rules (S3 uploads in a bucket with EventBridge
notifications, alarm state changes: alarms.py) but has no CodeBuild target. Here a
matching rule whose target is a CodeBuild project, as pipeline.yml's RetrainOnProfile,
starts a build: the target's InputTransformer gives the environment overrides, the
project's buildspec (a path in this repository, as from a CODECOMMIT source, or inline
YAML) runs phase after phase with bash in the repository, with the project's
environment variables and the local AWS as AWS_ENDPOINT_URL. The install phase is
skipped: the .venv built from the dependency lock already holds what a build needs.
BatchGetBuilds shows the build IN_PROGRESS, then SUCCEEDED or FAILED (moto's own answer
marks every build SUCCEEDED the moment it is asked); its log is `build-ID.log` in the
work directory.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import yaml
from moto.codebuild.models import CodeBuildBackend, codebuild_backends
from moto.events import models as events_models
from moto.events.utils import EventTemplateParser
from moto.utilities.arns import parse_arn

from local_aws.hosting import REPO

PHASES = ("pre_build", "build", "post_build")
# The state of each build this module runs, by build id, as BatchGetBuilds must show it.
_STATES: dict[str, dict] = {}


def _script(buildspec: dict, phase: str) -> str | None:
    commands = ((buildspec.get("phases") or {}).get(phase) or {}).get("commands") or []
    return "set -eo pipefail\n" + "\n".join(commands) if commands else None


def _buildspec(source: dict) -> dict:
    given = source.get("buildspec") or "buildspec.yml"
    return yaml.safe_load(given if "\n" in given else (REPO / given).read_text())


def _environment(project: dict, overrides: list[dict], aws_env: dict[str, str], build_id: str) -> dict[str, str]:
    env = {**os.environ, **aws_env, "CODEBUILD_BUILD_ID": build_id, "CODEBUILD_SRC_DIR": str(REPO)}
    for variable in [*(project.get("environment") or {}).get("environmentVariables", []), *overrides]:
        env[variable["name"]] = str(variable["value"])
    return env


def _run(build: dict, buildspec: dict, env: dict[str, str], log_path: Path) -> None:
    status = "SUCCEEDED"
    with open(log_path, "w") as log:
        for phase in PHASES:
            script = _script(buildspec, phase)
            if script is None or (status == "FAILED" and phase != "post_build"):
                continue
            log.write(f"[local CodeBuild] phase {phase}\n")
            log.flush()
            code = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
            if code:
                log.write(f"[local CodeBuild] phase {phase} failed with exit code {code}\n")
                status = "FAILED"
    _STATES[build["id"]] = {"buildStatus": status, "currentPhase": "COMPLETED", "buildComplete": True}
    build.update(_STATES[build["id"]])


def start_build(account: str, region: str, target: dict, event: dict, aws_env: dict[str, str], work: Path) -> None:
    backend = codebuild_backends[account][region]
    name = parse_arn(target["Arn"]).resource_id
    project = backend.codebuild_projects[name].project_metadata
    transformer = target.get("InputTransformer") or {}
    given = EventTemplateParser.parse(transformer.get("InputTemplate"), transformer.get("InputPathsMap", {}),
                                      {"ingestion-time": event.get("time"), **event}) if transformer else {}
    build = backend.start_build(name)
    build["environment"]["environmentVariables"] = given.get("environmentVariablesOverride", [])
    env = _environment(project, build["environment"]["environmentVariables"], aws_env, build["id"])
    log_path = work / f"build-{build['id'].replace(':', '-')}.log"
    _STATES[build["id"]] = {"buildStatus": "IN_PROGRESS", "currentPhase": "BUILD", "buildComplete": False}
    threading.Thread(target=_run, args=(build, _buildspec(project["source"]), env, log_path),
                     name=f"build-{name}", daemon=True).start()


def install(aws_env: dict[str, str], work: Path) -> None:
    """`aws_env`: the variables that point a build's AWS clients at this local AWS."""
    original = events_models.Rule.send_to_targets
    lock = threading.Lock()

    def send_to_targets(self, original_event, transform_input=True):
        if not self.event_pattern.matches_event(original_event):
            return
        builds = [t for t in self.targets if parse_arn(t["Arn"]).service == "codebuild"]
        for target in builds:
            start_build(self.account_id, self.region_name, target, original_event, aws_env, work)
        if len(builds) < len(self.targets):
            with lock:  # moto's own delivery, without the targets it cannot handle
                kept, self.targets = self.targets, [t for t in self.targets if t not in builds]
                try:
                    original(self, original_event, transform_input)
                finally:
                    self.targets = kept

    events_models.Rule.send_to_targets = send_to_targets

    original_batch_get_builds = CodeBuildBackend.batch_get_builds

    def batch_get_builds(self, ids):
        builds = original_batch_get_builds(self, ids)
        for build in builds:
            build.update(_STATES.get(build["id"], {}))
        return builds

    CodeBuildBackend.batch_get_builds = batch_get_builds
