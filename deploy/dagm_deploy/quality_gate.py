"""The retraining quality gate: the candidate against the serving model, class by class,
on the same held-out images (both scored inside the candidate's training job), and the
candidate alone at the threshold it will be served with.

A class passes when the candidate's AP is at least the serving model's minus the margin;
a class without defective test images has no AP and is listed but not judged. Without a
serving model (a first deployment) the candidate needs an overall AP of --min-ap. Where
evaluation.json has `at_threshold` (the test images at the served threshold), the share
of good test images the candidate rejects must be at most --max-false-reject too: a model
that scrapes good parts costs the plant whatever its AP.

A test set without any defective image (a good-only line) has no AP: the gate says so and
judges the false-reject rate alone, which is what such a plant can measure. An older
evaluation.json without `at_threshold` leaves nothing to judge there, and the gate
refuses it rather than pass a model nobody measured. The table also shows how the test
images were labelled, the pixel metrics where masks exist (evaluation.json's `labels`
and `pixel`), and the false rejects and escapes at the served threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The share of good test images the served threshold may reject: training aims at 1 % on
# its held-out images (max_false_reject), and a test set of a few hundred good images
# scatters around that.
MAX_FALSE_REJECT = 0.02
NO_AP = "AP cannot be measured without defective test images: judged on the false-reject rate alone"


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
    # The candidate at its served threshold, and what the gate could not measure.
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        def fmt(value) -> str:
            return "   n/a" if value is None else f"{value:6.3f}"

        lines = list(self.labels)
        if self.runs.get("candidate") or self.runs.get("serving"):
            lines.append(f"MLflow runs: candidate {self.runs.get('candidate') or 'unknown'}, "
                         f"serving {self.runs.get('serving') or 'unknown'}")
        lines.append("class  candidate  serving   delta")
        lines += [f"{r['class']:>7} {fmt(r['candidate'])}    {fmt(r['serving'])}  {fmt(r['delta'])}" for r in self.comparison]
        return "\n".join(lines + self.notes)


def _percent(share: float) -> str:
    return f"{100 * share:.3g} %"


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


def _operating_point(at: dict, max_false_reject: float) -> str:
    if at["good"]:
        rejected = (f"false rejects {at['false_rejects']} of {at['good']} good test images "
                    f"({_percent(at['false_reject_rate'])}, at most {_percent(max_false_reject)} allowed)")
    else:
        rejected = "false rejects not measured: no good test image"
    if at["defective"]:
        found = (f"recall {_percent(at['recall'])} (escapes {at['escapes']} of {at['defective']} "
                 "defective test images)")
    else:
        found = "recall not measured: no defective test image"
    return f"at the served threshold {at['threshold']:.4f}: {rejected}; {found}"


def false_rejects(evaluation: dict, max_false_reject: float) -> tuple[list[str], list[str]]:
    """(reasons, lines): why the candidate fails on the good test images it rejects at its
    served threshold (evaluation.json's `at_threshold`), and the lines that show it. A test
    set without a defective image has nothing else to judge, so there a missing or empty
    measurement is a reason too."""
    at, overall = evaluation.get("at_threshold"), evaluation["overall"]
    good_only = not overall["n_defective"]
    lines = [NO_AP] if good_only else []
    if at is None:
        if good_only:
            return [f"the test set has no defective image ({overall['n']} good ones), so AP cannot be measured, and "
                    "evaluation.json has no at_threshold (written before training measured false rejects): "
                    "nothing shows how the candidate treats good parts"], lines
        return [], ["false rejects not judged: evaluation.json has no at_threshold "
                    "(written before training measured them)"]
    lines.insert(0, _operating_point(at, max_false_reject))
    rate = at["false_reject_rate"]
    if rate is None:
        return (["the test set has no image: nothing to judge"] if good_only else []), lines
    if rate > max_false_reject:
        return [f"the false-reject rate {_percent(rate)} ({at['false_rejects']} of {at['good']} good test images "
                f"rejected at the served threshold {at['threshold']:.4f}) is above --max-false-reject "
                f"{max_false_reject:g} ({_percent(max_false_reject)})"], lines
    return [], lines


def judge(evaluation: dict, margin: float, min_ap: float, max_false_reject: float) -> Verdict:
    """`evaluation`: the candidate job's evaluation.json, with `baseline` when it had one,
    and `mlflow` (the job's run record) when it was tracked."""
    baseline = evaluation.get("baseline")
    runs = {"candidate": _run_id(evaluation.get("mlflow")), "serving": _run_id((baseline or {}).get("mlflow"))}
    labels = _labels(evaluation)
    rejects, notes = false_rejects(evaluation, max_false_reject)
    overall = evaluation["overall"]
    if not overall["n_defective"]:
        rows = [_row("overall", overall, (baseline or {}).get("overall"))]
        return Verdict(not rejects, rejects, rows, runs, labels, notes)
    if baseline is None:
        ap = overall["ap"]
        rows = [_row("overall", overall, None)]
        reasons = ([f"no serving model to compare with, and the overall test AP {ap} is below {min_ap}"]
                   if ap is None or ap < min_ap else [])
    else:
        classes = sorted(set(evaluation["per_class"]) | set(baseline["per_class"]), key=lambda c: (len(c), c))
        rows = [_row(c, evaluation["per_class"].get(c), baseline["per_class"].get(c)) for c in classes]
        rows.append(_row("overall", evaluation["overall"], baseline["overall"]))
        reasons = []
        for row in rows:
            if row["serving"] is not None and row["candidate"] is None:
                reasons.append(f"class {row['class']}: the candidate has no AP where the serving model has "
                               f"{row['serving']:.3f}")
            elif row["delta"] is not None and row["delta"] < -margin:
                reasons.append(f"class {row['class']}: AP {row['candidate']:.3f} is {-row['delta']:.3f} below the "
                               f"serving model's {row['serving']:.3f} (margin {margin})")
    reasons += rejects
    return Verdict(not reasons, reasons, rows, runs, labels, notes)
