"""local_test/local_mode.py, the SageMaker Python SDK 3.x local-mode example. Running it needs a
Docker daemon, which the CI machines lack, so this checks what can be checked without one: its
command line and its exit without the SDK (an optional extra for users; .venv has it, from
requirements/local-mode.lock), and, with the SDK, that every SDK name and keyword argument the
script uses exists there and that the trainer and model it configures pass the SDK's own validation."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "local_test" / "local_mode.py"
INSTALL_HINT = "pip install './code[local-mode]'"


def run_script(*args: str, hide_sdk_in=None) -> subprocess.CompletedProcess:
    """The script in this interpreter; with `hide_sdk_in` (a directory), an installed SDK is
    shadowed by a `sagemaker` package that fails to import, so the result is the same anywhere."""
    env = None
    if hide_sdk_in is not None:
        package = hide_sdk_in / "sagemaker"
        package.mkdir(exist_ok=True)
        (package / "__init__.py").write_text("raise ImportError(\"No module named 'sagemaker' (hidden by the test)\")\n")
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(hide_sdk_in)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env)


def test_help_works_without_the_sdk(tmp_path):
    result = run_script("--help", hide_sdk_in=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--data", "--instance-type", "local_gpu", "--epochs", "--train-image", "--serve-image", "--image"):
        assert option in result.stdout


def test_exits_2_with_the_install_hint_without_the_sdk(tmp_path):
    result = run_script("--data", str(tmp_path), hide_sdk_in=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert INSTALL_HINT in result.stderr


def test_importing_it_imports_no_sdk():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import local_mode; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sagemaker', 'boto3')))")
    result = subprocess.run([sys.executable, "-c", code, str(SCRIPT.parent)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_serving_image_no_registry_has_is_refused_before_training(tmp_path):
    result = run_script("--data", str(tmp_path), "--serve-image", "dagm-defects-serve:latest", hide_sdk_in=tmp_path)
    assert result.returncode == 2
    assert "docker push localhost:5000/dagm-defects-serve:latest" in result.stderr


# With the SDK: .venv installs it (requirements/local-mode.lock), so these never skip; an SDK
# that fails to import fails them.


@pytest.fixture
def local_mode(monkeypatch):
    assert importlib.util.find_spec("sagemaker.train"), f"SageMaker Python SDK 3.x not installed ({INSTALL_HINT})"
    # configure_aws_for_local() sets these (importing sagemaker.serve needs a region); setenv
    # first so that monkeypatch restores them afterwards.
    for name in ("AWS_DEFAULT_REGION", "SAGEMAKER_VALIDATE_ROLE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    spec = importlib.util.spec_from_file_location("local_mode", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.configure_aws_for_local()
    return module


def named_parameters(function) -> set[str]:
    """Parameters a keyword can name, not ones a **kwargs would silently swallow."""
    return {name for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)}


def test_every_sdk_name_and_keyword_the_script_uses_exists(local_mode):
    from sagemaker.serve import ModelBuilder
    from sagemaker.serve.local_resources import InvokeEndpointOutput, LocalEndpoint
    from sagemaker.serve.mode.local_container_mode import LocalContainerMode
    from sagemaker.train.model_trainer import ModelTrainer

    # Methods called on objects the SDK returns: ModelBuilder.deploy() returns a LocalEndpoint in
    # LOCAL_CONTAINER mode, and builder.modes holds the LocalContainerMode that started the container.
    methods = {"train": ModelTrainer.train, "build": ModelBuilder.build, "deploy": ModelBuilder.deploy,
               "invoke": LocalEndpoint.invoke, "delete": LocalEndpoint.delete,
               "destroy_server": LocalContainerMode.destroy_server}
    tree = ast.parse(SCRIPT.read_text())
    checked, called = [], set()
    for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
        # Imports are per function (the script imports the SDK lazily, and two different `Mode`s).
        names = {}
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "sagemaker":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
                    names[alias.asname or alias.name] = getattr(module, alias.name)
                    checked.append(f"{node.module}.{alias.name}")
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
                assert hasattr(names[node.value.id], node.attr), f"{node.value.id}.{node.attr}"
                checked.append(f"{node.value.id}.{node.attr}")
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Name) and node.func.id in names:
                target, label = names[node.func.id], node.func.id
            elif isinstance(node.func, ast.Attribute) and node.func.attr in methods:
                target, label = methods[node.func.attr], node.func.attr
                called.add(node.func.attr)
            else:
                continue
            assert not node.args, f"{label}: the script passes SDK arguments by keyword, so they can be checked"
            keywords = {keyword.arg for keyword in node.keywords}
            assert keywords <= named_parameters(target), f"{label}({', '.join(sorted(keywords))})"
            checked.extend(f"{label}({keyword}=)" for keyword in sorted(keywords))
    assert called == set(methods), "the table above no longer matches the script"
    assert "body" in named_parameters(InvokeEndpointOutput)  # json.load(reply.body)
    for expected in ("ModelTrainer(training_mode=)", "Compute(instance_type=)", "InputData(channel_name=)",
                     "ModelBuilder(image_uri=)", "ModelBuilder(s3_model_data_url=)", "Mode.LOCAL_CONTAINER",
                     "ModelServer.MMS", "SchemaBuilder(sample_input=)", "deploy(endpoint_name=)", "invoke(body=)"):
        assert expected in checked


def test_the_trainer_passes_the_sdks_validation(local_mode, tmp_path):
    from sagemaker.train.model_trainer import Mode

    args = local_mode.parse_args(["--data", str(tmp_path), "--instance-type", "local_gpu", "--epochs", "3"])
    trainer, inputs = local_mode.trainer_and_inputs(args, tmp_path)
    assert trainer.training_mode is Mode.LOCAL_CONTAINER
    assert trainer.training_image == "dagm-defects-train:latest"
    assert trainer.compute.instance_type == "local_gpu"  # the value the local runner turns into a GPU reservation
    assert trainer.hyperparameters["epochs"] == 3
    assert [channel.channel_name for channel in inputs] == ["train"]
    # Every check train() makes (configuration, channels, hyperparameters), without starting a container.
    assert trainer.train(input_data_config=inputs, dry_run=True) is None


def test_the_model_builds_without_docker_or_aws(local_mode, tmp_path):
    from sagemaker.serve import ModelServer
    from sagemaker.serve.mode.function_pointers import Mode

    args = local_mode.parse_args(["--data", str(tmp_path)])
    model_path = tmp_path / "serve"
    (model_path / "code").mkdir(parents=True)
    builder = local_mode.model_builder(args, model_path, {"instances": [{"b64": ""}]})
    model = builder.build()
    assert model.primary_container.image == args.serve_image
    container_mode = builder.modes[str(Mode.LOCAL_CONTAINER)]
    assert container_mode.model_server is ModelServer.MMS
    assert container_mode.model_path == str(model_path)
