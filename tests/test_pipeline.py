"""The pipeline template (cfn-lint; that its stage commands exist and take those flags;
least privilege: a role per stage, separate training and hosting execution roles, no write
on every resource, no container role writing profiles, dependencies pinned by the lock)
and its Train stage (dagm-train-stage) on the local AWS."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tomllib
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


def buildspec(resource: dict) -> dict:
    """A CodeBuild project's buildspec: inline YAML, or a file in this repository."""
    spec = resource["Properties"]["Source"].get("BuildSpec", "buildspec.yml")
    if "\n" not in spec:
        assert (REPO / spec).is_file(), spec
        spec = (REPO / spec).read_text()
    return yaml.safe_load(spec)


def project_commands(resource: dict) -> list[str]:
    return [c for phase in buildspec(resource)["phases"].values() for c in phase.get("commands", [])]


def projects(t: dict) -> dict[str, dict]:
    return {name: r for name, r in t["Resources"].items() if r["Type"] == "AWS::CodeBuild::Project"}


def stage_commands() -> list[str]:
    return [c for resource in projects(template()).values() for c in project_commands(resource)]


STAGE_SCRIPTS = {"dagm-train-stage", "dagm-deploy", "dagm-retrain"}  # console scripts (deploy/pyproject.toml)
DEPLOY_PYPROJECT = REPO / "deploy" / "pyproject.toml"


def console_script(name: str) -> list[str]:
    """The command that runs a console script: the installed one, else its pyproject entry point."""
    installed = Path(sys.executable).parent / name
    if installed.is_file():
        return [str(installed)]
    scripts = tomllib.loads(DEPLOY_PYPROJECT.read_text())["project"].get("scripts", {})
    assert name in scripts, f"deploy/pyproject.toml declares no console script {name}"
    module, _, function = scripts[name].partition(":")
    return [sys.executable, "-c", f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; "
                                  f"sys.exit({function}())"]


