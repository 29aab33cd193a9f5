"""The commands the docs show, and when a command that ran is one of them.

The docs are README.md and docs/*.md; their commands are the lines of their bash, sh, shell
and console blocks. A command's shape is what running it means apart from its values: its
program, its subcommand and the options it gives. A console script is the same program
whether it starts as `.venv/bin/NAME`, `python -m MODULE` or `python -m PACKAGE` (whose
`__main__` calls the script's `main`); a repository script is its path, however it is
started (`bash local_test/x.sh`, an absolute path); `make` is its target and the variables
it is given; `aws` is its service and operation. A shown command ran when a command of the
same program and subcommand ran with at least its options (command_ledger.py).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOCS = REPO / "docs"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
SHELLS = {"bash", "sh"}
SEPARATORS = {"|", "||", "&&", ";", "&"}
REDIRECTS = {">", ">>", "<", ">&", "<&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Programs not ours, by how many words name their subcommand (`aws s3 cp`, `docker run`).
OTHERS_SUBCOMMANDS = {"aws": 2, "docker": 1, "pip": 1}
# make's options that run nothing.
DRY_RUNS = {"-n", "--dry-run", "--just-print", "--recon", "-q", "--question"}
# Options of the interpreter itself, before `-m` or a script; those of them that take a value.
PYTHON_OPTIONS_WITH_VALUE = {"-X", "-W"}


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def shell_commands(markdown: str) -> list[str]:
    """The commands of the markdown's shell blocks, continuation lines joined; in a
    `console` block only the lines after a `$ ` prompt are commands."""
    commands = []
    for language, body in FENCE.findall(markdown):
        if language not in SHELL_LANGUAGES:
            continue
        lines = body.replace("\\\n", " ").splitlines()
        if language == "console":
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        commands += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return commands


def simple_commands(line: str) -> list[list[str]]:
    """`line` split at pipes and `&&`, `;`, `&` into argument lists, redirections and
    comments dropped, `[--optional ...]` brackets taken off."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    commands, current, tokens = [], [], list(lexer)
    skip = False
    for index, token in enumerate(tokens):
        if skip:
            skip = False
        elif token in SEPARATORS:
            commands.append(current)
            current = []
        elif token in REDIRECTS:
            if current and current[-1].isdigit() and index and tokens[index - 1] == current[-1]:
                current.pop()  # the `2` of `2>/dev/null`
            skip = True
        else:
            current.append(token.strip("[]"))
    commands.append(current)
    return [c for c in commands if c]


def without_assignments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The leading `NAME=value` words of a command, and the command after them."""
    lead = next((i for i, a in enumerate(argv) if not ASSIGNMENT.match(a)), len(argv))
    return list(argv[:lead]), list(argv[lead:])


@functools.lru_cache(maxsize=None)
def help_text(argv: tuple[str, ...], pythonpath: str = "") -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in pythonpath.split(os.pathsep) if p)}
    result = subprocess.run([*argv, "--help"], capture_output=True, text=True, cwd=REPO, env=env, timeout=180)
    return result.stdout + result.stderr


def subcommands(usage: str) -> set[str]:
    """The program's subcommands: argparse's `{a,b,c}` in its usage line, or the names
    click lists under `Commands:`; none for a program without them."""
    found = re.search(r"^usage:[^\n{]*\{([\w,-]+)\}", usage, re.MULTILINE)
    if found:
        return set(found.group(1).split(","))
    return set(re.findall(r"^  ([\w-]+)", usage.partition("\nCommands:\n")[2], re.MULTILINE))


@functools.lru_cache(maxsize=None)
def console_scripts() -> dict[str, str]:
    """The console scripts of .venv by the module whose function they call."""
    found: dict[str, str] = {}
    for entry in importlib.metadata.entry_points(group="console_scripts"):
        if (BIN / entry.name).is_file():
            found.setdefault(entry.module, entry.name)
    return found


@functools.lru_cache(maxsize=None)
def script_of_module(module: str) -> str | None:
    """The console script that `python -m module` is: the module the script calls, or a
    package whose `__main__` imports that module's `main`."""
    scripts = console_scripts()
    if module in scripts:
        return scripts[module]
    try:
        spec = importlib.util.find_spec(f"{module}.__main__")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    called = re.search(r"^from ([\w.]+) import main$", Path(spec.origin).read_text(), re.MULTILINE)
    return scripts.get(called.group(1)) if called else None


