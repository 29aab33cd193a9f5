"""The command line: ``dagm-synth OUT [--classes ...]`` or ``python -m dagm_synth OUT ...``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from dagm_synth.classes import ALL_CLASSES, CLASS_SPECS
from dagm_synth.layout import MAX_IMAGES_PER_SPLIT, MIN_SIZE, generate_dataset
from dagm_synth.spec import REFERENCE_SIZE


def _classes_arg(text: str) -> list[int]:
    if text.strip().lower() == "all":
        return list(ALL_CLASSES)
    classes = []
    for part in text.split(","):
        part = part.strip()
        try:
            cls = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected 'all' or comma-separated class numbers, got {text!r}"
            ) from None
        if cls not in CLASS_SPECS:
            raise argparse.ArgumentTypeError(f"class {cls} out of range 1-10")
        classes.append(cls)
    return classes


def _int_arg(low: int, high: int | None = None, multiple: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{value} must be {bounds}")
        if value % multiple:
            raise argparse.ArgumentTypeError(f"{value} is not a multiple of {multiple}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dagm-synth",
        description="Write a synthetic DAGM 2007 data set in the competition layout.",
    )
    parser.add_argument("out", type=Path, help="root directory; Class1..Class10 go under it")
    parser.add_argument(
        "--classes", type=_classes_arg, metavar="all|1,3,7", default=list(ALL_CLASSES),
        help="'all' (default) or comma-separated class numbers, e.g. 1,3,7",
    )
    parser.add_argument(
        "--images-per-split", type=_int_arg(1, MAX_IMAGES_PER_SPLIT), metavar="N", default=None,
        help="images in each of Train and Test (default: the real 575 or 1150 per class)",
    )
    parser.add_argument(
        "--size", type=_int_arg(MIN_SIZE, multiple=8), metavar="PX", default=REFERENCE_SIZE,
        help=f"image side in pixels, a multiple of 8, at least {MIN_SIZE} (default 512)",
    )
    parser.add_argument("--seed", type=_int_arg(0), default=0, metavar="N", help="default 0")
    parser.add_argument(
        "--workers", type=_int_arg(1), default=None, metavar="N",
        help="processes (default: the CPUs available)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    summary = generate_dataset(
        args.out,
        classes=args.classes,
        images_per_split=args.images_per_split,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
    )
    class_list = ",".join(str(c) for c in summary["classes"])
    print(
        f"dagm-synth: wrote {summary['images']} images ({summary['defective']} defective) "
        f"of classes {class_list} at {args.size}x{args.size} to {summary['root']} "
        f"in {summary['seconds']:.1f}s with {summary['workers']} workers",
        flush=True,
    )
    return 0