def script_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` with deploy/ importable, for a checkout where the package is not installed yet."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "deploy"), env.get("PYTHONPATH")]))
    return env


def test_the_stages_run_console_scripts_with_flags_they_accept():
    commands = stage_commands()
    assert not [c for c in commands if re.search(r"\bpython3? +(deploy|local_test)/\S+\.py", c)], \
        "stages run the package's console scripts, not files under deploy/"
    scripts = [c for c in commands if shlex.split(c)[0] in STAGE_SCRIPTS]
    assert {shlex.split(c)[0] for c in scripts} == STAGE_SCRIPTS
    declared = tomllib.loads(DEPLOY_PYPROJECT.read_text())["project"].get("scripts", {})
    assert STAGE_SCRIPTS <= set(declared), f"deploy/pyproject.toml lacks {sorted(STAGE_SCRIPTS - set(declared))}"
    for command in scripts:
        words = shlex.split(command)
        subcommand = [words[1]] if not words[1].startswith("-") else []
        result = subprocess.run([*console_script(words[0]), *subcommand, "--help"], capture_output=True, text=True,
                                env=script_env())
        assert result.returncode == 0, result.stdout + result.stderr
        for flag in (w for w in words if w.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", result.stdout), f"{words[0]} {' '.join(subcommand)} has no {flag}"
    for path in re.findall(r"local_test/[\w./-]+", "\n".join(commands)):
        assert (REPO / path).is_file(), path


# --- least privilege --------------------------------------------------------------------
# Read actions, by the verb they start with; every other action counts as a write.
READ_PREFIXES = ("Describe", "Get", "List", "BatchGet", "BatchCheck", "Head")
# Writes AWS supports with no resource-level permission at all (Resource must be "*"):
# allowed on "*" only with a Condition. cloudwatch:PutMetricData: scoped by cloudwatch:namespace.
WILDCARD_ONLY_WRITES = {"cloudwatch:PutMetricData"}
# Reads AWS cannot scope to a resource (or lists this template's code makes by prefix).
WILDCARD_READS = {"ecr:GetAuthorizationToken", "sts:GetCallerIdentity", "cloudwatch:DescribeAlarms"}
PROFILES_BUCKET_ARN = "arn:aws:s3:::data-bucket"


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def statements(document: dict) -> list[dict]:
    """A policy's statements; those under an !If (read as [condition, then, else]) included."""
    found = []
    for item in as_list(document.get("Statement", [])):
        found += [s for s in as_list(item) if isinstance(s, dict)] if isinstance(item, list) else [item]
    return found


def is_read(action: str) -> bool:
    return action.split(":", 1)[-1].startswith(READ_PREFIXES)


def policies(t: dict) -> list[tuple[str, dict]]:
    """(resource, policy document) for every policy the template declares (not trust policies)."""
    found = []
    for name, resource in t["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            found += [(name, p["PolicyDocument"]) for p in props.get("Policies", [])]
        elif resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy", "AWS::S3::BucketPolicy",
                                  "AWS::SNS::TopicPolicy", "AWS::SQS::QueuePolicy"):
            found.append((name, props["PolicyDocument"]))
    return found


def role_statements(t: dict, role: str) -> list[dict]:
    """What `role` is allowed: its inline policies and the template's policies attached to it."""
    resources = t["Resources"]
    found = [s for p in resources[role]["Properties"].get("Policies", []) for s in statements(p["PolicyDocument"])]
    attached = {str(a).removesuffix(".Arn") for a in resources[role]["Properties"].get("ManagedPolicyArns", [])}
    for name, resource in resources.items():
        if resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy") and (
                name in attached or role in as_list(resource["Properties"].get("Roles", []))):
            found += statements(resource["Properties"]["PolicyDocument"])
    return [s for s in found if s.get("Effect") == "Allow"]


def role_of(value) -> str:
    """The role a `!GetAtt Role.Arn` (as this loader reads it) names."""
    return (".".join(value) if isinstance(value, list) else str(value)).removesuffix(".Arn")


def resolve(value, t: dict) -> str:
    """A resource ARN with parameters at their defaults and the data bucket named."""
    text = ".".join(value) if isinstance(value, list) else str(value)
    names = {name: str(spec.get("Default", "")) for name, spec in t["Parameters"].items()}
    names.update({"DataBucket.Arn": PROFILES_BUCKET_ARN, "AWS::Partition": "aws"})
    text = names.get(text, text)
    return re.sub(r"\$\{([^}]+)\}", lambda m: names.get(m.group(1), m.group(0)), text)


def matches(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value.lower(), pattern.lower())


def profile_key(t: dict) -> str:
    return f"{PROFILES_BUCKET_ARN}/{t['Parameters']['ProfilesPrefix']['Default']}2026-11.csv"


def wildcard_problems(t: dict) -> list[str]:
    """Statements that allow a write on every resource, or an action/resource wildcard."""
    problems = []
    for name, document in policies(t):
        for statement in statements(document):
            actions = as_list(statement.get("Action", []))
            problems += [f"{name}: action {a}" for a in actions if a == "*" or a.endswith(":*")]
            if statement.get("Effect") != "Allow" or "*" not in as_list(statement.get("Resource", [])):
                continue
            for action in actions:
                if action in WILDCARD_ONLY_WRITES:
                    if not statement.get("Condition"):
                        problems.append(f"{name}: {action} on * without a Condition")
                elif not is_read(action):
                    problems.append(f"{name}: write {action} on *")
                elif action not in WILDCARD_READS:
                    problems.append(f"{name}: {action} on * (AWS scopes it to resources)")
    return problems


def not_element_problems(t: dict) -> list[str]:
    found = []

    def walk(value, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("NotAction", "NotResource"):
                    found.append(f"{where}: {key}")
                walk(item, where)
        elif isinstance(value, list):
            for item in value:
                walk(item, where)

    for name, resource in t["Resources"].items():
        walk(resource, name)
    return found


def stage_roles(t: dict) -> dict[str, str]:
    """CodeBuild project -> its service role."""
    return {name: role_of(r["Properties"]["ServiceRole"]) for name, r in projects(t).items()}


def sagemaker_roles(t: dict) -> dict[str, dict[str, set[str]]]:
    """CodeBuild project -> {"training": roles its commands train as, "hosting": roles models get}."""
    found = {}
    for name, resource in projects(t).items():
        env = {v["Name"]: v["Value"] for v in resource["Properties"]["Environment"].get("EnvironmentVariables", [])}
        uses: dict[str, set[str]] = {"training": set(), "hosting": set()}
        for command in project_commands(resource):
            words = shlex.split(command.replace("\n", " "))
            text = " ".join(words)

            def role_after(flag: str, words: list[str] = words, env: dict = env) -> set[str]:
                values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == flag]
                return {role_of(env.get(v.strip("${}"), v)) for v in values}

            if re.search(r"dagm-train-stage|train_stage\.py", text):
                uses["training"] |= role_after("--role")
            elif re.search(r"dagm-retrain|retrain\.py", text):
                uses["training"] |= role_after("--role")
                # Without --hosting-role the new model gets --role too.
                uses["hosting"] |= role_after("--hosting-role") if "--hosting-role" in words else role_after("--role")
            elif re.search(r"dagm-deploy|deploy\.py", text):
                uses["hosting"] |= role_after("--role")
        found[name] = uses
    return found


def sharing_problems(t: dict) -> list[str]:
    problems = []
    roles = stage_roles(t)
    for role in set(roles.values()):
        users = sorted(p for p, r in roles.items() if r == role)
        if len(users) > 1:
            problems.append(f"{role} serves {users}")
    by_project = {a["Configuration"]["ProjectName"]: stage["Name"] for stage in t["Resources"]["Pipeline"]["Properties"]["Stages"]
                  for a in stage["Actions"] if a["ActionTypeId"]["Provider"] == "CodeBuild"}
    stage_role = {}
    for project, stage in by_project.items():
        stage_role.setdefault(roles[project], set()).add(stage)
    problems += [f"{role} serves stages {sorted(stages)}" for role, stages in stage_role.items() if len(stages) > 1]
    uses = sagemaker_roles(t)
    training = set().union(*(u["training"] for u in uses.values()))
    hosting = set().union(*(u["hosting"] for u in uses.values()))
    if not training or not hosting:
        problems.append(f"no training ({training}) or no hosting ({hosting}) execution role found")
    problems += [f"{role} runs training jobs and is a model's role" for role in sorted(training & hosting)]
    problems += [f"{role} is both a stage's role and an execution role" for role in sorted(set(roles.values()) & (training | hosting))]
    for project, role in roles.items():
        passed = {role_of(r) for s in role_statements(t, role) if "iam:PassRole" in as_list(s["Action"])
                  for r in as_list(s["Resource"])}
        needed = uses[project]["training"] | uses[project]["hosting"]
        if passed != needed:
            problems.append(f"{project}'s {role} may pass {sorted(passed)}, its commands pass {sorted(needed)}")
    return problems


def container_roles(t: dict) -> list[str]:
    return [name for name, r in t["Resources"].items() if r["Type"] == "AWS::IAM::Role" and any(
        "sagemaker.amazonaws.com" in as_list(s.get("Principal", {}).get("Service", []))
        for s in statements(r["Properties"]["AssumeRolePolicyDocument"]))]


def profile_write_problems(t: dict) -> list[str]:
    key, problems = profile_key(t), []
    for role in container_roles(t):
        for statement in role_statements(t, role):
            puts = [a for a in as_list(statement["Action"]) if matches(a, "s3:PutObject")]
            if puts and any(matches(resolve(r, t), key) for r in as_list(statement["Resource"])):
                problems.append(f"{role} may {puts} {key}")
    # The bucket itself refuses profile uploads from the stack's roles, or from anyone but
    # the quality team when QualityTeamPrincipal is given.
    denies = [s for name, document in policies(t) if t["Resources"][name]["Type"] == "AWS::S3::BucketPolicy"
              for s in statements(document) if s.get("Effect") == "Deny" and s.get("Principal") in ("*", {"AWS": "*"})
              and any(matches(a, "s3:PutObject") for a in as_list(s["Action"]))
              and any(matches(resolve(r, t), key) for r in as_list(s["Resource"]))]
    if not denies:
        problems.append(f"no bucket policy denies PutObject on {key}")
    for deny in denies:
        text = json.dumps(deny.get("Condition"))
        if "aws:PrincipalArn" not in text or "QualityTeamPrincipal" not in text:
            problems.append(f"the deny on {key} is not by aws:PrincipalArn and QualityTeamPrincipal: {text}")
        for role in container_roles(t):
            if f"{role}.Arn" not in text:
                problems.append(f"the deny on {key} leaves out {role} (without QualityTeamPrincipal)")
    return problems


PIP_OPTIONS = {"--quiet", "-q", "--no-deps", "--no-cache-dir", "--disable-pip-version-check", "--no-build-isolation"}
DEPLOY_LOCK = "requirements/deploy.lock"
DEPLOY_PROJECTS = {"./code", "./deploy"}  # dagm-deploy and the core it imports (deploy.lock pins both's needs)


def pip_problems(t: dict) -> list[str]:
    """Train, Deploy and Retrain install only requirements/deploy.lock (-r) and the deploy and core projects."""
    problems = []
    for name, resource in projects(t).items():
        commands = project_commands(resource)
        for command in commands:
            if not re.search(r"\bpip3? install\b", command):
                continue
            words = shlex.split(command)
            rest = words[words.index("install") + 1:]
            if "--no-deps" not in rest:
                problems.append(f"{name}: {command!r} without --no-deps")
            i = 0
            while i < len(rest):
                word = rest[i]
                if word == "-r" and i + 1 < len(rest):
                    if rest[i + 1] != DEPLOY_LOCK:
                        problems.append(f"{name}: -r {rest[i + 1]} is not {DEPLOY_LOCK}")
                    i += 2
                    continue
                if word not in DEPLOY_PROJECTS and word not in PIP_OPTIONS:
                    problems.append(f"{name}: unpinned {word!r} in {command!r}")
                i += 1
    return problems


def test_no_two_stages_share_a_role_and_training_never_hosts():
    assert sharing_problems(template()) == []


def test_no_write_on_every_resource_and_wildcard_only_writes_carry_a_condition():
    assert wildcard_problems(template()) == []


def test_no_not_action_or_not_resource():
    assert not_element_problems(template()) == []


def test_no_container_role_can_write_profiles_and_the_bucket_refuses_them():
    assert profile_write_problems(template()) == []


def test_stages_install_only_what_the_lock_pins():
    assert pip_problems(template()) == []


def registry_problems(t: dict) -> list[str]:
    """Only ModelApproverRole may change a version's approval; registering can never approve."""
    problems = []
    for role in (name for name, r in t["Resources"].items() if r["Type"] == "AWS::IAM::Role"):
        for statement in role_statements(t, role):
            actions = as_list(statement["Action"])
            if any(matches(a, "sagemaker:UpdateModelPackage") for a in actions) and role != "ModelApproverRole":
                problems.append(f"{role} may UpdateModelPackage")
            if any(matches(a, "sagemaker:CreateModelPackage") for a in actions):
                allowed = (statement.get("Condition") or {}).get("StringEquals", {}).get("sagemaker:ModelApprovalStatus")
                if not allowed or "Approved" in as_list(allowed):
                    problems.append(f"{role} may register a model as Approved ({allowed})")
    approver = role_statements(t, "ModelApproverRole")
    if not any("sagemaker:UpdateModelPackage" in as_list(s["Action"]) for s in approver):
        problems.append("ModelApproverRole cannot approve")
    return problems


def test_only_the_approver_role_approves_models():
    assert registry_problems(template()) == []


def test_deploy_lock_table_reaches_the_rollouts():
    t = template()
    table = t["Resources"]["DeployLockTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert table["Properties"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["Properties"]["KeySchema"] == [{"AttributeName": "Endpoint", "KeyType": "HASH"}]
    assert table["Properties"]["AttributeDefinitions"] == [{"AttributeName": "Endpoint", "AttributeType": "S"}]
    roles = stage_roles(t)
    for project in ("DeployProject", "RetrainProject"):
        env = {v["Name"]: v["Value"] for v in t["Resources"][project]["Properties"]["Environment"]["EnvironmentVariables"]}
        assert env.get("DAGM_DEPLOY_LOCK_TABLE") == "DeployLockTable", project
        granted = {a for s in role_statements(t, roles[project]) if "DeployLockTable.Arn" in as_list(s["Resource"])
                   for a in as_list(s["Action"])}
        assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"} <= granted
    for name, document in policies(t):
        for statement in statements(document):
            if any(a.startswith("dynamodb:") for a in as_list(statement.get("Action", []))):
                assert as_list(statement["Resource"]) == ["DeployLockTable.Arn"], name


def test_the_pipeline_trains_and_registers_and_an_approval_deploys():
    resources = template()["Resources"]
    stages = [s["Name"] for s in resources["Pipeline"]["Properties"]["Stages"]]
    assert stages == ["Source", "Build", "Train"]
    assert "--model-package-group" in " ".join(project_commands(resources["TrainProject"]))
    rule = resources["DeployOnApproval"]["Properties"]
    assert rule["EventPattern"] == {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"],
                                    "detail": {"ModelPackageGroupName": ["ModelPackageGroup"],
                                               "ModelApprovalStatus": ["Approved", "Rejected"]}}
    assert [role_of(t["Arn"]) for t in rule["Targets"]] == ["DeployProject"]
    deploy = " ".join(project_commands(resources["DeployProject"]))
    assert "dagm-deploy deploy" in deploy and '--model-package-group "$MODEL_PACKAGE_GROUP"' in deploy
    assert resources["BuildProject"]["Properties"]["Environment"]["PrivilegedMode"] is True
    assert not any(p["Properties"]["Environment"].get("PrivilegedMode") for name, p in projects(template()).items()
                   if name != "BuildProject")


def run_stage(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*console_script("dagm-train-stage"), *args],
                          capture_output=True, text=True, env=script_env(aws_env(url)), timeout=600)


@pytest.mark.slow
def test_train_stage_trains_gates_and_hands_over_the_model(local_aws, tiny_dataset, tmp_path):
    for path in sorted(tiny_dataset.rglob("*")):
        if path.is_file():
            upload(local_aws, f"stage-data/{path.relative_to(tiny_dataset).as_posix()}", path.read_bytes(),
                   bucket="pipeline-data")
    upload(local_aws, "models/.keep", b"", bucket="pipeline-data")
    images = tmp_path / "images.json"
    serve_digest = "dagm-defects-serve@sha256:" + "cd" * 32
    images.write_text(json.dumps({"tag": "abc", "train": {"uri": "dagm-defects-train:abc"},
                                  "serve": {"uri": "dagm-defects-serve:abc", "digest_uri": serve_digest}}))
    common = ["--images", str(images), "--data", "s3://pipeline-data/stage-data/", "--output",
              "s3://pipeline-data/models", "--role", "arn:aws:iam::123456789012:role/sm",
              "--hyperparameters", json.dumps(TINY_HPS), "--poll-seconds", "1"]

    registered = ["--model-package-group", "stage-models", "--commit", "0123abc"]
    passed = run_stage(local_aws, *common, *registered, "--job-name", "stage-ok", "--min-ap", "0",
                       "--max-false-reject", "1", "--result", str(tmp_path / "t.json"))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["job"] == "stage-ok" and result["model_data"].endswith("stage-ok/output/model.tar.gz")
    s3, sagemaker = aws_client(local_aws, "s3"), aws_client(local_aws, "sagemaker")
    bucket, _, key = result["model_data"][len("s3://"):].partition("/")
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
    # Registered for review: the serving image by digest, the job's evaluation.json as its metrics.
    package = sagemaker.describe_model_package(ModelPackageName=result["model_package"])
    assert (package["ModelApprovalStatus"], package["ModelPackageVersion"]) == ("PendingManualApproval", 1)
    assert package["InferenceSpecification"]["Containers"] == [{"Image": serve_digest, "ModelDataUrl": result["model_data"]}]
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key.replace("model.tar.gz", "output.tar.gz"))
                                         ["Body"].read())) as tar:
        written = tar.extractfile("evaluation.json").read()
    metrics = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    assert s3.get_object(Bucket=bucket, Key=metrics.split("/", 3)[3])["Body"].read() == written
    metadata = package["CustomerMetadataProperties"]
    assert float(metadata["test-ap"]) == json.loads(written)["overall"]["ap"] == result["test_ap"]
    assert (metadata["training-job"], metadata["dataset"], metadata["commit"]) == (
        "stage-ok", "s3://pipeline-data/stage-data/", "0123abc")
    assert package["MetadataProperties"] == {"GeneratedBy": "stage-ok", "CommitId": "0123abc"}

    gated = run_stage(local_aws, *common, *registered, "--job-name", "stage-gated", "--min-ap", "1.01")
    assert gated.returncode == 1 and "quality gate: test AP" in gated.stderr and "below --min-ap 1.01" in gated.stderr
    [rejected] = [p for p in sagemaker.list_model_packages(ModelPackageGroupName="stage-models")["ModelPackageSummaryList"]
                  if p["ModelPackageVersion"] == 2]
    assert rejected["ModelApprovalStatus"] == "Rejected"
    assert rejected["ModelPackageDescription"].startswith("Quality gate failed: test AP") and "1.01" in \
        rejected["ModelPackageDescription"]

    broken = run_stage(local_aws, *common[:-4], "--hyperparameters", '{"epochs": "0"}', "--poll-seconds", "1",
                       "--job-name", "stage-broken")
    assert broken.returncode == 1 and "training job stage-broken failed" in broken.stderr and "epochs" in broken.stderr

    images.write_text("{}")
    missing = run_stage(local_aws, *common, "--job-name", "stage-noimage")
    assert missing.returncode == 1 and "no train image" in missing.stderr