@dataclass(frozen=True)
class Shape:
    program: str
    subcommand: str
    options: frozenset[str]

    def is_run_by(self, other: Shape) -> bool:
        return (self.program, self.subcommand) == (other.program, other.subcommand) and self.options <= other.options

    def __str__(self) -> str:
        return " ".join(filter(None, [self.program, self.subcommand, *sorted(self.options)]))


def program_of(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """The program a command runs, by the names of the module docstring, and its arguments;
    None for a shell or interpreter given no program (`bash -c` is taken apart by shapes)."""
    program, args = argv[0], list(argv[1:])
    name = Path(program).name
    if re.fullmatch(r"python(3(\.\d+)?)?", name):
        index = 0
        while index < len(args) and args[index].startswith("-") and args[index] != "-m":
            index += 2 if args[index] in PYTHON_OPTIONS_WITH_VALUE else 1
        if index >= len(args):
            return None
        if args[index] == "-m" and index + 1 < len(args):
            module = args[index + 1]
            return script_of_module(module) or f"python -m {module}", args[index + 2:]
        return program_of([args[index], *args[index + 1:]])
    path = Path(program)
    if program.startswith(".venv/bin/") or (path.is_absolute() and path.parent == BIN):
        return name, args
    if path.is_absolute() and path.is_relative_to(REPO):
        return str(path.relative_to(REPO)), args
    if "/" in program and (REPO / program).exists():
        return os.path.normpath(program), args
    return name, args


def shapes(command: str | Sequence[str]) -> list[Shape]:
    """The shapes of what a command line, or one argument list, runs."""
    if isinstance(command, str):
        return [shape for argv in simple_commands(command) for shape in shapes(argv)]
    _, argv = without_assignments([os.fspath(a) for a in command])
    if not argv:
        return []
    if Path(argv[0]).name in SHELLS:
        if "-c" in argv[1:]:
            script = argv[argv.index("-c") + 1:]
            return shapes(script[0]) if script else []
        rest = [a for a in argv[1:] if not a.startswith("-")]
        return shapes(argv[argv.index(rest[0]):]) if rest else []
    found = program_of(argv)
    if found is None:
        return []
    program, args = found
    if program == "make":
        if DRY_RUNS & set(args):
            return []
        variables = {a.split("=", 1)[0] for a in args if ASSIGNMENT.match(a)}
        targets = [a for a in args if not a.startswith("-") and not ASSIGNMENT.match(a)] or [""]
        return [Shape("make", target, frozenset(variables)) for target in targets]
    options = frozenset(a.split("=", 1)[0] for a in args if re.match(r"-[A-Za-z-]", a))
    depth = OTHERS_SUBCOMMANDS.get(program) or (1 if subcommands_of(program) else 0)
    leading = list(args[:depth])
    if depth and len(leading) == depth and not any(a.startswith("-") for a in leading):
        return [Shape(program, " ".join(leading), options)]
    return [Shape(program, "", options)]


@functools.lru_cache(maxsize=None)
def subcommands_of(program: str) -> frozenset[str]:
    """The subcommands a program of ours lists in its --help (a program with some may take
    one the listing hides, as `mlflow ui`); none for others'."""
    if program.startswith("python -m "):
        return frozenset(subcommands(help_text((sys.executable, "-m", program.removeprefix("python -m ")))))
    if (BIN / program).is_file() and program not in {"make", "curl", *OTHERS_SUBCOMMANDS}:
        return frozenset(subcommands(help_text((str(BIN / program),))))
    if program.endswith(".py") and (REPO / program).is_file():
        return frozenset(subcommands(help_text((sys.executable, str(REPO / program)))))
    return frozenset()


def shown_commands() -> dict[Shape, list[str]]:
    """Every shape the docs show, with where and as what: `docs/x.md: the command line`."""
    shown: dict[Shape, list[str]] = {}
    for doc in doc_files():
        for line in shell_commands(doc.read_text()):
            for shape in shapes(line):
                shown.setdefault(shape, []).append(f"{doc.relative_to(REPO)}: {line}")
    return shown
