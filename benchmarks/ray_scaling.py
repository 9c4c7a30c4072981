"""Ray Serve with 1 and 2 replicas, and a book job on Ray, side by side in one run on this machine.

    PYTHONPATH=src python benchmarks/ray_scaling.py [--checkpoint DIR] [--clients 8] [--tokens 50]

A local Ray cluster of `--cpus` CPUs (default 2). Serve: the speech app (fast preset, streamed pcm,
`--tokens` speech tokens per request: random weights never stop) with 1 replica, then 2 (one CPU each), each
hit by `--clients` concurrent requests of different seeds; wall time, audio seconds per second, the
replicas that answered. Book: the same chapter text rendered by `render_book` on Ray (tasks of one CPU,
so `--cpus` workers) and in this process on one thread, fresh output folders: chunks per minute. Without --checkpoint
the small random checkpoint is written to a temporary folder. Prints one JSON line per run and a markdown
table (BENCHMARKS.md section 16).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ray
import torch
from ray import serve

from faster_chatterbox.book import BookModel, Speech, render_book
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.server.ray_serve import RayServeConfig, speech_app

SR = 24000
TEXT = "The quick brown fox jumps over the lazy dog, and the dog does not mind at all."
BOOK = "\n\n".join(f"Chapter {c}\n\n" + "\n\n".join(
    f"Paragraph {p} of chapter {c} tells a short story about a river, a bridge and a town." for p in range(1, 5))
    for c in range(1, 4))


def serve_run(checkpoint: Path, replicas: int, clients: int, tokens: int, port: int) -> dict:
    config = RayServeConfig(checkpoint=str(checkpoint), device="cpu", no_watermark=True, replicas=replicas,
                            voices_dir="none")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(speech_app(config), name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/audio/speech"

    def one(seed: int) -> tuple[str, int, float]:
        start = time.perf_counter()
        response = httpx.post(url, timeout=600, json={"model": "tts-1", "voice": "alloy", "input": TEXT,
                                                      "response_format": "pcm", "seed": seed,
                                                      "max_new_tokens": tokens})
        response.raise_for_status()
        return response.headers["x-replica"], len(response.content) // 2, time.perf_counter() - start

    try:
        one(10_000)  # a first request per process path (not timed)
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(one, range(clients)))
        wall = time.perf_counter() - start
    finally:
        serve.shutdown()
    audio = sum(n for _, n, _ in answers) / SR
    latencies = sorted(s for _, _, s in answers)
    return {"run": "serve", "replicas": replicas, "clients": clients, "tokens": tokens, "wall_s": round(wall, 2),
            "audio_s": round(audio, 2), "audio_s_per_s": round(audio / wall, 3),
            "latency_p50_s": round(latencies[len(latencies) // 2], 2),
            "replicas_answering": len({r for r, _, _ in answers})}


def book_run(checkpoint: Path, tokens: int, use_ray: bool, workdir: Path) -> dict:
    book = workdir / "book.txt"
    book.write_text(BOOK)
    out = workdir / ("ray" if use_ray else "local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # in this process as in a Ray task of one CPU (Ray sets OMP_NUM_THREADS=1)
    try:
            report = render_book(book, out, model=BookModel(str(checkpoint), device="cpu"),
                             speech=Speech(max_new_tokens=tokens), seed=1, use_ray=use_ray,
                             watermark=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"run": "book", "where": "ray" if use_ray else "in-process", "chunks": report.rendered,
            "wall_s": round(report.seconds, 2), "chunks_per_min": round(report.chunks_per_minute, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", type=Path, help="append the runs as JSON lines")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or write_random_checkpoint(Path(tmp) / "ckpt", seed=1, small=True)
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        runs = []
        try:
            for run in [lambda n=n: serve_run(checkpoint, n, args.clients, args.tokens, args.port) for n in (1, 2)] + [
                    lambda r=r: book_run(checkpoint, args.tokens, r, Path(tmp)) for r in (True, False)]:
                runs.append({**run(), "checkpoint": "given" if args.checkpoint else "small random",
                             "load_avg_1m": round(os.getloadavg()[0], 1)})
                print(json.dumps(runs[-1]), flush=True)
                if args.json:
                    with args.json.open("a") as f:
                        f.write(json.dumps(runs[-1]) + "\n")
        finally:
            ray.shutdown()
    print("\n| run | replicas / workers | requests or chunks | wall s | audio s per s | chunks per min |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in runs:
        if run["run"] == "serve":
            print(f"| Serve | {run['replicas']} ({run['replicas_answering']} answered) | {run['clients']} | "
                  f"{run['wall_s']} | {run['audio_s_per_s']} | |")
        else:
            workers = args.cpus if run["where"] == "ray" else 1
            print(f"| book, {run['where']} | {workers} | {run['chunks']} | {run['wall_s']} | | {run['chunks_per_min']} |")


if __name__ == "__main__":
    main()
