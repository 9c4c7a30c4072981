"""Load test of `faster-chatterbox serve`: concurrent clients against the server as it ships (requests
batched together in T3) and against the same server forced to one request at a time (--max-concurrency 1),
side by side in one run: both servers are up at once and every round sends each client count to one, then
to the other.

Each server is a real `serve` process (of `--model`) on a free loopback port; each client is an asyncio task that sends
one streamed `pcm` request (its own text and seed) and, when answered 429, waits the Retry-After and tries
again. Per scenario: the status counts (5xx must be zero; 429 only once the queue bound is reached), p50 and
p95 time to first audio (request sent -> first audio bytes), and aggregate audio seconds per wall second.
Only loopback is used; every loop is bounded in count and time.

    python benchmarks/server_load.py [--clients 8 32] [--max-queue 16] [--tokens 50] [--random-weights small|full]
                                     [--checkpoint DIR] [--model chatterbox|turbo|...] [--preset fast]
                                     [--rounds 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SR = 24000
SENTENCES = ["The quick brown fox jumps over the lazy dog near the river bank.",
             "Please call me back when you have a moment to talk about the plan.",
             "Our train leaves at seven, so we should pack the bags tonight.",
             "She opened the window and the cold morning air filled the room."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, concurrency: int | None, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "faster_chatterbox.cli", "serve", "--port", str(port), "--preset", args.preset,
           "--model", args.model,
           "--max-queue", str(args.max_queue), "--voices-dir", "none", "--no-watermark", "--device", "cpu",
           "--request-timeout", "600"]
    cmd += ["--checkpoint", args.checkpoint]  # main() makes the random one first
    if concurrency is not None:
        cmd += ["--max-concurrency", str(concurrency)]
    log = tempfile.NamedTemporaryFile("w+", prefix=f"server-load-{port}-", suffix=".log", delete=False)
    print(f"server on port {port}: log {log.name}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)  # a file: a pipe could fill
    proc.log_path = log.name
    return proc


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {Path(proc.log_path).read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the server did not become ready")


async def one_client(client: httpx.AsyncClient, index: int, tokens: int, deadline: float) -> dict:
    body = {"model": "tts-1", "voice": "alloy", "input": SENTENCES[index % len(SENTENCES)], "response_format": "pcm",
            "seed": index, "max_new_tokens": tokens}
    statuses = []
    while time.perf_counter() < deadline:
        sent = time.perf_counter()
        async with client.stream("POST", "/v1/audio/speech", json=body) as response:
            statuses.append(response.status_code)
            if response.status_code == 429:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            first, size = None, 0
            async for chunk in response.aiter_bytes():
                if chunk and first is None:
                    first = time.perf_counter() - sent
                size += len(chunk)
            return {"statuses": statuses, "ttfa_s": first, "total_s": time.perf_counter() - sent,
                    "audio_s": size / 2 / SR}
    return {"statuses": statuses, "ttfa_s": None, "total_s": None, "audio_s": 0.0}


async def scenario(url: str, clients: int, tokens: int, limit_s: float) -> dict:
    timeout = httpx.Timeout(limit_s, connect=10)
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(client, i, tokens, start + limit_s) for i in range(clients)))
        wall = time.perf_counter() - start
    statuses = [s for r in results for s in r["statuses"]]
    ttfa = sorted(r["ttfa_s"] for r in results if r["ttfa_s"] is not None)
    audio = sum(r["audio_s"] for r in results)
    return {"clients": clients, "wall_s": wall, "ok": statuses.count(200), "http_429": statuses.count(429),
            "http_5xx": sum(s >= 500 for s in statuses), "other": sum(s not in (200, 429) and s < 500 for s in statuses),
            "unfinished": sum(r["ttfa_s"] is None for r in results),
            "ttfa_p50_s": statistics.median(ttfa) if ttfa else None,
            "ttfa_p95_s": ttfa[min(len(ttfa) - 1, round(0.95 * (len(ttfa) - 1)))] if ttfa else None,
            "audio_s": audio, "audio_s_per_s": audio / wall}


def run_servers(args, servers: dict[str, int | None]) -> list[dict]:
    """Start every server {label: --max-concurrency or None}, then alternate them: each round runs each
    client count against each server in turn."""
    procs, urls = {}, {}
    try:
        for label, concurrency in servers.items():
            port = free_port()
            urls[label] = f"http://127.0.0.1:{port}"
            procs[label] = start_server(args, concurrency, port)
        for label in servers:
            wait_ready(procs[label], urls[label])
        rows = []
        for r in range(args.rounds):
            for clients in args.clients:
                for label in servers:
                    row = asyncio.run(scenario(urls[label], clients, args.tokens, args.limit_s))
                    row.update(server=label, round=r + 1, model=args.model, preset=args.preset)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        return rows
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=120)


def table(rows: list[dict]) -> str:
    head = ("| server | round | clients | wall s | 200 | 429 | 5xx | TTFA p50 s | TTFA p95 s | audio s | audio s / s |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['server']} | {r['round']} | {r['clients']} | {r['wall_s']:.1f} | {r['ok']} | {r['http_429']} | {r['http_5xx']} | "
             f"{r['ttfa_p50_s']:.2f} | {r['ttfa_p95_s']:.2f} | {r['audio_s']:.1f} | {r['audio_s_per_s']:.2f} |"
             for r in rows]
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--max-queue", type=int, default=16, help="the servers' --max-queue (default 16)")
    parser.add_argument("--tokens", type=int, default=50, help="max_new_tokens per request (25 = 1 s of audio)")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--model", default="chatterbox", help="the family member the servers load (serve --model)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the two servers")
    parser.add_argument("--random-weights", default="small", choices=("small", "full"))
    parser.add_argument("--checkpoint", help="a checkpoint directory instead of random weights")
    parser.add_argument("--limit-s", type=float, default=300.0, help="give up on a scenario's requests after this")
    parser.add_argument("--json", help="append the rows as JSON lines to this file")
    args = parser.parse_args()
    os.environ.setdefault("FASTER_CHATTERBOX_CACHE", str(Path.home() / ".cache" / "faster-chatterbox"))
    if not args.checkpoint:  # written once before the two servers start (they would race to write it)
        from faster_chatterbox.family import random_checkpoint
        args.checkpoint = str(random_checkpoint(args.random_weights, args.model))
    rows = run_servers(args, {"batched (default)": None, "one at a time": 1})
    print(table(rows))
    if args.json:
        with open(args.json, "a") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
    assert all(r["http_5xx"] == 0 and r["unfinished"] == 0 for r in rows), "5xx answers or unfinished requests"
    assert all(r["http_429"] == 0 for r in rows if r["clients"] <= args.max_queue), "429 below the queue bound"


if __name__ == "__main__":
    main()
