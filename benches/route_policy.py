#!/usr/bin/env python3
"""Route policy, measured: a 90/10 split's shares over 10,000 requests, and what a slow mirror does to the
primary's latency and to switchyard's memory.

  python3 benches/route_policy.py [--binary PATH] [--scenarios split,mirror] [--rate 1000] [--seconds 10]

- split: `split = [{ pool = "a", weight = 90 }, { pool = "b", weight = 10 }]`, 10,000 requests (8 at a time);
  the share of each arm should be within +-2% of its weight.
- mirror: the same route to pool "a", offered --rate req/s open loop for --seconds, once without a mirror and
  once mirroring every request to a pool whose backend answers after 5 s (`max_in_flight` 64); p50/p99 of the
  primary's answers both ways (the p99 ratio should be at most 1.1) and switchyard's RSS after each run.

Backends and the open-loop client come from benches/balance.py (asyncio, one process); the client is what
limits --rate here, far below the proxy's capacity. Loopback only, free ports; everything started is stopped by
PID.
"""
import argparse, asyncio, os, shutil, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import balance  # noqa: E402
from ratelimit import Switchyard  # noqa: E402


def config(port, admin, ports, route):
    return f"""drain_timeout = "1s"
[[listeners]]
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{admin}"
[[routes]]
path_prefix = "/"
{route}
[pools.a]
backends = [ {{ address = "127.0.0.1:{ports[0]}" }} ]
[pools.b]
backends = [ {{ address = "127.0.0.1:{ports[1]}" }} ]
[pools.shadow]
backends = [ {{ address = "127.0.0.1:{ports[2]}" }} ]
[pools.shadow.retry]
max_retries = 0
"""


async def closed_loop(port, n, concurrency):
    """`n` requests, `concurrency` at a time: how many each backend (X-Backend) answered."""
    counts, queue = {}, iter(range(n))

    async def worker():
        client = balance.Client(port)
        for _ in queue:
            _, backend = await client.get()
            counts[backend] = counts.get(backend, 0) + 1
        for _, writer in client.idle:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def split(args, folder, backends):
    route = 'split = [ { pool = "a", weight = 90 }, { pool = "b", weight = 10 } ]'
    sy = Switchyard(args.binary, folder, "split", lambda port, admin: config(port, admin, backends.ports, route))
    try:
        counts = asyncio.run(closed_loop(sy.port, 10_000, 8))
    finally:
        balance.stop(sy.proc)
    a, b = counts.get(0, 0), counts.get(1, 0)
    share = a / max(1, a + b)
    print(f"split 90/10 over {a + b} requests: a {a} ({100 * share:.2f}%), b {b} ({100 * (1 - share):.2f}%)  "
          f"{'PASS' if abs(share - 0.9) <= 0.02 else 'FAIL'} (target +-2%)")


def mirror(args, folder, backends):
    backends.set_ms({2: 5000})
    results = {}
    for name, route in [("without mirror", 'pool = "a"'),
                        ("mirror to a 5 s backend", 'pool = "a"\nmirror = { pool = "shadow", percent = 100.0 }')]:
        sy = Switchyard(args.binary, folder, name.replace(" ", "-"),
                        lambda port, admin: config(port, admin, backends.ports, route))
        try:
            samples, info, _ = asyncio.run(balance.open_loop(sy.port, args.rate, args.seconds))
            rss = sy.rss_kib()
        finally:
            balance.stop(sy.proc)
        latencies = sorted(s[1] for s in samples if s[2] is not None)
        p50, p99 = balance.quantile(latencies, 0.5), balance.quantile(latencies, 0.99)
        results[name] = p99
        print(f"mirror: {name}: {len(latencies)} answered of {len(samples)}, p50 {1e3 * p50:.2f} ms, "
              f"p99 {1e3 * p99:.2f} ms, RSS {rss / 1024:.1f} MiB; client {info}")
    ratio = results["mirror to a 5 s backend"] / results["without mirror"]
    print(f"mirror: p99 with / without = {ratio:.2f}  {'PASS' if ratio <= 1.1 else 'FAIL'} (target <= 1.1)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/switchyard")
    ap.add_argument("--scenarios", default="split,mirror")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    args.binary = os.path.abspath(args.binary)
    folder = tempfile.mkdtemp(prefix="switchyard-routes-")
    backends = balance.Backends(3)
    try:
        for name in args.scenarios.split(","):
            {"split": split, "mirror": mirror}[name](args, folder, backends)
    finally:
        balance.stop(backends.proc)
        for p in list(balance.STARTED):
            balance.stop(p)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
