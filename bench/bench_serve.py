"""`gptoss serve` under load: 16 concurrent streaming clients against the same 16 requests sent one
at a time, on one server (GPT-2 small, random weights from a fixed seed, float32).

    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_serve.py

The server runs in a process of its own (`gptoss serve --preset gpt2-small`, all the CPU's
threads); the clients are one asyncio loop in this process, reading the SSE streams of
/v1/completions with httpx (the openai package's HTTP client). Each request continues a different
Tiny Shakespeare line (or a fixed sentence, without the shared data) greedily, max_tokens
--max-tokens, with stream_options.include_usage. Every stream is checked: only `data: {json}` events,
one final chunk with a finish_reason, the usage chunk, then `data: [DONE]`; and the text streamed
equals the text of the same request one at a time (greedy decoding, batched or not). Tokens are the
usage's completion_tokens; aggregate tokens/s = all of them / the wall time from the first request
sent to the last stream ended; time to first token (TTFT) from a request's send to its first text.
Sequential runs first, then concurrent, then sequential again: the better sequential figure is the
baseline (the machine is shared: a busy moment must not flatter the ratio).
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
import time
from pathlib import Path

import httpx2 as httpx
import torch

from machine import describe

REPO = Path(__file__).resolve().parent.parent
FALLBACK = "It was the best of times, it was the worst of times, it was the age of wisdom"


def prompts(count: int) -> list[str]:
    """`count` different prompts: Tiny Shakespeare's first speeches, when the shared data is there."""
    corpus = Path(os.environ.get("GPTOSS_SHARED_DATA", REPO.parent / "shared" / "data")) / "tinyshakespeare" / "input.txt"
    if corpus.exists():
        speeches = [s.strip() for s in corpus.read_text(encoding="utf-8").split("\n\n") if 40 < len(s.strip()) < 300]
        return speeches[:count]
    return [f"{FALLBACK} ({i})" for i in range(count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def one_stream(http, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    """Send one streamed completion; returns its text, tokens, TTFT and end time (checked well formed)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    sent = time.perf_counter()
    first, text, finishes, usage, done = None, [], [], None, False
    async with http.stream("POST", url + "/v1/completions", json=body) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: ") and not done, f"malformed stream line {line!r}"
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk["choices"]:
                if choice["text"] and first is None:
                    first = time.perf_counter()
                text.append(choice["text"])
                if choice["finish_reason"]:
                    finishes.append(choice["finish_reason"])
    assert done and len(finishes) == 1 and usage is not None, "stream not well formed: no [DONE], finish or usage"
    return {"text": "".join(text), "tokens": usage["completion_tokens"], "ttft": first - sent, "sent": sent, "ended": time.perf_counter()}


async def run(url: str, model: str, texts: list[str], max_tokens: int, concurrent: bool) -> tuple[list[dict], float]:
    """Every request, all at once or one after another; (results, wall seconds)."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=len(texts))) as http:
        started = time.perf_counter()
        if concurrent:
            results = await asyncio.gather(*(one_stream(http, url, model, t, max_tokens) for t in texts))
        else:
            results = [await one_stream(http, url, model, t, max_tokens) for t in texts]
        return list(results), time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "gptoss", "serve", "--preset", args.preset, "--seed", "0", "--port", str(port),
                               "--max-batch", str(args.clients)], cwd=REPO)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        texts = prompts(args.clients)
        asyncio.run(run(url, args.preset, texts[:2], 4, concurrent=False))  # warm up
        runs = {}
        for name, concurrent in (("one at a time", False), ("concurrent", True), ("one at a time (again)", False)):
            runs[name] = asyncio.run(run(url, args.preset, texts, args.max_tokens, concurrent))
            print(f"  {name}: {runs[name][1]:.1f} s", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(30)

    alone = [r["text"] for r in runs["one at a time"][0]]
    assert [r["text"] for r in runs["concurrent"][0]] == alone, "a batched reply differs from the same request alone"
    sequential = min(("one at a time", "one at a time (again)"), key=lambda name: runs[name][1])
    rows = []
    for name in (sequential, "concurrent"):
        results, wall = runs[name]
        tokens = sum(r["tokens"] for r in results)
        ttfts = [r["ttft"] for r in results]
        rows.append((name, len(results), tokens, wall, tokens / wall, percentile(ttfts, 50), percentile(ttfts, 95)))
    ratio = rows[1][4] / rows[0][4]

    print(f"\n`gptoss serve --preset {args.preset}` (random weights, float32), {args.clients} streamed completions of "
          f"{args.max_tokens} tokens each, greedy\n\n{describe()}\n")  # fmt: skip
    print("| requests | sent | tokens | wall s | aggregate tokens/s | TTFT p50 s | TTFT p95 s |")
    print("|---|---|---|---|---|---|---|")
    for name, count, tokens, wall, rate, p50, p95 in rows:
        print(f"| {name} | {count} | {tokens} | {wall:.1f} | {rate:.1f} | {p50:.2f} | {p95:.2f} |")
    print(f"\nconcurrent / one at a time: **{ratio:.2f}x** aggregate tokens/s; every stream well formed, "
          f"every reply equal to the same request alone (torch {torch.__version__})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
