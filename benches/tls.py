#!/usr/bin/env python3
"""TLS and HTTP/2 side by side: switchyard (--workers 1) vs HAProxy (nbthread 1), same certificate, same upstreams.

Usage: benches/tls.py [--switchyard target/release/switchyard] [--rounds 3] [--duration 8] [--connections 50]
                      [--loads handshake,tls-ka,h2]

Measures, on 127.0.0.1 only, with the proxy pinned to CPU 0 and the load generator and two NGINX upstreams on
CPU 1 (as ../shared/bench/compare.sh does for plain HTTP):
  handshake  new TLS connections per second: wrk with `Connection: close` (one request per connection; both
             proxies offer session resumption, and wrk's OpenSSL client may use it)
  tls-ka     requests per second over kept-alive TLS connections (wrk, HTTP/1.1)
  h2         requests per second over HTTP/2 negotiated by ALPN (h2load, -m 10 streams per connection)
and for each the requests per proxy CPU-second (utime+stime of the proxy process). Ratios are switchyard /
HAProxy within each round, then the median over rounds. Needs haproxy, nginx, wrk, h2load (nghttp2-client),
openssl and taskset; installs the missing ones with apt-get.
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procs  # noqa: E402

TOOLS = {"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk", "h2load": "nghttp2-client",
         "openssl": "openssl", "taskset": "util-linux"}


def ensure_tools():
    procs.ensure_tools(TOOLS)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


NGINX_UPSTREAM = """worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type text/plain;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

HAPROXY = """global
    nbthread 1
    maxconn 8192
    tune.ssl.default-dh-param 2048
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend fe
    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1
    default_backend be
backend be
    balance roundrobin
    server s1 127.0.0.1:{b1}
    server s2 127.0.0.1:{b2}
"""

SWITCHYARD = """[[listeners]]
address = "127.0.0.1:{port}"
[listeners.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[admin]
address = "127.0.0.1:{admin}"

[[routes]]
pool = "bench"

[pools.bench]
backends = [{{ address = "127.0.0.1:{b1}" }}, {{ address = "127.0.0.1:{b2}" }}]
"""


LOADS = ("handshake", "tls-ka", "h2")


def parse_wrk(out):
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return float(m.group(1)) if m else 0.0, errors.group(0) if errors else ""


