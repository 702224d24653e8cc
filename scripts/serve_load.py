#!/usr/bin/env python3
"""Concurrent load against a running ``sdrt serve``: images per second and the median queue wait.

    python scripts/serve_load.py http://127.0.0.1:7860 --clients 8 --requests 32 --size 256 --steps 10
"""

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sampler", default="Euler")
    args = p.parse_args()
    client = httpx.Client(base_url=args.url, timeout=600)

    def one(i: int):
        body = {"prompt": f"a red circle {i}", "seed": i, "width": args.size, "height": args.size, "steps": args.steps,
                "sampler_name": args.sampler}
        while True:
            r = client.post("/sdapi/v1/txt2img", json=body)
            if r.status_code != 503:
                return r
            time.sleep(float(r.headers.get("retry-after", 1)))

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        answers = list(pool.map(one, range(args.requests)))
    seconds = time.perf_counter() - started
    ok = [a for a in answers if a.status_code == 200]
    waits = [float(a.headers["x-queue-wait"]) for a in ok]
    print(f"{len(ok)}/{len(answers)} answered 200 in {seconds:.1f} s: {len(ok) / seconds:.2f} images/s, "
          f"median queue wait {statistics.median(waits):.2f} s, median latency "
          f"{statistics.median(a.elapsed.total_seconds() for a in ok):.2f} s")


if __name__ == "__main__":
    main()
