"""A pytest plugin: with `--doc-commands`, a run fails unless every command the docs show
ran (doc_commands.py says when a command that ran is one of them).

Every process a test starts goes through `subprocess.Popen` (`subprocess.run` and asyncio's
subprocesses too), so the plugin puts a recording subclass in its place and keeps each
command with how it ended. A shown command ran when a command of its shape ran and exited
0, or was stopped by a signal (a server a test ends); a start that failed or a non-zero
exit does not count, so a test of refusals proves nothing here. Commands `.ci/run` runs
(`make test` itself, `make image-test`) count as run. What no machine of ours can run is in
NOT_RUN_HERE with the reason and what runs instead; an entry that matches no shown command
is an error, so the list cannot outlive the docs.

Under pytest-xdist each worker sends its commands to the controller, which checks them
all. `make test` passes the option on a whole-suite run, and the suite's record
(suite_record.py) keeps the counts.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field

import pytest

from doc_commands import REPO, Shape, shapes, shown_commands, simple_commands
from suite_record import FIGURES

NOT_RUN_HERE = {
    ("docker", "run"): "needs a Docker daemon, which the suite's machines lack: make image-test (in .ci/run) "
                       "builds both images from the Dockerfiles and runs their `train` and `serve` as these do "
                       "(with buildah here)",
    ("docker", "tag"): "needs a Docker daemon (a local registry for SageMaker local mode)",
    ("docker", "push"): "needs a Docker daemon (a local registry for SageMaker local mode)",
    ("make", "images"): "builds with Docker and pushes to ECR: make image-test (in .ci/run) builds the same "
                        "Dockerfiles with buildah",
    ("tools/build_and_push.sh", ""): "builds with Docker and pushes to ECR in an AWS account; make image-test "
                                     "builds the same Dockerfiles",
    ("aws", "cloudformation deploy"): "creates the stack in an AWS account; the local AWS has no CloudFormation, "
                                      "so tools/retraining_stack.py creates the stack's event-driven resources "
                                      "from deploy/pipeline.yml (tests/test_retrain.py, tests/test_monitoring.py) "
                                      "and cfn-lint checks the template (tests/test_pipeline.py)",
    ("local_test/local_mode.py", ""): "SageMaker local mode runs the images with Docker; "
                                      "tests/test_local_mode.py checks the script's command line and every "
                                      "SDK call it makes against the installed SDK",
    ("pip", "install"): "installs the SageMaker SDK for local mode into the user's environment; make venv "
                        "installs the same extra's pins (requirements/local-mode.lock) into .venv",
    ("export", ""): "a shell builtin: the tests give every command they run the same variables "
                    "(conftest.aws_env)",
}


class RecordedPopen(subprocess.Popen):
    """subprocess.Popen that keeps its command and exit status in the ledger."""

    ledger: list[list] = []

    def __init__(self, args, *rest, **kwargs):
        self._entry = [args if isinstance(args, str) else [str(a) for a in args], None]
        RecordedPopen.ledger.append(self._entry)
        super().__init__(args, *rest, **kwargs)

    @property
    def returncode(self):
        return self._entry[1]

    @returncode.setter
    def returncode(self, value):
        self._entry[1] = value


@dataclass
class Verdict:
    shown: dict[Shape, list[str]]
    ran: set[Shape] = field(default_factory=set)
    in_ci: set[Shape] = field(default_factory=set)
    not_run_here: dict[Shape, str] = field(default_factory=dict)
    stale: list[tuple[str, str]] = field(default_factory=list)

    @property
    def missing(self) -> list[Shape]:
        return [s for s in self.shown if s not in self.ran | self.in_ci | set(self.not_run_here)]

    def counts(self) -> dict[str, int]:
        return {"shown": len(self.shown), "ran": len(self.ran), "in_ci_run": len(self.in_ci),
                "not_run_here": len(self.not_run_here), "missing": len(self.missing)}


def judge(runs: list[list]) -> Verdict:
    """Which shown commands the runs (`[command, exit status]`) ran."""
    verdict = Verdict(shown_commands())
    programs = {s.program for s in verdict.shown}
    done = [shape for command, status in runs if status == 0 or (status is not None and status < 0)
            for shape in _shapes_of(command, programs)]
    ci = [shape for line in (REPO / ".ci" / "run").read_text().splitlines() if not line.startswith("#")
          for shape in shapes(line)]
    for shape in verdict.shown:
        if any(shape.is_run_by(other) for other in done):
            verdict.ran.add(shape)
        elif any(shape.is_run_by(other) for other in ci):
            verdict.in_ci.add(shape)
        elif (shape.program, shape.subcommand) in NOT_RUN_HERE:
            verdict.not_run_here[shape] = NOT_RUN_HERE[shape.program, shape.subcommand]
    named = {(s.program, s.subcommand) for s in verdict.shown}
    verdict.stale = [key for key in NOT_RUN_HERE if key not in named]
    return verdict


def _shapes_of(command: str | list[str], programs: set[str]) -> list[Shape]:
    """The command's shapes, if it may be one the docs show (help texts only for those)."""
    try:
        words = command if isinstance(command, list) else [w for argv in simple_commands(command) for w in argv]
        names = {w.rsplit("/", 1)[-1] for w in words} | set(words)
        if not names & ({p.rsplit("/", 1)[-1].removeprefix("python -m ") for p in programs} | {"-m", "-c"}):
            return []
        return shapes(command)
    except ValueError:  # a shell string shlex cannot split is no command the docs show
        return []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--doc-commands", action="store_true",
                     help="fail the run unless every command the docs show ran (tests/command_ledger.py)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("doc_commands"):
        config.stash[_ORIGINAL] = subprocess.Popen
        subprocess.Popen = RecordedPopen
        config.stash[_RUNS] = []


def pytest_unconfigure(config: pytest.Config) -> None:
    if _ORIGINAL in config.stash:
        subprocess.Popen = config.stash[_ORIGINAL]


_ORIGINAL = pytest.StashKey[type]()
_RUNS = pytest.StashKey[list]()
VERDICT = pytest.StashKey[Verdict]()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist's controller: a worker's commands."""
    runs = json.loads(node.workeroutput.get("doc_commands_runs", "[]"))
    node.config.stash.setdefault(_RUNS, []).extend(runs)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not config.getoption("doc_commands"):
        return
    if hasattr(config, "workerinput"):
        config.workeroutput["doc_commands_runs"] = json.dumps(RecordedPopen.ledger)
        return
    verdict = judge(config.stash[_RUNS] + RecordedPopen.ledger)
    config.stash[VERDICT] = verdict
    config.stash.setdefault(FIGURES, {})["doc_commands"] = verdict.counts()
    if (verdict.missing or verdict.stale) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    verdict = config.stash.get(VERDICT, None)
    if verdict is None:
        return
    write = terminalreporter.write_line
    terminalreporter.section("commands the docs show")
    counts = verdict.counts()
    write(f"{counts['shown']} shown: {counts['ran']} ran in this run, {counts['in_ci_run']} run by .ci/run, "
          f"{counts['not_run_here']} cannot run here, {counts['missing']} did not run")
    for shape, reason in verdict.not_run_here.items():
        write(f"cannot run here: {shape}: {reason}")
    for shape in verdict.missing:
        write(f"DID NOT RUN: {shape}  (shown in {'; '.join(verdict.shown[shape])})")
    for key in verdict.stale:
        write(f"NOT_RUN_HERE names what the docs do not show: {' '.join(key)}")
