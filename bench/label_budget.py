"""How much labelling the default recipe needs: trained at several label budgets, as a user trains it.

For each data set present, genuine DAGM Class 8 (``../shared/data/dagm-real``: a Train split
only, so a stratified 30% of its good and of its defective images is held out by a fixed
seed, never trained on, and given to every job as its `test` channel) and magnetic-tile
Class 1 (``../shared/data/magnetic-tile``: trained on Class1/Train, tested on Class1/Test),
builds one training set per budget under OUT/<set>/<budget>/ClassN/Train (images and masks
symlinked, Label/Labels.txt rewritten):

- ``masks-K`` (K = 0, 5, 20, all): every training image, every defective one labelled
  defective, but only K of them keep their mask; the rest are image-level labels;
- ``defects-K`` (K = 0, 3, 5, 10, all): every good image and only K defective ones, with
  their masks. ``masks-all`` and ``defects-all`` are the same set: trained once, reported
  under both.

The chosen defective images are the first K of one seeded order, so a smaller budget's
choice is part of every larger one's. Each set trains through the training image's entry
command (``local_test/train_local.sh``) with the default recipe (no hyperparameters;
``--epochs`` overrides the epochs for smoke runs only and is recorded), one budget after
another. Per budget the JSON holds what the job's evaluation.json says: AP, AUROC, recall at
the served threshold (with the test defects behind it), the false-reject rate on good test
images (with their count), the threshold, the supervision mode the job reports (evaluation.json,
else model.json, else null), and the job's wall minutes. A budget whose set cannot be built or
whose job fails is recorded as failed with its error tail; the rest still run, and the exit
status is then 1. Without any set's data it says what is missing and exits 0, writing no record.
Usage: python bench/label_budget.py [--data-dagm DIR] [--data-tile DIR] [--sets dagm,tile]
       [--budgets masks-0,defects-3,...] [--out DIR] [--epochs N] [--record PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from dagm_defects.data.labels import LabelRow, parse_labels, write_labels
from dagm_defects.progress import write_line
from record import add_record_option, report
from training_job import run_job

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
MASK_BUDGETS = ("masks-0", "masks-5", "masks-20", "masks-all")
DEFECT_BUDGETS = ("defects-0", "defects-3", "defects-5", "defects-10", "defects-all")
BUDGETS = MASK_BUDGETS + DEFECT_BUDGETS
# The one training set both families end in; `defects-all` reports its job.
SAME_JOB = {"defects-all": "masks-all"}
SEED = 0
TEST_FRACTION = 0.3
ERROR_TAIL_LINES = 30


class BudgetError(ValueError):
    """A budget that the data set cannot fill, or a source that does not hold its files."""


@dataclass(frozen=True)
class SetSpec:
    name: str
    class_id: int
    # The source's split to test on; None holds out TEST_FRACTION of its Train split instead.
    test_split: str | None
    default_root: Path

    def split_dir(self, root: Path, split: str) -> Path:
        return root / f"Class{self.class_id}" / split


SETS = {
    "dagm": SetSpec("dagm", 8, None, SHARED_DATA / "dagm-real"),
    "tile": SetSpec("tile", 1, "Test", SHARED_DATA / "magnetic-tile"),
}


@dataclass(frozen=True)
class Part:
    """Labelled rows and the split directory their files are in."""

    directory: Path
    rows: list[LabelRow]


def read_part(split_dir: Path) -> Part:
    labels = split_dir / "Label" / "Labels.txt"
    rows, problems = parse_labels(labels.read_text(encoding="ascii", errors="replace"), source=str(labels))
    if problems:
        raise BudgetError("; ".join(problems[:3]))  # each names the file and line
    return Part(split_dir, sorted(rows, key=lambda row: row.image))


def hold_out(part: Part, fraction: float, seed: int) -> tuple[Part, Part]:
    """(train, test): `fraction` of the good and of the defective rows, chosen by `seed`, tested on."""
    test: set[str] = set()
    for defective in (False, True):
        group = [row.image for row in part.rows if row.defective == defective]
        test.update(random.Random(seed).sample(group, round(len(group) * fraction)))
    return (Part(part.directory, [row for row in part.rows if row.image not in test]),
            Part(part.directory, [row for row in part.rows if row.image in test]))


def split_set(spec: SetSpec, root: Path, seed: int = SEED) -> tuple[Part, Part, str]:
    """The set's training part, its test part, and what the test part is."""
    train = read_part(spec.split_dir(root, "Train"))
    if spec.test_split:
        return train, read_part(spec.split_dir(root, spec.test_split)), f"Class{spec.class_id}/{spec.test_split}"
    train, test = hold_out(train, TEST_FRACTION, seed)
    return train, test, (f"a stratified {TEST_FRACTION:.0%} of Class{spec.class_id}/Train held out "
                         f"(seed {seed}), never trained on")


