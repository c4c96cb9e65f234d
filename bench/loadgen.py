"""The load generator, in its own process: `python -m bench.loadgen SPEC.json`.

A closed loop of `concurrency` async clients sending `requests` POSTs to one URL, each timing
its time to first body byte and to last body byte. It first warms up (one round of
connections), then prints `READY` and waits for a line on stdin, so that the benchmark reads the
proxy's CPU counters exactly around the measured part; then it prints one JSON line with the
timings and exits. aiohttp rather than httpx: about a third of the CPU per request, which
matters when the generator shares a core with the stand-ins.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp


async def _one(client: aiohttp.ClientSession, url: str, body: bytes,
               headers: dict[str, str]) -> tuple[int, float, float, int]:
    started = time.perf_counter()
    first = 0.0
    size = 0
    async with client.post(url, data=body, headers=headers) as response:
        async for chunk in response.content.iter_any():
            if not first:
                first = time.perf_counter()
            size += len(chunk)
    ended = time.perf_counter()
    return response.status, (first or ended) - started, ended - started, size


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    url = spec["url"]
    body = spec["body"].encode()
    headers = {"content-type": "application/json", **spec["headers"]}
    concurrency = int(spec["concurrency"])
    total = int(spec["requests"])
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     auto_decompress=False, trust_env=False) as client:
        warmup = max(concurrency, int(spec.get("warmup", 0)))
        await asyncio.gather(*(_one(client, url, body, headers) for _ in range(warmup)))
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        results: list[tuple[int, float, float, int]] = []
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                results.append(await _one(client, url, body, headers))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
        wall = time.perf_counter() - started
    return {
        "wall": wall,
        "status": [r[0] for r in results],
        "ttfb": [r[1] for r in results],
        "ttlb": [r[2] for r in results],
        "bytes": [r[3] for r in results],
    }


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    print(json.dumps(asyncio.run(_run(spec))), flush=True)


if __name__ == "__main__":
    main()
