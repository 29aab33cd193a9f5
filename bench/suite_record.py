"""A pytest plugin: `--suite-record PATH` writes the run's own benchmark record (record.py):
its wall seconds from session start (collection included) to finish, and its outcome
counts. tests/conftest.py loads it; `make test` writes bench-output/suite.json, which
`make figures` takes into docs/results/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from record import write_record

OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed", "deselected")
_STARTED = pytest.StashKey[float]()
# Figures other plugins add to the record (command_ledger.py: the docs' commands that ran).
FIGURES = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--suite-record", type=Path, metavar="PATH",
                     help="write this run's duration and outcome counts as a benchmark record")


def pytest_sessionstart(session: pytest.Session) -> None:
    session.stash[_STARTED] = time.monotonic()


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("suite_record")
    if path is None or hasattr(session.config, "workerinput"):  # an xdist worker: its controller records
        return
    stats = session.config.pluginmanager.get_plugin("terminalreporter").stats
    results = {
        "seconds": round(time.monotonic() - session.stash[_STARTED], 1),
        **{outcome: len(stats.get(outcome, [])) for outcome in OUTCOMES},
        "exit_status": int(session.exitstatus),
        "workers": int(session.config.getoption("numprocesses", None) or 0),
        **session.config.stash.get(FIGURES, {}),
    }
    write_record(path, "suite", results, ["python", "-m", "pytest", *session.config.invocation_params.args])
