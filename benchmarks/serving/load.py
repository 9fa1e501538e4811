"""A closed-loop HTTP load generator: `concurrency` clients on one aiohttp session (uvloop), each sending the next
request as soon as the last is answered, for a fixed time. Run in its own process so it competes with the server
for the machine's cores the same way whichever server is measured.

    python -m benchmarks.serving.load --url http://127.0.0.1:8000/predict --body body.json --concurrency 32 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import numpy as np
import uvloop


async def _client(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], until: float,
                  latencies: list[float], statuses: dict[int, int]) -> None:
    while time.perf_counter() < until:
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0  # connection refused or reset: counted, never a latency
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            latencies.append(time.perf_counter() - started)


async def run(url: str, body: bytes, concurrency: int, seconds: float, warmup_s: float) -> dict:
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*[_client(session, url, body, headers, time.perf_counter() + warmup_s, [], {})
                               for _ in range(concurrency)])
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        started = time.perf_counter()
        await asyncio.gather(*[_client(session, url, body, headers, started + seconds, latencies, statuses)
                               for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
    milliseconds = np.asarray(latencies) * 1000.0
    return {"concurrency": concurrency, "seconds": elapsed, "ok": len(latencies),
            "throughput_rps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(milliseconds, 50)) if len(latencies) else None,
            "p99_ms": float(np.percentile(milliseconds, 99)) if len(latencies) else None,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


if __name__ == "__main__":
    arguments = argparse.ArgumentParser()
    arguments.add_argument("--url", required=True)
    arguments.add_argument("--body", required=True, help="a file holding the JSON body every request sends")
    arguments.add_argument("--concurrency", type=int, required=True)
    arguments.add_argument("--seconds", type=float, default=10.0)
    arguments.add_argument("--warmup-s", type=float, default=2.0)
    args = arguments.parse_args()
    with open(args.body, "rb") as handle:
        payload = handle.read()
    print(json.dumps(uvloop.run(run(args.url, payload, args.concurrency, args.seconds, args.warmup_s))))
