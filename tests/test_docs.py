"""The user guide and the README: the guide builds in strict mode with every page in its
nav, the README stays a front door, and every command the docs show in a shell block
exists and takes the flags they give it.

A command's program must be a Makefile target (`make X`), a console script of `.venv`, a
Python module or script of the repository, or a repository shell script; every `--flag`
must appear in that program's `--help` (a shell script's: its usage header). Programs
that are not ours are in NOT_CHECKED, each with the reason.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from doc_commands import (ASSIGNMENT, BIN, DOCS, REPO, doc_files, help_text, shell_commands,
                          simple_commands, subcommands)

README_MAX_LINES = 150
PYTHONS = {"python", "python3", "python3.11"}
NOT_CHECKED = {
    "docker": "Docker's CLI: not ours, and no daemon where the suite runs (make image-test runs the images)",
    "aws": "the AWS CLI: not installed in .venv; the tests make the same calls through boto3",
    "curl": "curl's own options; tests/test_serving_api.py makes the same requests",
    "pip": "pip's own options; make venv runs pip",
    "export": "a shell builtin that sets variables",
}


@functools.lru_cache(maxsize=None)
def makefile_targets() -> frozenset[str]:
    text = (REPO / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE))


def script_usage(path: Path) -> str:
    """A shell script's usage: its header comment."""
    lines = path.read_text().splitlines()[1:]
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    return "\n".join(header)


def lacking(name: str, args: list[str], usage: Callable[[], str]) -> str | None:
    """`NAME has no --x` for each long flag of `args` that the program's usage does not name."""
    flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    text = usage() if flags else ""
    missing = [f for f in flags if not re.search(r"(?<![\w-])" + re.escape(f) + r"(?![\w-])", text)]
    return f"{name} has no {', '.join(missing)}" if missing else None


def check_program(argv: list[str], pythonpath: str) -> str | None:
    """What is wrong with one command (`argv` without its variable assignments), or None."""
    program, args = argv[0], argv[1:]
    if program in NOT_CHECKED:
        return None
    if program == "make":
        unknown = [a for a in args if not a.startswith("-") and not ASSIGNMENT.match(a) and a not in makefile_targets()]
        return f"no Makefile target {', '.join(unknown)}" if unknown else None
    name = program.removeprefix(".venv/bin/")
    if name in PYTHONS:
        return check_python(args, pythonpath)
    path = REPO / program
    if "/" in program and not program.startswith(".venv/") and path.is_file():
        if path.suffix == ".sh":
            return lacking(program, args, lambda: script_usage(path))
        return lacking(program, args, lambda: help_text((sys.executable, str(path))))
    if (BIN / name).is_file():
        return check_console_script(name, args)
    return f"{program} is no Makefile target, console script or repository script"


def check_console_script(name: str, args: list[str]) -> str | None:
    usage = help_text((str(BIN / name),))
    choices = subcommands(usage)
    if choices:
        positional = next((a for a in args if not a.startswith("-")), "")
        usage = help_text((str(BIN / name), positional))
        # A subcommand the listing hides (click's aliases, e.g. `mlflow ui`) still has its usage.
        if positional not in choices and not re.search(rf"(?im)^usage: \S+ {re.escape(positional)}\b", usage):
            return f"{name} has no subcommand {positional!r} (it has {', '.join(sorted(choices))})"
        name = f"{name} {positional}"
    return lacking(name, args, lambda: usage)


def check_python(args: list[str], pythonpath: str) -> str | None:
    if args[:1] == ["-m"]:
        module = args[1]
        paths = [str(REPO / p) for p in pythonpath.split(os.pathsep) if p]
        sys.path[:0] = paths
        try:
            found = importlib.util.find_spec(module)
        finally:
            del sys.path[:len(paths)]
        if found is None:
            return f"no module {module}"
        return lacking(f"python -m {module}", args[2:], lambda: help_text((sys.executable, "-m", module), pythonpath))
    script = REPO / args[0]
    if not script.is_file():
        return f"no script {args[0]}"
    return lacking(args[0], args[1:], lambda: help_text((sys.executable, str(script))))


def problems(markdown: str) -> tuple[list[str], int]:
    """Every command of the markdown that fails its check, and how many were checked."""
    found, checked = [], 0
    for line in shell_commands(markdown):
        for argv in simple_commands(line):
            lead = next((i for i, a in enumerate(argv) if not ASSIGNMENT.match(a)), len(argv))
            assignments, argv = argv[:lead], argv[lead:]
            if not argv:
                continue
            pythonpath = next((a.split("=", 1)[1] for a in assignments if a.startswith("PYTHONPATH=")), "")
            checked += 1
            wrong = check_program(argv, pythonpath)
            if wrong:
                found.append(f"{line}: {wrong}")
    return found, checked


def test_the_guide_builds_in_strict_mode(tmp_path):
    result = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # the theme's end-of-life banner
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "troubleshooting" / "index.html").is_file()


def nav_pages(nav) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(nav_pages(item) for item in nav))
    if isinstance(nav, dict):
        return set().union(*(nav_pages(value) for value in nav.values()))
    return set()


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["strict"] is True
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    listed = nav_pages(config["nav"])
    assert pages - listed == set(), "pages missing from mkdocs.yml's nav"
    assert listed - pages == set(), "nav entries without a page"


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "make demo" in text and "make test" in text
    assert "<!-- figures: summary -->" in text and "<!-- /figures -->" in text
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    broken = [link for link in links if not link.startswith(("http://", "https://")) and not (REPO / link).exists()]
    assert not broken, broken


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_shown_exists_with_its_flags(doc):
    found, _ = problems(doc.read_text())
    assert not found, "\n".join(found)


def test_the_docs_show_commands_to_check():
    """A parser that finds nothing would pass the test above on any docs."""
    checked = sum(problems(doc.read_text())[1] for doc in doc_files())
    assert checked >= 40, checked


def test_the_check_fails_on_what_a_tool_does_not_have():
    good = "```bash\n.venv/bin/dagm-retrain validate --profile p.csv --root DIR\nmake demo DEMO_DIR=x\n```\n"
    assert problems(good) == ([], 2)
    bad = ("```bash\n"
           ".venv/bin/dagm-retrain validate --profile p.csv --no-such-flag\n"
           ".venv/bin/dagm-retrain revalidate --profile p.csv\n"
           "make no-such-target\n"
           "local_test/predict.sh a.png --no-such-flag\n"
           "PYTHONPATH=tools python -m local_aws --no-such-port 1\n"
           "python -m no_such_module\n"
           "frobnicate --now\n"
           "```\n"
           "```console\n$ dagm-synth out --no-such-size 8\nusage: not a command --flag\n```\n")
    found, checked = problems(bad)
    assert checked == 8 and len(found) == 8, found
    assert "--no-such-flag" in found[0] and "revalidate" in found[1] and "no-such-target" in found[2]
