#!/usr/bin/env python3
"""Route policy, measured: a 90/10 split's shares over 10,000 requests, and what a slow mirror does to the
primary's latency and to switchyard's memory.

  python3 benches/route_policy.py [--binary PATH] [--scenarios split,mirror,mirror-oha] [--rate 1000]
                                  [--seconds 10] [--oha PATH]

- split: `split = [{ pool = "a", weight = 90 }, { pool = "b", weight = 10 }]`, 10,000 requests (8 at a time);
  the share of each arm should be within +-2% of its weight.
- mirror: the same route to pool "a", offered --rate req/s open loop for --seconds, once without a mirror and
  once mirroring every request to a pool whose backend answers after 5 s (`max_in_flight` 64); p50/p99 of the
  primary's answers both ways (the p99 ratio should be at most 1.1) and switchyard's RSS after each run.

- mirror-oha: the issue's method. The primary is NGINX (`return 200`); switchyard (`--workers 1`, CPU 0) is
  loaded by wrk (CPU 1) to find its capacity, then by `oha -q CAPACITY/2 --latency-correction` for --seconds,
  without and with the 5 s mirror; p99 both ways (ratio at most 1.1) and RSS. Needs nginx, wrk and oha (--oha,
  or on the PATH; `cargo install oha` puts one in ~/.cache/switchyard-bench/cargo/bin, as compare.sh does).

Backends and the open-loop client of `mirror` come from benches/balance.py (asyncio, one process); that client
is what limits --rate there, far below the proxy's capacity. Loopback only, free ports; everything started is
stopped by PID.
"""
import argparse, asyncio, json, os, re, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import balance  # noqa: E402
from ratelimit import Switchyard, run  # noqa: E402


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


def mirror_oha(args, folder, backends):
    oha = args.oha or shutil.which("oha") or os.path.expanduser("~/.cache/switchyard-bench/cargo/bin/oha")
    if not os.path.exists(oha):
        sys.exit("mirror-oha needs oha: --oha PATH, or `cargo install oha --locked`")
    backends.set_ms({2: 5000})
    # The Python backends (the 5 s mirror) live with the load on CPU 1, never beside switchyard on CPU 0.
    subprocess.run(["taskset", "-a", "-p", "-c", "1", str(backends.proc.pid)], capture_output=True)
    nginx_port = balance.free_port()
    with open(os.path.join(folder, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1; daemon off; master_process off; pid {folder}/ng.pid; error_log {folder}/ng.err warn;
events {{ worker_connections 8192; }}
http {{ access_log off; client_body_temp_path {folder}/b; proxy_temp_path {folder}/p; fastcgi_temp_path {folder}/f;
uwsgi_temp_path {folder}/u; scgi_temp_path {folder}/s; keepalive_requests 1000000;
server {{ listen 127.0.0.1:{nginx_port} backlog=4096; location / {{ return 200 "ok\\n"; }} }} }}""")
    nginx = balance.spawn(["taskset", "-c", "1", "nginx", "-p", folder + "/", "-c", f"{folder}/nginx.conf"],
                          stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    ports = [nginx_port, backends.ports[1], backends.ports[2]]
    pin = lambda argv: ["taskset", "-c", "0"] + argv  # noqa: E731

    def start(name, route):
        binary = args.binary
        sy = Switchyard(args.binary, folder, name, lambda port, admin: config(port, admin, ports, route))
        balance.stop(sy.proc)  # restarted pinned to CPU 0
        sy.proc = balance.spawn(pin([binary, "run", "--config", sy.path, "--workers", "1", "--log-level", "warn"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket_ok = subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{sy.port}/"],
                                           timeout=2).returncode == 0
                if socket_ok:
                    break
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.05)
        return sy

    try:
        sy = start("capacity", 'pool = "a"')
        out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c50", "-d5s", f"http://127.0.0.1:{sy.port}/"],
                             capture_output=True, text=True).stdout
        balance.stop(sy.proc)
        capacity = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        rate = int(capacity / 2)
        print(f"mirror-oha: capacity {capacity:.0f} req/s (wrk -c50, --workers 1); open loop at {rate} req/s")
        p99 = {}
        configs = [("without mirror", 'pool = "a"'),
                   ("mirror to a 5 s backend", 'pool = "a"\nmirror = { pool = "shadow", percent = 100.0 }')]
        for r in range(args.rounds):
            for name, route in (configs if r % 2 == 0 else configs[::-1]):
                sy = start(name.replace(" ", "-"), route)
                try:
                    run = subprocess.run(["taskset", "-c", "1", oha, "-q", str(rate), "-z", f"{args.seconds}s",
                                          "-c", "50", "--latency-correction", "--no-tui", "--output-format", "json",
                                          f"http://127.0.0.1:{sy.port}/"], capture_output=True, text=True)
                    rss = sy.rss_kib()
                finally:
                    balance.stop(sy.proc)
                d = json.loads(run.stdout)
                lat = d.get("latencyPercentiles") or {}
                codes = d.get("statusCodeDistribution") or {}
                p99.setdefault(name, []).append(lat.get("p99") or 0.0)
                print(f"mirror-oha: round {r} {name}: {codes}, p50 {1e3 * (lat.get('p50') or 0):.3f} ms, "
                      f"p99 {1e3 * p99[name][-1]:.3f} ms, RSS {rss / 1024:.1f} MiB", flush=True)
        pairs = sorted(a / max(b, 1e-9) for a, b in zip(p99["mirror to a 5 s backend"], p99["without mirror"]))
        p99 = {name: sorted(v)[len(v) // 2] for name, v in p99.items()}
        print(f"mirror-oha: median p99 without {1e3 * p99['without mirror']:.3f} ms, "
              f"with {1e3 * p99['mirror to a 5 s backend']:.3f} ms; paired ratios {[round(x, 2) for x in pairs]}, "
              f"median {pairs[len(pairs) // 2]:.2f}")
        ratio = p99["mirror to a 5 s backend"] / max(p99["without mirror"], 1e-9)
        print(f"mirror-oha: p99 with / without = {ratio:.2f}  {'PASS' if ratio <= 1.1 else 'FAIL'} (target <= 1.1)")
    finally:
        balance.stop(nginx)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/switchyard")
    ap.add_argument("--scenarios", default="split,mirror")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--oha", default=None)
    ap.add_argument("--rounds", type=int, default=3, help="mirror-oha: alternating rounds (median p99)")
    run(ap.parse_args(), "routes", 3, {"split": split, "mirror": mirror, "mirror-oha": mirror_oha})


if __name__ == "__main__":
    main()