def parse_h2load(out):
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    failed = re.search(r"requests: .* (\d+) failed", out)
    return float(m.group(1)) if m else 0.0, (f"{failed.group(1)} failed" if failed and failed.group(1) != "0" else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switchyard", default="target/release/switchyard")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--loads", default="handshake,tls-ka,h2",
                    help="which loads to run, comma-separated (default: all three)")
    args = ap.parse_args()
    wanted = args.loads.split(",")
    unknown = [w for w in wanted if w not in LOADS]
    if unknown:
        sys.exit(f"unknown load {', '.join(unknown)}: the loads are {', '.join(LOADS)}")
    if not os.access(args.switchyard, os.X_OK):
        sys.exit(f"no switchyard binary at {args.switchyard}; build it with cargo build --release")
    ensure_tools()
    two_cpus = (os.cpu_count() or 1) >= 2
    proxy_cpu = ["taskset", "-c", "0"] if two_cpus else []
    load_cpu = ["taskset", "-c", "1"] if two_cpus else []

    tmp = tempfile.mkdtemp(prefix="switchyard-tls-bench.")
    started = []

    def spawn(argv, cpu, log):
        with open(os.path.join(tmp, log), "ab") as out:
            p = subprocess.Popen(cpu + argv, stdout=out, stderr=out)
        started.append(p)
        return p

    try:
        cert, key, pem = procs.self_signed(tmp)

        b1, b2 = free_port(), free_port()
        for name, port in (("up1", b1), ("up2", b2)):
            conf = os.path.join(tmp, f"{name}.conf")
            with open(conf, "w") as f:
                f.write(NGINX_UPSTREAM.format(dir=tmp, name=name, port=port))
            spawn(["nginx", "-p", tmp + "/", "-e", os.path.join(tmp, f"{name}.early.log"), "-c", conf,
                   "-g", "daemon off;"], load_cpu, f"{name}.log")
            wait_port(port)

        def start(which):
            port = free_port()
            if which == "haproxy":
                conf = os.path.join(tmp, "haproxy.cfg")
                with open(conf, "w") as f:
                    f.write(HAPROXY.format(port=port, pem=pem, b1=b1, b2=b2))
                p = spawn(["haproxy", "-db", "-f", conf], proxy_cpu, "haproxy.log")
            else:
                conf = os.path.join(tmp, "switchyard.toml")
                with open(conf, "w") as f:
                    f.write(SWITCHYARD.format(port=port, cert=cert, key=key, admin=free_port(), b1=b1, b2=b2))
                p = spawn([args.switchyard, "--log-level", "warn", "run", "--config", conf, "--workers", "1"],
                          proxy_cpu, "switchyard.log")
            wait_port(port)
            return p, port

        url = lambda port: f"https://127.0.0.1:{port}/"
        c, d = str(args.connections), str(args.duration)
        loads = {
            "handshake": lambda port: (["wrk", "-t1", "-c", c, "-d", d + "s", "-H", "Connection: close",
                                        url(port)], parse_wrk),
            "tls-ka": lambda port: (["wrk", "-t1", "-c", c, "-d", d + "s", url(port)], parse_wrk),
            "h2": lambda port: (["h2load", "-c", c, "-m", "10", "-D", d, url(port)], parse_h2load),
        }
        loads = {name: make for name, make in loads.items() if name in wanted}
        results = {}  # (load, proxy) -> list of (rps, per_cpu)
        for rnd in range(args.rounds):
            for load, make in loads.items():
                for which in ("switchyard", "haproxy"):
                    p, port = start(which)
                    argv, parse = make(port)
                    # Warm-up: the same load for 2 s.
                    warm_argv = [("2s" if a == d + "s" else "2" if a == d else a) for a in argv]
                    warm = subprocess.run(load_cpu + warm_argv, capture_output=True, text=True, timeout=60)
                    before = cpu_seconds(p.pid)
                    t0 = time.time()
                    out = subprocess.run(load_cpu + argv, capture_output=True, text=True,
                                         timeout=args.duration + 60)
                    elapsed = time.time() - t0
                    used = cpu_seconds(p.pid) - before
                    rps, errors = parse(out.stdout)
                    if rps == 0.0:
                        print(out.stdout, out.stderr, warm.stdout, file=sys.stderr)
                    per_cpu = rps * elapsed / used if used > 0 else 0.0
                    results.setdefault((load, which), []).append((rps, per_cpu, errors))
                    print(f"# round {rnd + 1} {load:9} {which:10} {rps:9.0f} req/s  {per_cpu:9.0f} req/CPU-s"
                          f"{'  ' + errors if errors else ''}", file=sys.stderr)
                    procs.stop(p, 10)
                    started.remove(p)

        print("\n| load | proxy | req/s (median) | req / proxy CPU-s (median) |")
        print("|---|---|---:|---:|")
        for load in loads:
            for which in ("switchyard", "haproxy"):
                runs = results[(load, which)]
                print(f"| {load} | {which} | {statistics.median(r[0] for r in runs):.0f} | "
                      f"{statistics.median(r[1] for r in runs):.0f} |")
        print("\nRatios switchyard / HAProxy (within each round, median over rounds; > 1 = switchyard better):")
        line = []
        for load in loads:
            sy, ha = results[(load, "switchyard")], results[(load, "haproxy")]
            rps = statistics.median(s[0] / h[0] for s, h in zip(sy, ha) if h[0] > 0)
            cpu = statistics.median(s[1] / h[1] for s, h in zip(sy, ha) if h[1] > 0)
            print(f"- {load}: req/s {rps:.2f}x, req per CPU-s {cpu:.2f}x")
            line.append(f"{load.replace('-', '_')}_rps={rps:.3f} {load.replace('-', '_')}_per_cpu={cpu:.3f}")
        print("TLS_RATIO " + " ".join(line))
    finally:
        for p in started:
            p.terminate()
        for p in started:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
