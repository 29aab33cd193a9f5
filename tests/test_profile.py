"""Dataset profiles: the format, the validator through its CLI (local files and the local
S3), and the examples shipped in deploy/examples/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dagm_defects.data.profile import parse_profile

from conftest import REPO, aws_env, upload

RETRAIN = [sys.executable, "-m", "dagm_deploy.retrain"]


def png(path: Path, size: int = 64, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "bucket"
    for name in ("0001.PNG", "0002.PNG", "0003.PNG"):
        png(root / "new" / "Class3" / name)
    png(root / "new" / "Class3" / "0002_label.PNG", value=255)
    png(root / "new" / "Class3" / "Label" / "0002_label.PNG", value=255)  # where a DAGM split keeps it
    png(root / "new" / "Class3" / "small_label.PNG", size=32)
    png(root / "new" / "Class3" / "Label" / "0003_label.PNG", value=0)  # drawn on, nothing drawn
    (root / "new" / "Class3" / "broken.PNG").write_bytes(b"\x89PNG not really")
    return root


def validate(*args: str, env: dict | None = None) -> tuple[int, dict | None, str]:
    result = subprocess.run([*RETRAIN, "validate", *args], capture_output=True, text=True,
                            env=env or os.environ.copy(), timeout=120)
    report = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, report, result.stderr


def test_the_examples_in_the_repository_parse_and_validate_against_their_images_under_root(tmp_path):
    examples = sorted((REPO / "deploy" / "examples").glob("profile.*"))
    for example in examples:
        report = parse_profile(example.name, example.read_text())
        assert report.ok, (example, report.problems)
        assert report.rows and all(r.label in (0, 1) and 1 <= r.dagm_class <= 10 for r in report.rows)
        # Each example shows a good row, a defective row with a mask and one labelled at image level.
        assert {(r.label, r.mask_key is not None) for r in report.rows} == {(0, False), (1, True), (1, False)}
        for row in report.rows:
            png(tmp_path / row.image_key)
            if row.mask_key:
                png(tmp_path / row.mask_key, value=255)
    # As the docs check one before uploading it: its keys resolve under --root, not beside it.
    for example in examples:
        code, report, stderr = validate("--profile", str(example), "--root", str(tmp_path))
        assert code == 0 and report["valid"], (example, report, stderr)
        assert report["rows"] == len(parse_profile(example.name, example.read_text()).rows)
        assert report["labels"]["defective_image_level"] == 1 and report["labels"]["budget"].startswith("mixed")
    code, report, _ = validate("--profile", str(REPO / "deploy" / "examples" / "profile.csv"))
    assert code == 1 and "row 2: image labelled/2026-11/Class3/0001.PNG does not exist" in report["problems"]


def test_valid_csv_and_txt_profiles(images):
    csv = images / "profile.csv"
    csv.write_text("image_key,label,mask_key,class\nnew/Class3/0001.PNG,good,,3\n"
                   "new/Class3/0002.PNG,defective,new/Class3/0002_label.PNG,3\n")
    code, report, _ = validate("--profile", str(csv))
    assert code == 0 and report["valid"] and report["rows"] == 2 and report["defective"] == 1
    txt = images / "profile.txt"
    txt.write_text("# base: new/Class3/\n# class: 3\n1\n0001\t0\t0001.PNG\t0\t0\t\n0002\t1\t0002.PNG\t0\t0002_label.PNG\n")
    code, report, _ = validate("--profile", str(txt))
    assert code == 0 and report["rows"] == 2 and report["defective"] == 1
    assert parse_profile(txt.name, txt.read_text()).rows[1].mask_key == "new/Class3/Label/0002_label.PNG"
    elsewhere = "# masks: masks/3\n" + txt.read_text()
    assert parse_profile(txt.name, elsewhere).rows[1].mask_key == "masks/3/0002_label.PNG"


def test_every_label_budget_is_valid_and_named(images):
    """Masks for every defect, image-level labels only, both, and no defect at all."""
    header = "image_key,label,mask_key,class\n"
    good = "new/Class3/0001.PNG,good,,3\n"
    masked = "new/Class3/0002.PNG,defective,new/Class3/0002_label.PNG,3\n"
    image_level = "new/Class3/0003.PNG,defective,,3\n"
    for rows, counts, budget in (
            (good + masked, (1, 1, 0), "masks"), (good + image_level, (1, 0, 1), "image-level"),
            (good + masked + image_level, (1, 1, 1), "mixed"), (good, (1, 0, 0), "good-only")):
        profile = images / "budget.csv"
        profile.write_text(header + rows)
        code, report, stderr = validate("--profile", str(profile))
        assert code == 0 and report["valid"] and not report["problems"], (rows, report, stderr)
        labels = report["labels"]
        assert (labels["good"], labels["defective_with_mask"], labels["defective_image_level"]) == counts, labels
        assert labels["budget"].split(":")[0] == budget and labels["empty_masks"] == 0


def test_a_txt_profile_with_image_level_rows_and_an_all_zero_mask(images):
    # Row 5: no mask column at all; row 6: a mask with nothing drawn on it; both image-level.
    txt = images / "profile.txt"
    txt.write_text("# base: new/Class3/\n# class: 3\n1\n0001\t0\t0001.PNG\t0\t0\t\n0002\t1\t0002.PNG\t0\t0\t\n"
                   "0003\t1\t0003.PNG\t0\t0003_label.PNG\n")
    code, report, _ = validate("--profile", str(txt))
    assert code == 0 and report["valid"], report
    assert report["labels"] == {"good": 1, "defective_with_mask": 0, "defective_image_level": 2, "empty_masks": 1,
                                "budget": "image-level: no defective image has a mask"}
    rows = parse_profile(txt.name, txt.read_text()).rows
    assert [(r.label, r.mask_key) for r in rows] == [(0, None), (1, None), (1, "new/Class3/Label/0003_label.PNG")]


def test_every_broken_row_is_reported_with_its_row_number(images):
    profile = images / "broken.csv"
    profile.write_text(
        "image_key,label,mask_key,class,colour\n"                        # row 1: unknown column
        "new/Class3/0001.PNG,good,,3,red\n"                              # row 2: fine
        "new/Class3/0002.PNG,defective,,3,red\n"                         # row 3: fine (image-level)
        "new/Class3/0003.PNG,maybe,,3,red\n"                             # row 4: bad label
        "new/Class3/0003.PNG,good,,11,red\n"                             # row 5: bad class
        "new/Class3/missing.PNG,good,,3,red\n"                           # row 6: missing object
        "new/Class3/broken.PNG,good,,3,red\n"                            # row 7: does not decode
        "new/Class3/0001.PNG,good,,3,red\n"                              # row 8: duplicate of row 2
        "new/Class3/0003.PNG,defective,new/Class3/small_label.PNG,3,red\n"  # row 9: mask size
        "new/Class3/0003.PNG,good,new/Class3/0002_label.PNG,3,red\n"     # row 10: good with a mask
        "new/Class3/0003.PNG,good\n"                                     # row 11: too few values
        "new/Class3/0003.PNG,defective,new/Class3/gone_label.PNG,3,red\n"  # row 12: missing mask
    )
    before = sorted(p.relative_to(images) for p in images.rglob("*"))
    code, report, _ = validate("--profile", str(profile))
    assert code == 1 and not report["valid"]
    problems = "\n".join(report["problems"])
    for expected in ("row 1: unknown column(s) colour",
                     "row 4: label 'maybe'", "row 5: class '11'", "row 6: image new/Class3/missing.PNG does not exist",
                     "row 7: new/Class3/broken.PNG: ", "row 8: image new/Class3/0001.PNG is already listed in row 2",
                     "row 9: mask new/Class3/small_label.PNG is 32x32, its image 64x64",
                     "row 10: a good image with a mask key", "row 11: 2 values for 5 columns",
                     "row 12: mask new/Class3/gone_label.PNG does not exist"):
        assert expected in problems, (expected, problems)
    assert "row 2:" not in problems and "row 3:" not in problems
    assert sorted(p.relative_to(images) for p in images.rglob("*")) == before  # nothing touched


def test_unreadable_and_empty_profiles(tmp_path):
    code, _, stderr = validate("--profile", str(tmp_path / "nope.csv"))
    assert code == 2 and "cannot read the profile" in stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("image_key,label,mask_key,class\n")
    code, report, _ = validate("--profile", str(empty))
    assert code == 1 and report["problems"] == ["the profile has no image rows"]
    other = tmp_path / "profile.json"
    other.write_text("{}")
    code, report, _ = validate("--profile", str(other))
    assert code == 1 and "a .csv or a .txt file" in report["problems"][0]


@pytest.mark.slow
def test_a_profile_in_s3(local_aws, images):
    for path in images.rglob("*.PNG"):
        upload(local_aws, path.relative_to(images).as_posix(), path.read_bytes(), bucket="quality-team")
    uri = upload(local_aws, "profiles/2026-11.csv", b"image_key,label,mask_key,class\nnew/Class3/0001.PNG,good,,3\n"
                 b"new/Class3/0002.PNG,defective,new/Class3/0002_label.PNG,3\nnew/Class3/gone.PNG,good,,3\n",
                 bucket="quality-team")
    code, report, _ = validate("--profile", uri, env=aws_env(local_aws))
    assert code == 1 and report["rows"] == 3
    assert report["problems"] == ["row 4: image new/Class3/gone.PNG does not exist"]
