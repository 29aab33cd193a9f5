"""The retraining quality gate: the candidate against the serving model, class by class,
on the same held-out images (both scored inside the candidate's training job).

A class passes when the candidate's AP is at least the serving model's minus the margin;
a class without defective test images has no AP and is listed but not judged. Without a
serving model (a first deployment) the candidate needs an overall AP of --min-ap. A test
set without any defective image measures nothing, so the gate refuses it rather than pass
a model nobody has seen find a defect. The gate judges image-level AP alone, which every
label budget supports; the table also shows how the test images were labelled and the
pixel metrics where masks exist (evaluation.json's `labels` and `pixel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    # One row per class and one for "overall": candidate AP, serving AP, difference.
    comparison: list[dict] = field(default_factory=list)
    # The MLflow runs that made the candidate and the serving model (None where unknown).
    runs: dict = field(default_factory=dict)
    # How the candidate's test images were labelled, and its pixel metrics: for the reader.
    labels: list[str] = field(default_factory=list)

    def table(self) -> str:
        def fmt(value) -> str:
            return "   n/a" if value is None else f"{value:6.3f}"

        lines = list(self.labels)
        if self.runs.get("candidate") or self.runs.get("serving"):
            lines.append(f"MLflow runs: candidate {self.runs.get('candidate') or 'unknown'}, "
                         f"serving {self.runs.get('serving') or 'unknown'}")
        lines.append("class  candidate  serving   delta")
        lines += [f"{r['class']:>7} {fmt(r['candidate'])}    {fmt(r['serving'])}  {fmt(r['delta'])}" for r in self.comparison]
        return "\n".join(lines)


def _row(name: str, candidate: dict | None, serving: dict | None) -> dict:
    c = (candidate or {}).get("ap")
    s = (serving or {}).get("ap")
    return {"class": name, "candidate": c, "serving": s, "delta": None if c is None or s is None else c - s}


def _run_id(record: dict | None) -> str | None:
    """A run's id on the tracking server when it reached one, else in its job's own store."""
    record = record or {}
    return record.get("server_run_id") or record.get("run_id")


def _labels(evaluation: dict) -> list[str]:
    """Lines on the test labels and pixel metrics; none for a job that wrote neither."""
    labels, found = evaluation.get("labels"), evaluation.get("pixel")
    lines = []
    if labels:
        lines.append(f"test labels: {labels['images']} images, {labels['good']} good, {labels['defective_with_mask']} "
                     f"defective with a mask, {labels['defective_image_level']} defective image-level only; "
                     f"{labels['pixel_metrics']}")
    if found:
        lines.append(f"candidate pixel metrics over {found['images']} images: AP {found['ap']:.3f}, "
                     f"Dice {found['dice']:.3f} at {found['dice_cut']}")
    return lines


def judge(evaluation: dict, margin: float, min_ap: float) -> Verdict:
    """`evaluation`: the candidate job's evaluation.json, with `baseline` when it had one,
    and `mlflow` (the job's run record) when it was tracked."""
    baseline = evaluation.get("baseline")
    runs = {"candidate": _run_id(evaluation.get("mlflow")), "serving": _run_id((baseline or {}).get("mlflow"))}
    labels = _labels(evaluation)
    overall = evaluation["overall"]
    if not overall["n_defective"]:
        rows = [_row("overall", overall, (baseline or {}).get("overall"))]
        return Verdict(False, [f"the test set has no defective image ({overall['n']} good ones): no AP shows "
                               "that the candidate finds defects"], rows, runs, labels)
    if baseline is None:
        ap = overall["ap"]
        row = _row("overall", overall, None)
        if ap is None or ap < min_ap:
            return Verdict(False, [f"no serving model to compare with, and the overall test AP {ap} is below {min_ap}"],
                           [row], runs, labels)
        return Verdict(True, [], [row], runs, labels)
    classes = sorted(set(evaluation["per_class"]) | set(baseline["per_class"]), key=lambda c: (len(c), c))
    rows = [_row(c, evaluation["per_class"].get(c), baseline["per_class"].get(c)) for c in classes]
    rows.append(_row("overall", evaluation["overall"], baseline["overall"]))
    reasons = []
    for row in rows:
        if row["serving"] is not None and row["candidate"] is None:
            reasons.append(f"class {row['class']}: the candidate has no AP where the serving model has {row['serving']:.3f}")
        elif row["delta"] is not None and row["delta"] < -margin:
            reasons.append(f"class {row['class']}: AP {row['candidate']:.3f} is {-row['delta']:.3f} below the serving "
                           f"model's {row['serving']:.3f} (margin {margin})")
    return Verdict(not reasons, reasons, rows, runs, labels)
