"""The markdown tables bench/figures.py writes into the docs, one per block name, each
rendered from benchmark records (record.py) and ending with where each record was
measured. A table whose record is not there yet says which command makes it."""

from __future__ import annotations

import io
import shlex
import statistics
from datetime import datetime, timezone

# The command that measures each record; `make figures` then takes it into the docs.
MAKES = {"serving": "make bench-serving", "real-dagm": "make bench-real", "suite": "make test",
         "label-budget": "make bench-labels"}


def provenance(record: dict) -> str:
    machine = record["machine"]
    when = datetime.fromisoformat(record["date"]).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = (f"{machine['cpu']} ({machine['cores']} cores, {machine['memory_gb']} GB, "
             f"{machine['gpu'] or 'no GPU'}; Python {machine['python']}, torch {machine['torch']})")
    return f"Measured {when} on {where} at commit {record['commit']} by `{shlex.join(record['command'])}`."


def not_yet(name: str) -> str:
    return f"Not measured yet: run `{MAKES[name]}`, then `make figures`."


def table(header: list[str], rows: list[list]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def ms(value: float) -> str:
    return f"{value:.2f} ms"


def signed_ms(value: float) -> str:
    return f"{value:+.2f} ms"


def ratio(value: float, spread: list[float]) -> str:
    return f"{value:.3f} ({spread[0]:.3f}-{spread[1]:.3f})"


def serving(records: dict) -> str:
    if "serving" not in records:
        return not_yet("serving")
    r = records["serving"]["results"]
    single, verdict = r["latency_ms_single_png"], r["by_verdict_single_png"]
    clients = r["clients"]
    latency = table(["single PNG, one request at a time", "p50", "p99"], [
        ["served over HTTP", ms(single["served"]["p50"]), ms(single["served"]["p99"])],
        ["in-process", ms(single["in_process"]["p50"]), ms(single["in_process"]["p99"])],
        ["added by serving", signed_ms(single["added_p50_ms"]), ""],
    ])
    bodies = {"png_single": f"single PNGs, {4 * clients} clients",
              "npy_16": f"16 images in one x-npy body, {clients} clients",
              "json_png_16": f"16 base64 PNGs in one JSON body, {clients} clients"}
    rates, ratios = r["images_per_s"], r["served_over_in_process"]
    spread = r["served_over_in_process_lowest_highest_round"]
    throughput = table(
        ["body", "served images/s", "in-process images/s", "served / in-process (lowest-highest round)"],
        [[label, rates["served"][key], rates["in_process"][key], ratio(ratios[key], spread[key])]
         for key, label in bodies.items()])
    verdicts = table(["answer, single PNG", "p50", "p99", f"images/s, {4 * clients} clients"], [
        *[[name, ms(verdict["latency_ms"][name]["p50"]), ms(verdict["latency_ms"][name]["p99"]),
           verdict["images_per_s"][name]] for name in ("clean", "defective")],
        ["defective vs clean", signed_ms(verdict["defective_added_p50_ms"]), "",
         ratio(verdict["defective_over_clean_images_per_s"], verdict["defective_over_clean_lowest_highest_round"])],
    ])
    starts = ", ".join(f"{s:.2f}" for s in r["cold_start_s_each"])
    cold = table([f"cold start, median of {len(r['cold_start_s_each'])}", "seconds"], [
        ["process start to ready (`/ping` 200)", f"{r['cold_start_s']:.2f} (each: {starts})"],
        ["process start to the first answer", f"{r['cold_start_to_first_answer_s']:.2f}"],
    ])
    return "\n\n".join([latency, throughput, verdicts, f"Clean and defective images: {verdict['images']}.", cold,
                        provenance(records["serving"])])


SCORES = ("ap", "auroc", "recall", "precision")


def real_dagm(records: dict) -> str:
    if "real-dagm" not in records:
        return not_yet("real-dagm")
    r = records["real-dagm"]["results"]
    seeds, synthetic = r["seeds"], r["synthetic_only_on_genuine"]
    batches = list(next(iter(seeds.values()))["inference_images_per_sec"]) if seeds else []

    def row(label: str, figures: dict, images: str, rates: list) -> list:
        return [label, images, *(f"{figures[k]:.4f}" for k in SCORES), f"{figures['threshold']:.3f}",
                f"{figures['training_minutes']:.2f}", *rates]

    rows = [row(f"seed {seed}", f, f"{f['images']} ({f['defective']})",
                [f"{f['inference_images_per_sec'][b]:.1f}" for b in batches]) for seed, f in seeds.items()]
    if seeds:
        mean = {k: statistics.mean(f[k] for f in seeds.values()) for k in (*SCORES, "threshold", "training_minutes")}
        rows.append(row(f"mean of {len(seeds)}", mean, "",
                        [f"{statistics.mean(f['inference_images_per_sec'][b] for f in seeds.values()):.1f}"
                         for b in batches]))
    if synthetic:
        rows.append(row("synthetic only, on genuine", synthetic,
                        f"{synthetic['images']} ({synthetic['defective']})", ["" for _ in batches]))
    header = ["model", "scored on (defective)", "AP", "AUROC", "recall", "precision", "threshold",
              "training job, min", *(f"inference {b}, images/s" for b in batches)]
    parts = [table(header, rows)]
    if synthetic:
        parts.append(f"The synthetic-only model was trained on {synthetic['trained_on']}.")
    else:
        parts.append("The synthetic-only check was not run (`--no-synthetic`).")
    return "\n\n".join([*parts, provenance(records["real-dagm"])])


def suite_counts(r: dict) -> str:
    counts = [f"{r[k]} {k}" for k in ("passed", "failed", "skipped")]
    return ", ".join(counts + [f"{r[k]} {k}" for k in ("error", "xfailed", "xpassed", "deselected") if r[k]])


def doc_commands(r: dict) -> str:
    """What became of the commands the docs show (tests/command_ledger.py), where recorded."""
    c = r.get("doc_commands")
    if c is None:
        return "not recorded"
    return (f"{c['shown']} shown: {c['ran']} ran in the suite, {c['in_ci_run']} by .ci/run, "
            f"{c['not_run_here']} cannot run here, {c['missing']} did not run")


def suite(records: dict) -> str:
    if "suite" not in records:
        return not_yet("suite")
    r = records["suite"]["results"]
    return "\n\n".join([
        table(["test suite", "workers", "minutes", "seconds", "outcomes", "exit status", "commands the docs show"],
              [["`make test`", r.get("workers") or 1, f"{r['seconds'] / 60:.1f}", r["seconds"], suite_counts(r),
                r["exit_status"], doc_commands(r)]]),
        provenance(records["suite"])])


def summary(records: dict) -> str:
    rows = []
    if "real-dagm" in records and records["real-dagm"]["results"]["seeds"]:
        seeds = records["real-dagm"]["results"]["seeds"].values()
        aps = [f["ap"] for f in seeds]
        rows.append([f"genuine DAGM Class 8, held-out AP ({len(aps)} seeds)",
                     f"mean {statistics.mean(aps):.4f}, lowest {min(aps):.4f}"])
    else:
        rows.append(["genuine DAGM Class 8, held-out AP", f"not measured yet (`{MAKES['real-dagm']}`)"])
    if "serving" in records:
        verdict = records["serving"]["results"]["by_verdict_single_png"]
        p50 = verdict["latency_ms"]
        rows.append(["single PNG served, p50 defective vs clean",
                     f"{ms(p50['defective']['p50'])} vs {ms(p50['clean']['p50'])} "
                     f"({signed_ms(verdict['defective_added_p50_ms'])})"])
    else:
        rows.append(["single PNG served, p50 defective vs clean", f"not measured yet (`{MAKES['serving']}`)"])
    if "suite" in records:
        r = records["suite"]["results"]
        rows.append(["test suite (`make test`)", f"{r['seconds'] / 60:.1f} min, {suite_counts(r)}"])
    else:
        rows.append(["test suite (`make test`)", f"not measured yet (`{MAKES['suite']}`)"])
    lines = [f"{name}: {provenance(records[name])}" for name in ("real-dagm", "serving", "suite") if name in records]
    return "\n\n".join([table(["figure", "value"], rows), *lines])


def cell(text: str) -> str:
    """`text` fit for one table cell: one line, its pipes escaped."""
    return text.splitlines()[0].replace("|", "\\|") if text else ""


def budget_row(name: str, budget: str, f: dict) -> list:
    labelled = f.get("labelled")
    counts = f"{labelled['good']} / {labelled['defective']} / {labelled['masks']}" if labelled else ""
    minutes = f"{f['training_minutes']:.2f}" if "training_minutes" in f else ""
    shown = f"{budget} (the {f['same_job_as']} job)" if "same_job_as" in f else budget
    if f["status"] != "ok":
        return [name, shown, counts, f"failed: {cell(f['error'])}", "", "", "", "", "", minutes]

    def score(value) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    return [name, shown, counts, f["supervision"] or "not reported", score(f["ap"]), score(f["auroc"]),
            f"{score(f['recall'])} ({f['test_defective']})",
            f"{score(f['false_reject_rate'])} ({f['false_rejects']} of {f['test_good']})",
            f"{f['threshold']:.3f}", minutes]


# Where docs/results.md finds the plot figures.py writes (PLOTS).
LABEL_BUDGET_PLOT = "results/label-budget.png"


def label_budget(records: dict) -> str:
    if "label-budget" not in records:
        return not_yet("label-budget")
    r = records["label-budget"]["results"]
    rows = [budget_row(f"{name} (Class {s['class']})", budget, figures)
            for name, s in r["sets"].items() for budget, figures in s["budgets"].items()]
    header = ["set", "budget", "labelled: good / defective / masks", "supervision", "AP", "AUROC",
              "recall (test defects)", "false-reject rate (false rejects of good test images)", "threshold",
              "training job, min"]
    tested = "; ".join(f"{name} on {s['test']} ({s['test_part']['good']} good, {s['test_part']['defective']} "
                       f"defective)" for name, s in r["sets"].items())
    parts = [table(header, rows), f"Tested: {tested}."]
    if r["epochs_override"] is not None:
        parts.append(f"Epochs overridden to {r['epochs_override']}: a smoke run, not the recipe's figures.")
    if r["skipped"]:
        parts.append("Not run, without their data: " + "; ".join(f"{name} ({why})" for name, why in r["skipped"].items())
                     + ".")
    parts.append(f"![AP against the label budget, one line per set and budget family]({LABEL_BUDGET_PLOT})")
    return "\n\n".join([*parts, provenance(records["label-budget"])])


def label_budget_plot(record: dict) -> bytes:
    """AP against K: the masks kept (masks-K) or the defective images kept (defects-K), one line
    per set and family, as PNG bytes that depend only on the record (no software metadata)."""
    # Imported here: only a label-budget record needs matplotlib, and no pyplot state is used.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2), dpi=100)
    axes = figure.add_subplot()
    ticks = set()
    for name, s in record["results"]["sets"].items():
        for family, counted, style in (("masks", "masks", "-"), ("defects", "defective", "--")):
            points = sorted((f["labelled"][counted], f["ap"]) for budget, f in s["budgets"].items()
                            if budget.startswith(f"{family}-") and f["status"] == "ok" and f["ap"] is not None)
            if points:
                axes.plot(*zip(*points), style, marker="o", label=f"{name}, {family}-K")
                ticks.update(x for x, _ in points)
    # Symmetric log: K = 0 stays on the axis and 3, 5, 10 stay apart from "all" (over 100).
    axes.set_xscale("symlog", linthresh=1)
    axes.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    axes.minorticks_off()
    axes.set_xlabel("K: masks kept (masks-K), defective images kept (defects-K)")
    axes.set_ylabel("AP on the test part")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


TABLES = {"serving": serving, "real-dagm": real_dagm, "suite": suite, "summary": summary,
          "label-budget": label_budget}
# The plots figures.py writes to docs/results/NAME.png, from NAME's record, for its table to show.
PLOTS = {"label-budget": label_budget_plot}
