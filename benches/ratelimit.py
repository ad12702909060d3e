#!/usr/bin/env python3
"""Rate limits, measured: how many requests a limit lets through under open-loop overload, alone and shared by
three instances through Redis, and the memory a limit holds for a million distinct keys.

  python3 benches/ratelimit.py [--binary PATH] [--scenarios accuracy,global,memory] [--seconds 10]

- accuracy: one switchyard, `rate = 1000, burst = 100` on the route, offered 3000 req/s open loop (each request
  sent when due, whatever is outstanding) for --seconds; accepted should be rate x seconds + burst (+-3%).
- global: a redis-server and three switchyard processes sharing that limit (`scope = "global"`), each offered
  1000 req/s for --seconds (3000 in all); the total accepted should be the same figure (+-10%).
- memory: one switchyard with `key = "header:X-Key"`, `max_keys = 100000`; wrk sends a million requests, each with
  a new key; switchyard's RSS before, after the first 100,000 keys and at the end.

Backends and the open-loop client come from benches/balance.py. Loopback only, free ports; every process started
is stopped by PID. Needs redis-server (global) and wrk (memory).
"""
import argparse, asyncio, os, shutil, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import balance  # noqa: E402  (the backends, the HTTP client, process handling)

RATE, BURST = 1000, 100


def sy_config(port, admin, backend_ports, limit, store=None):
    backends = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in backend_ports)
    text = f"""drain_timeout = "1s"
[[listeners]]
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{admin}"
[[routes]]
path_prefix = "/"
pool = "bench"
rate_limits = ["bench"]
[pools.bench]
backends = [ {backends} ]
[rate_limits.bench]
{limit}
"""
    if store:
        text += f'[rate_limit_store]\nredis = "redis://127.0.0.1:{store}/0"\ntimeout = "100ms"\n'
    return text


class Switchyard:
    def __init__(self, binary, folder, name, make):
        self.port, self.admin = balance.free_port(), balance.free_port()
        self.path = os.path.join(folder, f"{name}.toml")
        with open(self.path, "w") as f:
            f.write(make(self.port, self.admin))
        self.proc = balance.spawn([binary, "run", "--config", self.path, "--workers", "1", "--log-level", "warn"],
                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(folder, f"{name}.log"), "w"))
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/healthz", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"switchyard did not start; see {folder}/{name}.log")
                time.sleep(0.05)

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


async def offer(port, rate, seconds):
    """Open loop at `rate` for `seconds`: (accepted, refused, other)."""
    loop = asyncio.get_running_loop()
    client, counts, pending = balance.Client(port), {"ok": 0, "limited": 0, "other": 0}, set()

    async def one():
        try:
            status, _ = await client.get()
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status = 0
        counts["ok" if status == 200 else "limited" if status == 429 else "other"] += 1

    start = loop.time() + 0.05
    for i in range(int(rate * seconds)):
        due = start + i / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        task = loop.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(set(pending), timeout=30)
    for _, writer in client.idle:
        writer.close()
    return counts["ok"], counts["limited"], counts["other"]


def verdict(name, accepted, expected, tolerance):
    off = accepted / expected - 1
    print(f"{name}: accepted {accepted} of expected {expected} ({100 * off:+.1f}%; target +-{100 * tolerance:.0f}%)"
          f"  {'PASS' if abs(off) <= tolerance else 'FAIL'}", flush=True)


def accuracy(args, folder, backends):
    limit = f'key = "route"\nrate = {RATE}\nburst = {BURST}'
    sy = Switchyard(args.binary, folder, "accuracy",
                    lambda port, admin: sy_config(port, admin, backends.ports, limit))
    try:
        ok, limited, other = asyncio.run(offer(sy.port, 3 * RATE, args.seconds))
    finally:
        balance.stop(sy.proc)
    print(f"accuracy: 1 instance, offered {3 * RATE}/s for {args.seconds} s: {ok} accepted, {limited} refused 429, "
          f"{other} other")
    verdict("accuracy", ok, RATE * args.seconds + BURST, 0.03)


def shared(args, folder, backends):
    redis_port = balance.free_port()
    redis = balance.spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        limit = f'key = "route"\nrate = {RATE}\nburst = {BURST}\nscope = "global"'
        proxies = [Switchyard(args.binary, folder, f"global-{i}",
                              lambda port, admin: sy_config(port, admin, backends.ports, limit, redis_port))
                   for i in range(3)]
        try:
            async def all_three():
                return await asyncio.gather(*(offer(p.port, RATE, args.seconds) for p in proxies))
            results = asyncio.run(all_three())
        finally:
            for p in proxies:
                balance.stop(p.proc)
    finally:
        balance.stop(redis)
    for i, (ok, limited, other) in enumerate(results):
        print(f"global: instance {i}: offered {RATE}/s, {ok} accepted, {limited} refused 429, {other} other")
    verdict("global", sum(r[0] for r in results), RATE * args.seconds + BURST, 0.10)


WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", { ["X-Key"] = "client-" .. counter })
end
"""


def memory(args, folder, backends):
    limit = 'key = "header:X-Key"\nrate = 1\nburst = 1\nmax_keys = 100000'
    sy = Switchyard(args.binary, folder, "memory",
                    lambda port, admin: sy_config(port, admin, backends.ports, limit))
    script = os.path.join(folder, "keys.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    try:
        before = sy.rss_kib()
        points, sent = [], 0
        for target in (100_000, 1_000_000):
            # wrk runs for a duration; a few short runs until the count of distinct keys sent reaches the target.
            while sent < target:
                out = subprocess.run(["wrk", "-t1", "-c32", "-d2s", "-s", script, f"http://127.0.0.1:{sy.port}/"],
                                     capture_output=True, text=True).stdout
                sent += int(out.split(" requests in")[0].split()[-1])
                # Each run's counter starts over; the keys stay distinct by the run's number in front.
                with open(script, "w") as f:
                    f.write(WRK_SCRIPT.replace('"client-"', f'"r{sent}-"'))
            points.append((sent, sy.rss_kib()))
    finally:
        balance.stop(sy.proc)
    print(f"memory: RSS before {before / 1024:.1f} MiB; " + "; ".join(
        f"after {n:,} distinct keys {kib / 1024:.1f} MiB" for n, kib in points))
    (n1, k1), (n2, k2) = points
    print(f"memory: from {n1:,} to {n2:,} keys (max_keys 100,000) RSS grew {(k2 - k1) / 1024:.1f} MiB  "
          f"{'PASS (bounded)' if k2 - k1 < 0.5 * (k1 - before) + 8192 else 'FAIL (still growing)'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/switchyard")
    ap.add_argument("--scenarios", default="accuracy,global,memory")
    ap.add_argument("--seconds", type=int, default=10)
    run(ap.parse_args(), "ratelimit", 2, {"accuracy": accuracy, "global": shared, "memory": memory})


def run(args, name, n_backends, scenarios):
    """Runs the scenarios `args.scenarios` names, beside `n_backends` Python backends; stops everything after."""
    args.binary = os.path.abspath(args.binary)
    folder = tempfile.mkdtemp(prefix=f"switchyard-{name}-")
    backends = balance.Backends(n_backends)
    try:
        for scenario in args.scenarios.split(","):
            scenarios[scenario](args, folder, backends)
    finally:
        balance.stop(backends.proc)
        for p in list(balance.STARTED):
            balance.stop(p)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
