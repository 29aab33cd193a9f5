"""Write the docs' measured figures from the benchmark records, never by hand.

Every block between the lines `<!-- figures: NAME -->` and `<!-- /figures -->` in README.md
and docs/**/*.md is replaced by the table figures_tables.py renders for NAME (serving,
real-dagm, suite, summary, label-budget) from docs/results/*.json (record.py), with the line saying
when, on what machine, at which commit and by which command it was measured; a record with
a plot (label-budget) also gets it drawn to docs/results/NAME.png, which its table shows.
--check changes nothing and exits 1 naming every block and plot that differs from its records.
A record without its provenance, or a block without a table, is refused (exit 2).
Usage: python bench/figures.py [--check] [--root DIR] [--results DIR]   (make figures)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from figures_tables import PLOTS, TABLES
from record import REPO, RecordError, load_record

# Markers are whole lines, so that prose may quote them.
OPENING = re.compile(r"^<!-- figures: (\S+) -->$", re.M)
BLOCK = re.compile(r"^(?P<open><!-- figures: (?P<name>\S+) -->\n)(?P<body>.*?)^(?P<close><!-- /figures -->)$",
                   re.S | re.M)


class BlockError(ValueError):
    """A figures block that cannot be rendered."""


def load_records(results: Path) -> dict:
    records = {}
    for path in sorted(results.glob("*.json")):
        record = load_record(path)
        if record["benchmark"] != path.stem:
            raise RecordError(f"{path}: a record of {record['benchmark']!r} under the name {path.stem!r}")
        records[path.stem] = record
    return records


def documents(root: Path) -> list[Path]:
    readme = root / "README.md"
    return ([readme] if readme.exists() else []) + sorted((root / "docs").rglob("*.md"))


def rendered(text: str, records: dict, where: Path) -> tuple[str, list[str]]:
    """`text` with every figures block rendered, and the names of the blocks that changed."""
    if len(OPENING.findall(text)) != len(BLOCK.findall(text)):
        raise BlockError(f"{where}: a `<!-- figures: NAME -->` without its `<!-- /figures -->`")
    changed = []

    def render(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise BlockError(f"{where}: no table called {name!r} (known: {', '.join(TABLES)})")
        try:
            body = f"\n{TABLES[name](records)}\n\n"
        except KeyError as exc:
            raise RecordError(f"{where}: block {name!r}: a record's results lack {exc}") from exc
        if body != match["body"]:
            changed.append(name)
        return match["open"] + body + match["close"]

    return BLOCK.sub(render, text), changed


def drawn(records: dict, root: Path) -> dict[Path, bytes]:
    """Each plot whose record is here and whose PNG under ROOT/docs/results differs from it."""
    changed = {}
    for name, plot in PLOTS.items():
        if name not in records:
            continue
        try:
            png = plot(records[name])
        except KeyError as exc:
            raise RecordError(f"plot {name!r}: its record's results lack {exc}") from exc
        path = root / "docs" / "results" / f"{name}.png"
        if not path.exists() or path.read_bytes() != png:
            changed[path] = png
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any block or plot is stale")
    parser.add_argument("--root", type=Path, default=REPO, help="where README.md and docs/ are")
    parser.add_argument("--results", type=Path, help="the records; default ROOT/docs/results")
    args = parser.parse_args()
    try:
        records = load_records(args.results or args.root / "docs" / "results")
        # Every document rendered before any is written: a refusal leaves them all as they were.
        documents_changed = {}
        for path in documents(args.root):
            new, changed = rendered(path.read_text(), records, path.relative_to(args.root))
            if changed:
                documents_changed[path] = (new, changed)
        plots_changed = drawn(records, args.root)
    except (RecordError, BlockError) as exc:
        print(f"figures: {exc}", file=sys.stderr)
        return 2
    stale = [f"{path.relative_to(args.root)}: figures block {name!r}"
             for path, (_, changed) in documents_changed.items() for name in changed]
    stale += [f"{path.relative_to(args.root)}: plot" for path in plots_changed]
    if not args.check:
        for path, (new, _) in documents_changed.items():
            path.write_text(new)
        for path, png in plots_changed.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
    for block in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {block}")
    if args.check and stale:
        print("figures: the blocks and plots above differ from docs/results; `make figures` rewrites them",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
