"""Timing that puts the bench VM's drifting speed on every side of a comparison alike:
sides measured in turns, figures summarised as p50/p99."""

from __future__ import annotations

import statistics
import time


def counted(step, images: int, seconds: float) -> tuple[int, float]:
    """Images done and seconds taken by repeating `step` (`images` a step) for about
    `seconds`, at least 3 steps, after one step that is not counted."""
    step()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 3 * images:
        step()
        count += images
    return count, time.perf_counter() - started


def alternated(sides: dict, seconds: float, rounds: int) -> dict:
    """Images/s of each side, {name: measure(seconds) -> (images, seconds)}, measured in
    turn `rounds` times for seconds / rounds each. The bench VM's speed drifts by 10-50 %
    within a minute, and two figures taken one after the other carry that drift into
    their ratio; alternating puts it on every side alike. Per side, the rate over all its
    rounds and, after the first side, the lowest and highest of its per-round ratios to
    the first side."""
    done = {name: [] for name in sides}
    for _ in range(rounds):
        for name, measure in sides.items():
            done[name].append(measure(seconds / rounds))
    first = next(iter(sides))
    out = {}
    for name, pairs in done.items():
        out[name] = {"images_per_s": sum(n for n, _ in pairs) / sum(t for _, t in pairs)}
        if name != first:
            ratios = [(n / t) / (n0 / t0) for (n, t), (n0, t0) in zip(pairs, done[first])]
            out[name]["round_ratios"] = [round(min(ratios), 3), round(max(ratios), 3)]
    return out


def latencies_ms(call, n: int) -> list[float]:
    return alternated_latencies_ms([call], n)[0]


def alternated_latencies_ms(calls: list, n: int, block: int = 25) -> list[list[float]]:
    """`n` timings of each call, the calls taking turns `block` calls at a time (after one
    untimed call each), so that the VM's drifting speed falls on each alike. Not call by
    call: one call right after another's finds the other's caches and, in-process, torch
    threads still spinning (measured side by side: p50 served 22-24 ms and in-process 14
    ms call by call, against 17-18 and 11-13 ms 25 at a time)."""
    for call in calls:
        call()
    out = [[] for _ in calls]
    while len(out[0]) < n:
        for call, timings in zip(calls, out):
            for _ in range(min(block, n - len(timings))):
                started = time.perf_counter()
                call()
                timings.append((time.perf_counter() - started) * 1000)
    return out


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2), "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 2)}
