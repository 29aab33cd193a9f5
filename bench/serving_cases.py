"""The measurements of bench/serving.py, each served side by side with what it is
compared with: throughput by body type, clean vs defective answers, the allocator and
the drift watch."""

from __future__ import annotations

import http.client
import itertools
import json
import statistics
from pathlib import Path

import numpy as np

from dagm_defects.data.reader import read_index
from dagm_defects.imaging import image_statistics, summarize_statistics
from dagm_serve import wire
from dagm_serve.allocator import keep_freed_memory
from dagm_serve.codec import NPY, PNG
from dagm_serve.input_watch import InputWatch
from dagm_serve.options import HEADER as ATTRIBUTES
from dagm_serve.predictor import Predictor
from dagm_serve.service import Service
from serving_in_process import InProcess
from serving_server import cpu_seconds_by_part, post, served_count
from serving_timing import alternated, alternated_latencies_ms, counted, latencies_ms, summary


def throughput(port: int, server_pid: int, local: InProcess, cases: dict, seconds: float,
               rounds: int) -> tuple[dict, dict, dict]:
    """Per case (bodies, content type, images per body, concurrent clients): in-process
    and served images/s, alternated over `rounds`; the served side's per-round ratios to
    in-process, lowest and highest; and the CPU seconds by part while serving."""
    rates, spread, cpu = {"in_process": {}, "served": {}}, {}, {}
    for name, case in cases.items():
        sides, cpu[name] = throughput_case(port, server_pid, local, *case, seconds, rounds)
        for side in rates:
            rates[side][name] = sides[side]["images_per_s"]
        spread[name] = sides["served"]["round_ratios"]
    return rates, spread, cpu


def throughput_case(port: int, server_pid: int, local: InProcess, bodies: list[bytes], content_type: str,
                    images: int, clients: int, seconds: float, rounds: int) -> tuple[dict, dict]:
    requests = [(body, content_type) for body in bodies]
    used = dict.fromkeys(cpu_seconds_by_part(server_pid), 0.0)

    def served(window: float) -> tuple[int, float]:
        before = cpu_seconds_by_part(server_pid)
        result = served_count(port, bodies, content_type, images, clients, window)
        after = cpu_seconds_by_part(server_pid)
        for part in used:
            used[part] += after[part] - before[part]
        return result

    sides = alternated({
        "in_process": lambda window: counted(lambda: local.answer(requests), images * len(bodies), window),
        "served": served,
    }, seconds, rounds)
    return sides, {part: round(value, 2) for part, value in used.items()}


def verdict_cases(pngs: list[bytes], images: Path | None) -> tuple[dict, str]:
    """{"clean"|"defective": (PNGs, headers)} and where they come from: a DAGM class
    directory's labelled good and defective images, answered at the model's own threshold
    (a model trained on them gives the real verdicts and maps); else the bench's PNGs,
    made clean or defective by the request's threshold (custom attribute 1 or 0), so the
    defect path runs on whatever map the model gives (an untrained model's: above 0.5
    over much of the image, the costliest case)."""
    if images is None:
        return {"clean": (pngs, {ATTRIBUTES: "threshold=1"}), "defective": (pngs, {ATTRIBUTES: "threshold=0"})}, \
            "the bench's PNGs, verdict forced by the request's threshold"
    samples = read_index(images, None, splits=("Train", "Test"))
    pick = {verdict: [s.image_path.read_bytes() for s in samples if s.defective == (verdict == "defective")][:32]
            for verdict in ("clean", "defective")}
    return {verdict: (bodies, {}) for verdict, bodies in pick.items()}, f"labelled images of {images}"


def by_verdict(port: int, cases: dict, clients: int, seconds: float, rounds: int, n: int) -> dict:
    """Clean and defective answers side by side (`verdict_cases`): sequential single-PNG
    latency p50/p99 and images/s of 4 x `clients` concurrent clients, each alternated, and
    the verdicts the server gave; issue 30's targets: defective p50 <= clean p50 + 1 ms,
    both <= 15 ms, throughput ratio >= 0.95."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    given: dict[str, list[bool]] = {name: [] for name in cases}

    def call(name: str, bodies, headers: dict) -> None:
        given[name].append(json.loads(post(connection, next(bodies), PNG, headers))["predictions"][0]["defective"])

    cycles = {name: itertools.cycle(bodies) for name, (bodies, _) in cases.items()}
    calls = [lambda name=name, h=headers: call(name, cycles[name], h) for name, (_, headers) in cases.items()]
    latencies = dict(zip(cases, alternated_latencies_ms(calls, n)))
    connection.close()
    rates = alternated({name: lambda window, b=bodies, h=headers: served_count(port, b, PNG, 1, 4 * clients, window, h)
                        for name, (bodies, headers) in cases.items()}, seconds, rounds)
    added = statistics.median(latencies["defective"]) - statistics.median(latencies["clean"])
    ratio = rates["defective"]["images_per_s"] / rates["clean"]["images_per_s"]
    return {"latency_ms": {name: summary(values) for name, values in latencies.items()},
            "answered_defective_fraction": {name: round(sum(v) / len(v), 3) for name, v in given.items()},
            "defective_added_p50_ms": round(added, 2),
            "images_per_s": {name: round(r["images_per_s"], 1) for name, r in rates.items()},
            "defective_over_clean_images_per_s": round(ratio, 3),
            "defective_over_clean_lowest_highest_round": rates["defective"]["round_ratios"],
            "targets_met": {"defective_added_p50_ms_le_1": added <= 1.0,
                            "p50s_le_15_ms": max(statistics.median(v) for v in latencies.values()) <= 15.0,
                            "defective_over_clean_ge_0.95": ratio >= 0.95}}


def allocator_effect(local: InProcess, npy_body: bytes, images: int, seconds: float) -> dict:
    """In-process images/s for one npy body of `images` images under glibc's defaults, then with
    freed memory kept as in the workers; the process keeps the latter from here on."""
    step = lambda: local.answer([(npy_body, NPY)])  # noqa: E731
    done, taken = counted(step, images, seconds)
    defaults = done / taken
    if not keep_freed_memory():
        raise RuntimeError("the C library is not glibc: the workers' allocator setting does not apply")
    done, taken = counted(step, images, seconds)
    kept = done / taken
    return {"glibc_defaults": round(defaults, 1), "freed_memory_kept": round(kept, 1), "ratio": round(kept / defaults, 3)}


def drift_watch(predictor: Predictor, resized: np.ndarray, seconds: float, rounds: int) -> dict:
    """The worker's answer to one batch of 16 with and without the input watch. Observe
    only (nothing is published); the images' own statistics stand in for training's."""
    own = summarize_statistics(image_statistics(resized))
    watch = InputWatch({"overall": own}, "bench", "bench", 3600, cloudwatch=None)
    body = wire.pack({}, [resized])
    plain, watching = Service(predictor, None), Service(predictor, watch)
    sides = alternated({
        "unwatched": lambda window: counted(lambda: plain.answer(body), len(resized), window),
        "watched": lambda window: counted(lambda: watching.answer(body), len(resized), window),
    }, seconds, rounds)
    defective = predictor.forward(resized)[0] >= predictor.threshold
    observe = latencies_ms(lambda: watch.observe(resized, defective), 50)
    return {"throughput_ratio": round(sides["watched"]["images_per_s"] / sides["unwatched"]["images_per_s"], 3),
            f"observe_ms_per_batch_of_{len(resized)}": summary(observe)}