def labelling_order(rows: list[LabelRow], seed: int) -> list[str]:
    """The defective images in the seeded order a budget takes them from: the first K."""
    return random.Random(seed).sample([row.image for row in rows if row.defective],
                                      sum(row.defective for row in rows))


def budget_rows(rows: list[LabelRow], budget: str, seed: int = SEED) -> list[LabelRow]:
    """The training rows of `budget` (masks-K or defects-K) taken from `rows`."""
    family, _, amount = budget.partition("-")
    if family not in ("masks", "defects") or not (amount == "all" or amount.isdigit()):
        raise BudgetError(f"unknown budget {budget!r}: expected masks-K or defects-K (K a number or 'all')")
    if amount == "all":
        return list(rows)
    count = int(amount)
    has_mask = {row.image: bool(row.mask) for row in rows}
    # Only a defective image with a mask can keep one; the order is the same for both families.
    candidates = [image for image in labelling_order(rows, seed) if family == "defects" or has_mask[image]]
    if count > len(candidates):
        what = "defective images with masks" if family == "masks" else "defective images"
        raise BudgetError(f"{budget} asks for {count} but the training part has only {len(candidates)} {what}")
    chosen = set(candidates[:count])
    if family == "masks":
        return [row if not row.defective or row.image in chosen else LabelRow(row.number, True, row.image, None)
                for row in rows]
    return [row for row in rows if not row.defective or row.image in chosen]


def write_part(part: Part, target: Path) -> None:
    """`target` (a ClassN/<Split> directory) made afresh: `part`'s images and masks symlinked
    to their sources, its rows in Label/Labels.txt."""
    files = [(part.directory / row.image, target / row.image) for row in part.rows]
    files += [(part.directory / "Label" / row.mask, target / "Label" / row.mask) for row in part.rows if row.mask]
    missing = [str(source) for source, _ in files if not source.is_file()]
    if missing:
        raise BudgetError(f"{part.directory}/Label/Labels.txt names {len(missing)} missing file(s): "
                          f"{', '.join(missing[:3])}")
    shutil.rmtree(target, ignore_errors=True)
    (target / "Label").mkdir(parents=True)
    for source, link in files:
        link.symlink_to(source.resolve())
    write_labels(target / "Label" / "Labels.txt", part.rows)


def build_budget(spec: SetSpec, train: Part, budget: str, set_out: Path, seed: int = SEED) -> tuple[Path, dict]:
    """The training channel of `budget` (set_out/<budget>, holding ClassN/Train) and what it labels."""
    rows = budget_rows(train.rows, budget, seed)
    data = set_out / budget
    write_part(Part(train.directory, rows), data / f"Class{spec.class_id}" / "Train")
    return data, counts(rows)


def build_test(spec: SetSpec, test: Part, set_out: Path) -> Path:
    """The test channel: set_out/test, holding ClassN/Test."""
    write_part(test, set_out / "test" / f"Class{spec.class_id}" / "Test")
    return set_out / "test"


def counts(rows: list[LabelRow]) -> dict:
    return {"good": sum(not r.defective for r in rows), "defective": sum(r.defective for r in rows),
            "masks": sum(bool(r.defective and r.mask) for r in rows)}


def train(data: Path, test: Path, work: Path, hyperparameters: dict, name: str) -> tuple[float, str | None]:
    """Run one job (training_job.run_job); return its wall minutes and, if it failed, its
    error tail."""
    # NO_DOCKER: the channels are symlinks into the sources, which a container that mounts
    # only the channel directory could not follow.
    result = run_job(data, work, hyperparameters, name, test, {"NO_DOCKER": "1"}, ERROR_TAIL_LINES)
    if result.failure is None:
        return result.minutes, None
    return result.minutes, "\n".join([result.failure, "--- last lines of the job ---", *result.tail])


def rounded(value) -> float | None:
    return None if value is None else round(value, 4)


def supervision_mode(reported) -> str | None:
    """The mode from what the job wrote: the mode itself, or its description ({"mode": ...})."""
    return reported.get("mode") if isinstance(reported, dict) else reported


def job_result(work: Path) -> dict:
    """What the job's evaluation.json (and model.json, for the supervision mode) say."""
    evaluation = json.loads((work / "output" / "data" / "evaluation.json").read_text())
    metadata_file = work / "model" / "model.json"
    metadata = json.loads(metadata_file.read_text()) if metadata_file.exists() else {}
    overall = evaluation["overall"]
    good = overall["fp"] + overall["tn"]
    return {
        "supervision": supervision_mode(evaluation.get("supervision", metadata.get("supervision"))),
        "evaluated_on": evaluation["source"],
        "ap": rounded(overall["ap"]),
        "auroc": rounded(overall["auroc"]),
        "recall": rounded(overall["recall"]),
        "test_defective": overall["n_defective"],
        "false_reject_rate": rounded(overall["fp"] / good) if good else None,
        "false_rejects": overall["fp"],
        "test_good": good,
        "threshold": rounded(evaluation["threshold"]),
    }


