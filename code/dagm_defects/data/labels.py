"""`Labels.txt` of the DAGM 2007 competition layout, read and written byte for byte.

The file's first line is the literal ``1``; each further line is tab separated:
``0001<TAB>0<TAB>0001.PNG<TAB>0<TAB>0<TAB>`` for a good image (note the trailing tab) and
``0002<TAB>1<TAB>0002.PNG<TAB>0<TAB>0002_label.PNG`` for a defective one. A defective row
whose mask column is empty or ``0`` is an image-level label: an inspector said "defective"
and drew nothing; it is written back as ``0002<TAB>1<TAB>0002.PNG<TAB>0<TAB>0<TAB>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HEADER = "1"


@dataclass(frozen=True)
class LabelRow:
    """One row: the image file name, whether it is defective, and its mask file name
    (None for a good image and for a defective one labelled at image level only)."""

    number: str
    defective: bool
    image: str
    mask: str | None

    def to_line(self) -> str:
        if self.defective and self.mask:
            return f"{self.number}\t1\t{self.image}\t0\t{self.mask}"
        return f"{self.number}\t{int(self.defective)}\t{self.image}\t0\t0\t"


class LabelsFormatError(ValueError):
    """A `Labels.txt` line that does not follow the competition format."""


def format_labels(rows: list[LabelRow]) -> str:
    return "\n".join([HEADER, *(row.to_line() for row in rows)]) + "\n"


def write_labels(path: Path, rows: list[LabelRow]) -> None:
    path.write_text(format_labels(rows), encoding="ascii", newline="\n")


def parse_labels(text: str, source: str = "Labels.txt") -> tuple[list[LabelRow], list[str]]:
    """Parse the file's text; return the rows and one message per malformed line.

    Tolerates what archives found in the wild contain: CRLF line ends, blank lines,
    trailing whitespace, and a missing header line.
    """
    rows: list[LabelRow] = []
    problems: list[str] = []
    lines = text.splitlines()
    start = 1 if lines and lines[0].strip() == HEADER else 0
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        fields = [f.strip() for f in fields]
        while fields and fields[-1] == "":
            fields.pop()
        if len(fields) < 3 or fields[1] not in ("0", "1"):
            problems.append(
                f"{source}:{lineno}: expected 'NNNN<TAB>0|1<TAB>NNNN.PNG<TAB>0<TAB>MASK', "
                f"got {line!r}"
            )
            continue
        defective = fields[1] == "1"
        mask = fields[4] if len(fields) >= 5 and fields[4] not in ("", "0") else None
        rows.append(LabelRow(number=fields[0], defective=defective, image=fields[2], mask=mask))
    return rows, problems
