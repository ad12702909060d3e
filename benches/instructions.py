#!/usr/bin/env python3
"""Instructions per request, counted by valgrind's callgrind: a figure that this machine's noise does not move.

On the shared 2-core VMs a build's requests per CPU-second move 5-10% from one round to the next, so `ab.py` cannot
see a change worth 1-2%. The instructions the proxy runs per request can: two runs of one build agree within 0.2%.
Instructions are not time (a cache miss costs more than an add, and the kernel's share is not counted), so a change
is measured both ways: here for what it saves, with `ab.py` for what it does to CPU-seconds.

Usage: python3 benches/instructions.py BUILD [BUILD ...] [--loads h1,h2] [--requests 20000] [--rounds 1]

Each BUILD runs under `valgrind --tool=callgrind` with `--workers 1` in front of two NGINX upstreams, one at a
time. After a warm-up of 2,000 requests, counting starts (`callgrind_control -i on`), `h2load` sends exactly
`--requests` requests, and the count so far is dumped. The control plane's threads count too (a few thousand
instructions a second, with health checks off as here).
  h1  HTTP/1.1 kept alive, `h2load --h1 -c 10`
  h2  HTTP/2 with prior knowledge (h2c), `h2load -c 5 -m 10`: the same request path, with h2's stream handling

A BUILD must be made so that valgrind can run it: rustix's own startup code reads the vDSO's ELF header, which
valgrind does not provide, and the process stops with SIGSEGV. rustix's libc backend avoids it:
  RUSTFLAGS="--cfg rustix_use_libc" CARGO_TARGET_DIR=target/vg cargo build --release
(the rest of the build is `cargo build --release`; the PGO build is not counted here, its layout is the point).
Needs valgrind, nginx and h2load (installed with apt-get when missing). Traffic stays on 127.0.0.1 (ports
18190-18199); everything started is stopped.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procs  # noqa: E402

P, B1, B2, A = 18190, 18191, 18192, 18199
LOADS = {
    "h1": ["h2load", "--h1", "-c", "10"],
    "h2": ["h2load", "-c", "5", "-m", "10"],
}
WARM_UP = 2000

NGINX = """worker_processes 1; daemon off; master_process on; pid {d}/ng.pid; error_log {d}/ng.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;
  uwsgi_temp_path {d}/u; scgi_temp_path {d}/s; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{b1} backlog=4096; default_type text/plain; location / {{ return 200 "ok\\n"; }} }}
  server {{ listen 127.0.0.1:{b2} backlog=4096; default_type text/plain; location / {{ return 200 "ok\\n"; }} }}
}}
"""

SWITCHYARD = """[[listeners]]
address = "127.0.0.1:{p}"
[admin]
address = "127.0.0.1:{a}"
[[routes]]
pool = "bench"
[pools.bench]
backends = [{{ address = "127.0.0.1:{b1}" }}, {{ address = "127.0.0.1:{b2}" }}]
"""


def completed(out):
    """Requests that succeeded, from h2load's summary; None if it did not finish them all."""
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not m or m.group(1) != m.group(3):
        return None
    return int(m.group(3))


def count(build, load, requests, tmp, keep=None):
    """Instructions per request of `build` under `load`; the dump is copied to `keep` (a path) when given."""
    out_file = os.path.join(tmp, "callgrind.out")
    for old in os.listdir(tmp):
        if old.startswith("callgrind.out"):
            os.remove(os.path.join(tmp, old))
    log = open(os.path.join(tmp, "valgrind.log"), "wb")
    proxy = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
         build, "--log-level", "warn", "run", "--config", os.path.join(tmp, "switchyard.toml"),
         "--workers", "1"], stdout=log, stderr=log)
    try:
        try:
            procs.wait_port(P)
        except SystemExit:
            tail = open(os.path.join(tmp, "valgrind.log"), errors="replace").read()[-2000:]
            hint = ("\nbuild it with RUSTFLAGS=\"--cfg rustix_use_libc\" (see --help)"
                    if "rustix" in tail else "")
            raise SystemExit(f"{build} did not start under valgrind:\n{tail}{hint}")
        url = f"http://127.0.0.1:{P}/"
        subprocess.run(LOADS[load] + ["-n", str(WARM_UP), url], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        run = subprocess.run(LOADS[load] + ["-n", str(requests), url], capture_output=True, text=True,
                             timeout=3600)
        done = completed(run.stdout)
        if done is None:
            raise SystemExit(f"{load}: not every request succeeded:\n{run.stdout[-1500:]}")
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
        dumps = [f for f in os.listdir(tmp) if f.startswith("callgrind.out.")]
        deadline = time.time() + 30
        while not dumps and time.time() < deadline:
            time.sleep(0.2)
            dumps = [f for f in os.listdir(tmp) if f.startswith("callgrind.out.")]
        if not dumps:
            raise SystemExit("callgrind wrote no dump")
        dump = os.path.join(tmp, sorted(dumps)[0])
        if keep:
            shutil.copyfile(dump, keep)
        text = open(dump).read()
        m = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
        if not m:
            raise SystemExit("no instruction total in callgrind's dump")
        return int(m.group(1)) / done
    finally:
        procs.stop(proxy, 30)
        log.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--loads", default="h1,h2")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR",
                    help="keep each run's callgrind dump in DIR (for callgrind_annotate)")
    args = ap.parse_args()
    loads = [x for x in args.loads.split(",") if x]
    unknown = [x for x in loads if x not in LOADS]
    if unknown:
        raise SystemExit(f"unknown load(s): {', '.join(unknown)}; known: {', '.join(LOADS)}")
    for b in args.builds:
        if not (os.path.isfile(b) and os.access(b, os.X_OK)):
            raise SystemExit(f"not an executable: {b}")
    procs.ensure_tools({"valgrind": "valgrind", "callgrind_control": "valgrind", "nginx": "nginx",
                        "h2load": "nghttp2-client"})
    tmp = tempfile.mkdtemp(prefix="switchyard-instructions.")
    nginx = None
    try:
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(NGINX.format(d=tmp, b1=B1, b2=B2))
        with open(os.path.join(tmp, "switchyard.toml"), "w") as f:
            f.write(SWITCHYARD.format(p=P, a=A, b1=B1, b2=B2))
        nginx = subprocess.Popen(["nginx", "-p", tmp + "/", "-e", os.path.join(tmp, "ng.early.log"), "-c",
                                  os.path.join(tmp, "nginx.conf")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.wait_port(B1)
        procs.wait_port(B2)
        results = {}  # (load, build) -> [instructions per request]
        for rnd in range(args.rounds):
            for load in loads:
                for build in args.builds:
                    keep = None
                    if args.keep:
                        os.makedirs(args.keep, exist_ok=True)
                        keep = os.path.join(args.keep, f"callgrind.{load}.{len(results)}.r{rnd}.out")
                    per = count(build, load, args.requests, tmp, keep)
                    results.setdefault((load, build), []).append(per)
                    print(f"r{rnd} {load} {build}: {per:,.0f} instructions per request", flush=True)
        base = args.builds[0]
        for load in loads:
            first = statistics.median(results[(load, base)])
            for build in args.builds:
                med = statistics.median(results[(load, build)])
                print(f"{load} {build}: {med:,.0f} per request, {med / first:.4f}x of {base}")
    finally:
        if nginx is not None:
            procs.stop(nginx, 10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