def run_budget(spec: SetSpec, train_part: Part, test: Path, budget: str, args, hyperparameters: dict) -> dict:
    set_out = args.out / spec.name
    name = f"{spec.name} {budget}"
    try:
        data, labelled = build_budget(spec, train_part, budget, set_out)
    except (BudgetError, OSError) as exc:
        return {"status": "failed", "error": f"building the training set: {exc}"}
    work = set_out / "jobs" / budget
    minutes, error = train(data, test, work, hyperparameters, name)
    result = {"labelled": labelled, "training_minutes": round(minutes, 2)}
    if error:
        return {"status": "failed", **result, "error": error}
    try:
        return {"status": "ok", **result, **job_result(work)}
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        return {"status": "failed", **result, "error": f"reading the job's evaluation: {exc!r}"}


def run_set(spec: SetSpec, root: Path, budgets: list[str], args, hyperparameters: dict) -> dict:
    try:
        train_part, test_part, test_source = split_set(spec, root)
        test = build_test(spec, test_part, args.out / spec.name)
    except (BudgetError, OSError) as exc:
        # Every budget of this set fails with the reason; the other set still runs.
        none = counts([])
        return {"data": str(root), "class": spec.class_id, "test": f"not built ({exc})", "train_part": none,
                "test_part": none, "budgets": {budget: {"status": "failed", "error": f"reading the source: {exc}"}
                                               for budget in budgets}}
    summary = {"data": str(root), "class": spec.class_id, "test": test_source,
               "train_part": counts(train_part.rows), "test_part": counts(test_part.rows), "budgets": {}}
    results = summary["budgets"]
    for budget in budgets:
        same = SAME_JOB.get(budget)
        if same in results:
            results[budget] = {**results[same], "same_job_as": same}
        else:
            results[budget] = run_budget(spec, train_part, test, budget, args, hyperparameters)
        write_line(f"bench-labels: {spec.name} {budget}: {json.dumps(results[budget])[:2000]}")
    return summary


def missing_data(spec: SetSpec, root: Path) -> str | None:
    splits = ["Train"] + ([spec.test_split] if spec.test_split else [])
    needed = [spec.split_dir(root, split) / "Label" / "Labels.txt" for split in splits]
    absent = [str(path) for path in needed if not path.exists()]
    return f"no {', '.join(absent)}" if absent else None


def listed(text: str, known: tuple[str, ...], what: str, parser: argparse.ArgumentParser) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in known]
    if unknown or not items:
        parser.error(f"--{what}: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    return list(dict.fromkeys(items))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dagm", type=Path, default=SETS["dagm"].default_root)
    parser.add_argument("--data-tile", type=Path, default=SETS["tile"].default_root)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--budgets", default=",".join(BUDGETS))
    parser.add_argument("--out", type=Path, default=REPO / "bench-output" / "labels")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (smoke runs only; recorded)")
    add_record_option(parser)
    args = parser.parse_args()
    sets = listed(args.sets, tuple(SETS), "sets", parser)
    budgets = listed(args.budgets, BUDGETS, "budgets", parser)
    roots = {"dagm": args.data_dagm, "tile": args.data_tile}
    missing = {name: missing_data(SETS[name], roots[name]) for name in sets}
    for name, reason in missing.items():
        if reason:
            print(f"bench-labels: {name} skipped, {reason} (a user's clone does not have ../shared/data)")
    present = [name for name in sets if not missing[name]]
    if not present:
        print("bench-labels: skipped, none of the data sets is here; no record written")
        return 0
    hyperparameters = {} if args.epochs is None else {"epochs": str(args.epochs)}
    results = {name: run_set(SETS[name], roots[name], budgets, args, hyperparameters) for name in present}
    failed = [f"{name} {budget}" for name, result in results.items()
              for budget, figures in result["budgets"].items() if figures["status"] == "failed"]
    report("label-budget", {
        "benchmark": "label_budget",
        "recipe": "the default hyperparameters (local_test/hyperparameters/real-cpu.json holds the same values)",
        "hyperparameters": hyperparameters,
        "epochs_override": args.epochs,
        "seed": SEED,
        "sets": results,
        "skipped": {name: reason for name, reason in missing.items() if reason},
        "failed": failed,
    }, args.record)
    if failed:
        print(f"bench-labels: {len(failed)} budget(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
