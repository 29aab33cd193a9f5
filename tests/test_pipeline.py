"""The pipeline template (cfn-lint, and that its stage commands exist and take those
flags) and its Train stage (deploy/train_stage.py) on the local AWS."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_HPS, aws_client, aws_env, upload

TEMPLATE = REPO / "deploy" / "pipeline.yml"


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref, !Sub, ...) read as plain values."""


CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: (
    loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else
    loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node)))


def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"  # from requirements-dev.lock
    result = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def stage_commands() -> list[str]:
    commands = []
    for resource in template()["Resources"].values():
        if resource["Type"] != "AWS::CodeBuild::Project":
            continue
        spec = resource["Properties"]["Source"].get("BuildSpec", "buildspec.yml")
        if "\n" not in spec:
            assert (REPO / spec).is_file(), spec
            spec = (REPO / spec).read_text()
        for phase in yaml.safe_load(spec)["phases"].values():
            commands += phase.get("commands", [])
    return commands


def test_the_stages_run_files_that_exist_with_flags_they_accept():
    commands = stage_commands()
    scripts = [c for c in commands if re.search(r"python (deploy|local_test)/\S+\.py", c)]
    assert {re.search(r"(deploy/\w+\.py)", c).group(1) for c in scripts} == {"deploy/train_stage.py", "deploy/deploy.py",
                                                                                "deploy/retrain.py"}
    for command in scripts:
        words = shlex.split(command)
        script = words[words.index("python") + 1]
        assert (REPO / script).is_file(), script
        subcommand = [words[words.index(script) + 1]] if script.endswith(("deploy.py", "retrain.py")) else []
        help_text = subprocess.run([sys.executable, str(REPO / script), *subcommand, "--help"],
                                   capture_output=True, text=True).stdout
        for flag in (w for w in words if w.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", help_text), f"{script} has no {flag}"
    for path in re.findall(r"local_test/[\w./-]+", "\n".join(commands)):
        assert (REPO / path).is_file(), path


def test_pipeline_has_the_four_stages_and_least_privilege_roles():
    resources = template()["Resources"]
    stages = [s["Name"] for s in resources["Pipeline"]["Properties"]["Stages"]]
    assert stages == ["Source", "Build", "Train", "Deploy"]
    assert resources["BuildProject"]["Properties"]["Environment"]["PrivilegedMode"] is True
    for name, resource in resources.items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert not any(a == "*" or a.endswith(":*") for a in actions), (name, actions)
                if statement["Resource"] == "*":  # only actions AWS cannot scope to a resource
                    assert set(actions) <= {"ecr:GetAuthorizationToken", "sts:GetCallerIdentity",
                                            "cloudwatch:PutMetricData"}, (name, actions)


def run_stage(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "deploy" / "train_stage.py"), *args],
                          capture_output=True, text=True, env=aws_env(url), timeout=600)


@pytest.mark.slow
def test_train_stage_trains_gates_and_hands_over_the_model(local_aws, tiny_dataset, tmp_path):
    for path in sorted(tiny_dataset.rglob("*")):
        if path.is_file():
            upload(local_aws, f"stage-data/{path.relative_to(tiny_dataset).as_posix()}", path.read_bytes(),
                   bucket="pipeline-data")
    upload(local_aws, "models/.keep", b"", bucket="pipeline-data")
    images = tmp_path / "images.json"
    images.write_text(json.dumps({"tag": "abc", "train": {"uri": "dagm-defects-train:abc"},
                                  "serve": {"uri": "dagm-defects-serve:abc"}}))
    common = ["--images", str(images), "--data", "s3://pipeline-data/stage-data/", "--output",
              "s3://pipeline-data/models", "--role", "arn:aws:iam::123456789012:role/sm",
              "--hyperparameters", json.dumps(TINY_HPS), "--poll-seconds", "1"]

    passed = run_stage(local_aws, *common, "--job-name", "stage-ok", "--min-ap", "0", "--result", str(tmp_path / "t.json"))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["job"] == "stage-ok" and result["model_data"].endswith("stage-ok/output/model.tar.gz")
    bucket, _, key = result["model_data"][len("s3://"):].partition("/")
    assert aws_client(local_aws, "s3").head_object(Bucket=bucket, Key=key)["ContentLength"] > 0

    gated = run_stage(local_aws, *common, "--job-name", "stage-gated", "--min-ap", "1.01")
    assert gated.returncode == 1 and "quality gate: test AP" in gated.stderr and "below --min-ap 1.01" in gated.stderr

    broken = run_stage(local_aws, *common[:-4], "--hyperparameters", '{"epochs": "0"}', "--poll-seconds", "1",
                       "--job-name", "stage-broken")
    assert broken.returncode == 1 and "training job stage-broken failed" in broken.stderr and "epochs" in broken.stderr

    images.write_text("{}")
    missing = run_stage(local_aws, *common, "--job-name", "stage-noimage")
    assert missing.returncode == 1 and "no train image" in missing.stderr
