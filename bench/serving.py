"""The real `serve` process over HTTP vs the same model called in-process, side by side.

Starts local_test/serve_local.sh (the image's entry command, .venv path) on an artefact
with the default architecture, then measures on the same 512x512 PNGs:
  cold start         process start -> first 200 on /ping (model loaded and warmed up)
  throughput         concurrent clients posting batched (16-image x-npy and JSON-of-PNG)
                     and single-PNG requests, vs the in-process path on the same inputs
                     (decode + one forward pass + encode: BatchTransformer.answer; the
                     single PNGs as one batch of 16) and the bare forward
  latency            sequential single-image requests, p50/p99, vs the bare forward pass
  drift watch        Predictor.predict on 16 images with the input statistics kept for
                     drift detection (serve/dagm_serve/drift.py) vs without
Prints JSON. Usage: python bench/serving.py [--seconds 8] [--clients 4] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dagm_defects.artifact import load_artifact, save_artifact
from dagm_defects.data.synthetic import generate_dataset
from dagm_defects.imaging import image_statistics, summarize_statistics
from dagm_defects.model import ModelConfig, build_model
from dagm_serve.drift import InputWatch
from dagm_serve.envelope import Part
from dagm_serve.transformer import BatchTransformer

REPO = Path(__file__).resolve().parents[1]
BATCH = 16


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(connection: http.client.HTTPConnection, body: bytes, content_type: str) -> bytes:
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
    return data


def start_server(model_dir: Path, port: int) -> tuple[subprocess.Popen, float]:
    """The serve process and its cold start: seconds from spawn to the first 200 on /ping."""
    env = {**os.environ, "NO_DOCKER": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    started = time.perf_counter()
    process = subprocess.Popen([str(REPO / "local_test" / "serve_local.sh"), str(model_dir), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    while time.perf_counter() - started < 120:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return process, time.perf_counter() - started
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}")
        time.sleep(0.02)
    raise RuntimeError("serve did not become ready")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def served_rate(port: int, body: bytes, content_type: str, images: int, clients: int, seconds: float) -> float:
    counts = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        post(connection, body, content_type)
        while time.perf_counter() < deadline:
            post(connection, body, content_type)
            counts[i] += images

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def local_rate(step, images: int, seconds: float) -> float:
    step()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 3:
        step()
        count += images
    return count / (time.perf_counter() - started)


def latencies_ms(call, n: int) -> list[float]:
    call()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2), "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 2)}


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--model-dir", type=Path, help="an artefact; default: an untrained default model")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    model_dir = args.model_dir
    if model_dir is None:
        torch.manual_seed(0)
        model_dir = save_artifact(work / "model", build_model(ModelConfig()), 0.5, [1], {})
    generate_dataset(work / "data", classes=[1], images_per_split=BATCH, size=512, seed=0, workers=1)
    pngs = [p.read_bytes() for p in sorted((work / "data" / "Class1" / "Test").glob("*.PNG"))][:BATCH]
    arrays = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in pngs])
    json_body = json.dumps({"instances": [{"b64": base64.b64encode(b).decode()} for b in pngs]}).encode()

    # In-process: the worker's own code path (decode + forward + encode) and the bare forward.
    os.environ.setdefault("DAGM_DEVICE", "cpu")
    transformer = BatchTransformer()
    transformer.validate_and_initialize(model_dir=str(model_dir))
    predictor = transformer.predictor
    parts_png = [Part(body=b, content_type="image/png") for b in pngs]
    size = load_artifact(model_dir).image_size
    resized = [np.asarray(Image.fromarray(a).resize((size, size))) for a in arrays]
    results: dict = {"model": ModelConfig.from_dict(json.loads((model_dir / "model.json").read_text())["model_config"]).to_dict(),
                     "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "clients": args.clients}
    npy_body = npy(arrays)
    bare_batch = local_rate(lambda: predictor.forward(resized), BATCH, args.seconds)
    in_process = {
        "png_16_requests": local_rate(lambda: transformer.answer(parts_png), BATCH, args.seconds),
        "npy_16_per_request": local_rate(lambda: transformer.answer([Part(npy_body, "application/x-npy")]),
                                         BATCH, args.seconds),
        "json_png_16_per_request": local_rate(lambda: transformer.answer([Part(json_body, "application/json")]),
                                              BATCH, args.seconds),
    }
    # Observe only (nothing is published); the images' own statistics stand in for training's.
    own = summarize_statistics(image_statistics(np.stack(resized)))
    watch = InputWatch({"overall": own}, "bench", "bench", 3600, cloudwatch=None)
    unwatched = local_rate(lambda: predictor.predict(list(arrays), [None] * BATCH), BATCH, args.seconds)
    watched = local_rate(lambda: predictor.predict(list(arrays), [None] * BATCH, watch.observe), BATCH, args.seconds)
    bare_single = latencies_ms(lambda: predictor.forward(resized[:1]), args.latency_requests)
    in_process_single = latencies_ms(lambda: transformer.answer(parts_png[:1]), args.latency_requests)

    port = free_port()
    process, cold_start = start_server(model_dir, port)
    try:
        served = {
            "png_16_requests": served_rate(port, pngs[0], "image/png", 1, args.clients * 4, args.seconds),
            "npy_16_per_request": served_rate(port, npy_body, "application/x-npy", BATCH, args.clients, args.seconds),
            "json_png_16_per_request": served_rate(port, json_body, "application/json", BATCH, args.clients,
                                                   args.seconds),
        }
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        http_single_png = latencies_ms(lambda: post(connection, pngs[0], "image/png"), args.latency_requests)
        http_single_npy = latencies_ms(lambda: post(connection, npy(arrays[0]), "application/x-npy"),
                                       args.latency_requests)
    finally:
        stop_server(process)

    results.update({
        "cold_start_s": round(cold_start, 2),
        "images_per_s": {
            "bare_forward_batch16_at_model_size": round(bare_batch, 1),
            "in_process": {k: round(v, 1) for k, v in in_process.items()},
            "served": {k: round(v, 1) for k, v in served.items()},
        },
        "drift_watch_throughput_ratio": round(watched / unwatched, 3),
        # Served over HTTP vs the worker's own code on the same inputs in this process.
        "ratios_served_vs_in_process": {k: round(served[k] / in_process[k], 3) for k in served},
        "latency_ms_single_image": {
            "bare_forward": summary(bare_single),
            "in_process_png": summary(in_process_single),
            "http_png": summary(http_single_png),
            "http_npy": summary(http_single_npy),
            "added_p50_http_npy_over_bare_forward": round(statistics.median(http_single_npy) - statistics.median(bare_single), 2),
            "added_p50_http_png_over_in_process_png": round(statistics.median(http_single_png) - statistics.median(in_process_single), 2),
        },
    })
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
