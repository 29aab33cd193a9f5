"""Dataset profiles: the quality team's list of newly labelled images, and its checks.

A profile names images already uploaded to S3 (or a local directory). Two forms:

CSV, with a header; required columns `image_key,label,class`, optional `mask_key`:

    image_key,label,mask_key,class
    new/Class3/0001.PNG,good,,3
    new/Class3/0002.PNG,defective,new/Class3/0002_label.PNG,3
    new/Class3/0003.PNG,defective,,3

TXT, DAGM `Labels.txt` rows after two header comments giving the base prefix and class:

    # base: new/Class3/
    # class: 3
    1
    0001	0	0001.PNG	0	0
    0002	1	0002.PNG	0	0002_label.PNG
    0003	1	0003.PNG	0	0

Images resolve under `base`, masks under `base` + `Label/` as in a DAGM split, so a
split's own Labels.txt with the two header lines is a profile; `# masks: PREFIX`
points the masks elsewhere.

Keys are relative to the profile's bucket (or directory); `s3://` URIs are taken as
they are. Labels: `good`/`defective` (also `0`/`1`). A defective row without a mask (an
empty `mask_key`, or a TXT row ending `0<TAB>0`) is an image-level label: an inspector
said "defective" and drew nothing. A mask that is all zero says no more than that and
counts as one too. A profile without any defective row is a good-only profile.
`validate_profile` reports every problem with its row number (the header is row 1 in a
CSV; in a TXT, rows count from the first line of the file) and never stops at the first.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Callable

from dagm_defects.imaging import ImageDecodeError, decode_gray, decode_mask

REQUIRED = ("image_key", "label", "class")
COLUMNS = REQUIRED + ("mask_key",)
LABELS = {"good": 0, "0": 0, "defective": 1, "1": 1}


@dataclass(frozen=True)
class ProfileRow:
    row: int
    image_key: str
    label: int
    dagm_class: int
    mask_key: str | None


@dataclass
class ProfileReport:
    rows: list[ProfileRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Row numbers of defective rows whose mask decoded all zero (known once validated).
    empty_masks: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.rows)

    def labels(self) -> dict:
        """The label budget: how many rows of each kind of label, and its name."""
        defective = [r for r in self.rows if r.label]
        masked = sum(1 for r in defective if r.mask_key and r.row not in self.empty_masks)
        image_level = len(defective) - masked
        if not defective:
            budget = "good-only: no defective image"
        elif not masked:
            budget = "image-level: no defective image has a mask"
        elif image_level:
            budget = "mixed: some defective images have masks, the others image-level labels"
        else:
            budget = "masks: every defective image has a mask"
        return {"good": len(self.rows) - len(defective), "defective_with_mask": masked,
                "defective_image_level": image_level, "empty_masks": len(self.empty_masks), "budget": budget}

    def to_dict(self) -> dict:
        return {"valid": self.ok, "rows": len(self.rows), "defective": sum(r.label for r in self.rows),
                "labels": self.labels(), "problems": self.problems}


def _row(report: ProfileReport, number: int, image: str, label: str, dagm_class: str, mask: str) -> None:
    problems = []
    image, label, dagm_class, mask = image.strip(), label.strip().lower(), dagm_class.strip(), mask.strip()
    if not image:
        problems.append("no image key")
    if label not in LABELS:
        problems.append(f"label {label!r} is not good/defective (or 0/1)")
    if not (dagm_class.isdigit() and 1 <= int(dagm_class) <= 10):
        problems.append(f"class {dagm_class!r} is not a DAGM class 1-10")
    if LABELS.get(label) == 0 and mask:
        problems.append(f"a good image with a mask key ({mask})")
    if problems:
        report.problems += [f"row {number}: {p}" for p in problems]
    else:
        report.rows.append(ProfileRow(number, image, LABELS[label], int(dagm_class), mask or None))


def _parse_csv(text: str, report: ProfileReport) -> None:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    unknown = [h for h in header if h not in COLUMNS]
    missing = [c for c in REQUIRED if c not in header]
    if unknown:
        report.problems.append(f"row 1: unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}")
    if missing:
        report.problems.append(f"row 1: missing column(s) {', '.join(missing)}")
        return
    for number, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            report.problems.append(f"row {number}: {len(values)} values for {len(header)} columns")
            continue
        cells = dict(zip(header, values))
        _row(report, number, cells["image_key"], cells["label"], cells["class"], cells.get("mask_key", ""))


def _prefix(value: str) -> str:
    return value.rstrip("/") + "/" if value else ""


def _parse_txt(text: str, report: ProfileReport) -> None:
    settings: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            settings[key.strip().lower()] = value.strip()
            continue
        if not line.strip() or (line.strip() == "1" and not report.rows and not report.problems):
            continue  # Labels.txt's literal first line
        missing = [k for k in ("base", "class") if k not in settings]
        if missing:
            report.problems.append(f"row {number}: no '# {missing[0]}: ...' header line before the first row")
            return
        fields = line.split("\t")
        if len(fields) < 3:
            report.problems.append(f"row {number}: expected tab-separated id, label, file[, 0, mask]")
            continue
        base = _prefix(settings["base"])
        masks = _prefix(settings["masks"]) if "masks" in settings else base + "Label/"
        mask = fields[4].strip() if len(fields) > 4 and fields[4].strip() not in ("", "0") else ""
        _row(report, number, base + fields[2].strip(), fields[1], settings["class"], masks + mask if mask else "")


def parse_profile(name: str, text: str) -> ProfileReport:
    """Rows and format problems of a profile called `name` (.csv or .txt)."""
    report = ProfileReport()
    if name.lower().endswith(".csv"):
        _parse_csv(text, report)
    elif name.lower().endswith(".txt"):
        _parse_txt(text, report)
    else:
        report.problems.append(f"{name}: a profile is a .csv or a .txt file")
    if not report.rows and not report.problems:
        report.problems.append("the profile has no image rows")
    seen: dict[str, int] = {}
    for row in report.rows:
        if row.image_key in seen:
            report.problems.append(f"row {row.row}: image {row.image_key} is already listed in row {seen[row.image_key]}")
        seen.setdefault(row.image_key, row.row)
    return report


def _fetch(read: Callable[[str], bytes | None], kind: str, key: str):
    """The decoded object (a mask as training reads it: 0/1), or why not (a message
    without the row number)."""
    data = read(key)
    if data is None:
        return None, f"{kind} {key} does not exist"
    try:
        return (decode_mask(data, key) if kind == "mask" else decode_gray(data, name=key)[0]), None
    except ImageDecodeError as exc:
        return None, str(exc)


def validate_profile(name: str, text: str, read: Callable[[str], bytes | None]) -> ProfileReport:
    """Parse, then check every listed object: it exists (`read` returns None when not),
    decodes as an image, and a mask has its image's size. An all-zero mask is no
    problem: it is noted in `empty_masks`, an image-level label."""
    report = parse_profile(name, text)
    for row in report.rows:
        image, problem = _fetch(read, "image", row.image_key)
        if problem is None and row.mask_key:
            mask, problem = _fetch(read, "mask", row.mask_key)
            if problem is None and mask.shape != image.shape:
                problem = (f"mask {row.mask_key} is {mask.shape[1]}x{mask.shape[0]}, "
                           f"its image {image.shape[1]}x{image.shape[0]}")
            elif problem is None and not mask.any():
                report.empty_masks.append(row.row)
        if problem:
            report.problems.append(f"row {row.row}: {problem}")
    return report
