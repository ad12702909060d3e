#!/usr/bin/env python3
"""System calls per request, counted by the kernel's tracepoints: the kernel side of a request, which callgrind
(`instructions.py`) does not see and which this machine's noise does not move.

A proxy's CPU on kept-alive HTTP/1.1 is two-thirds kernel: one `recv` and one `send` on each side are the floor,
and anything more (a wake-up of its own thread, a read that finds nothing, more `epoll_wait` turns) costs a
syscall's entry and exit each time. Counted with `perf stat -e syscalls:sys_enter_*` on the proxy's process (all
its threads) while `h2load` sends exactly `--requests` requests at a fixed rate, so that every build and peer sees
the same arrivals; the same counts for the two NGINX upstreams and for `h2load` tell what the proxy costs its
peers. CPU time per request (user and system, from /proc) is printed beside them, for reference only.

Usage: python3 benches/syscalls.py BUILD [BUILD ...] [haproxy] [--load h1|h2] [--requests 90000] [--rate 300]
                                   [--rounds 2]
  --load h1 (the default) is HTTP/1.1 kept alive on a plain listener; h2 is HTTP/2 over TLS negotiated by ALPN with
  10 streams per connection, `tls.py`'s h2 load (a new self-signed P-256 certificate; HAProxy's listener as in
  `tls.py`).
  --rate is per client connection (h2load --rps; 50 connections: 300 gives 15,000 req/s); --rate 0 sends as fast
  as the proxy answers. `haproxy` runs HAProxy with one thread, configured as `ab.py` and compare.sh configure it.
Each BUILD runs with `--workers 1` on CPU 0; the upstreams and h2load share CPU 1. Needs perf (the Debian
package linux-perf), nginx, haproxy and h2load (installed with apt-get when missing), and tracepoints readable
(root, or kernel.perf_event_paranoid <= -1 with tracefs readable). Traffic stays on 127.0.0.1 (ports
18160-18169); everything started is stopped.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procs  # noqa: E402
from instructions import NGINX, SWITCHYARD, completed  # noqa: E402  (the same upstreams and proxy config)

P, B1, B2, A = 18160, 18161, 18162, 18169
CONNECTIONS = 50
WARM_UP = 5000
CALLS = ["sendto", "recvfrom", "sendmsg", "recvmsg", "read", "write", "writev", "readv", "epoll_wait",
         "epoll_pwait", "epoll_ctl", "futex"]
EVENTS = ",".join(f"syscalls:sys_enter_{c}" for c in CALLS) + ",raw_syscalls:sys_enter"


def pinned(cpu, argv):
    return ["taskset", "-c", str(cpu)] + argv if (os.cpu_count() or 1) > 1 else argv


def children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def perf_stat(pids, out):
    return subprocess.Popen(["perf", "stat", "-x", ",", "-e", EVENTS, "-p", ",".join(map(str, pids)), "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_counts(path):
    """{call: count} from `perf stat -x ,` output; `all` is every syscall."""
    counts = {}
    for line in open(path):
        f = line.strip().split(",")
        if len(f) < 3 or not f[0].isdigit():
            continue
        name = f[2]
        counts["all" if name == "raw_syscalls:sys_enter" else name.rsplit("sys_enter_", 1)[-1]] = int(f[0])
    return counts


def load_argv(load, rate, n):
    if load == "h2":
        argv = ["h2load", "-c", str(CONNECTIONS), "-m", "10", "-n", str(n)]
        url = f"https://127.0.0.1:{P}/"
    else:
        argv = ["h2load", "--h1", "-c", str(CONNECTIONS), "-n", str(n)]
        url = f"http://127.0.0.1:{P}/"
    if rate > 0:
        argv += ["--rps", str(rate)]
    return argv + [url]


def write_configs(load, tmp):
    """The proxies' configs for `load`: a plain listener, or TLS with a new certificate (as `tls.py` has it)."""
    sy = SWITCHYARD.format(p=P, a=A, b1=B1, b2=B2)
    ha = procs.HAPROXY_1.format(p=P, b1=B1, b2=B2)
    if load == "h2":
        cert, key, pem = procs.self_signed(tmp)
        listener = f'address = "127.0.0.1:{P}"\n'
        tls = f'[listeners.tls]\ncertificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
        sy = sy.replace(listener, listener + tls)
        ha = ha.replace(f"bind 127.0.0.1:{P}\n", f"bind 127.0.0.1:{P} ssl crt {pem} alpn h2,http/1.1\n")
        if "ssl crt" not in ha or "[listeners.tls]" not in sy:
            raise SystemExit("the TLS listener could not be written into the configs")
    with open(os.path.join(tmp, "switchyard.toml"), "w") as f:
        f.write(sy)
    with open(os.path.join(tmp, "haproxy.cfg"), "w") as f:
        f.write(ha)


def measure(build, args, tmp, upstream_pids):
    """Syscalls per request of the proxy, the upstreams and the load generator, and the proxy's CPU µs."""
    if build == "haproxy":
        argv = ["haproxy", "-f", os.path.join(tmp, "haproxy.cfg")]
    else:
        argv = [build, "--log-level", "warn", "run", "--config", os.path.join(tmp, "switchyard.toml"),
                "--workers", "1"]
    proxy = subprocess.Popen(pinned(0, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watchers = []
    try:
        procs.wait_port(P)
        warm = subprocess.run(pinned(1, load_argv(args.load, 0, WARM_UP)), capture_output=True, text=True,
                              timeout=300)
        if completed(warm.stdout) is None:
            raise SystemExit(f"{build}: the warm-up failed:\n{warm.stdout[-1500:]}")
        files = {k: os.path.join(tmp, f"{k}.perf") for k in ("proxy", "upstreams", "loadgen")}
        watchers = [perf_stat([proxy.pid], files["proxy"]), perf_stat(upstream_pids, files["upstreams"])]
        time.sleep(0.5)  # perf attaches
        cpu0 = procs.cpu(proxy.pid)
        run = subprocess.run(pinned(1, ["perf", "stat", "-x", ",", "-e", EVENTS, "-o", files["loadgen"], "--"]
                                    + load_argv(args.load, args.rate, args.requests)),
                             capture_output=True, text=True, timeout=3600)
        cpu1 = procs.cpu(proxy.pid)
        done = completed(run.stdout)
        if done is None:
            raise SystemExit(f"{build}: not every request succeeded:\n{run.stdout[-1500:]}")
        for w in watchers:
            w.send_signal(2)
            w.wait(timeout=30)
        watchers = []
        result = {k: {c: n / done for c, n in read_counts(f).items()} for k, f in files.items()}
        result["cpu_us"] = (cpu1 - cpu0) * 1e6 / done
        return result
    finally:
        for w in watchers:
            w.kill()
            w.wait()
        procs.stop(proxy, 30)


def check_perf(tmp):
    probe = os.path.join(tmp, "probe.perf")
    r = subprocess.run(["perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-o", probe, "--", "true"],
                       capture_output=True, text=True)
    if r.returncode != 0 or not read_counts(probe):
        raise SystemExit("perf cannot count syscall tracepoints here (run as root, or set "
                         f"kernel.perf_event_paranoid to -1 and make tracefs readable):\n{r.stderr[-800:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("builds", nargs="+", help="switchyard binaries, or `haproxy`")
    ap.add_argument("--load", choices=("h1", "h2"), default="h1")
    ap.add_argument("--requests", type=int, default=90000)
    ap.add_argument("--rate", type=int, default=300, help="requests per second per connection; 0: closed loop")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    for b in args.builds:
        if b != "haproxy" and not (os.path.isfile(b) and os.access(b, os.X_OK)):
            raise SystemExit(f"not an executable: {b}")
    tools = {"perf": "linux-perf", "nginx": "nginx", "h2load": "nghttp2-client", "taskset": "util-linux",
             "openssl": "openssl"}
    if "haproxy" in args.builds:
        tools["haproxy"] = "haproxy"
    procs.ensure_tools(tools)
    tmp = tempfile.mkdtemp(prefix="switchyard-syscalls.")
    nginx = None
    try:
        check_perf(tmp)
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(NGINX.format(d=tmp, b1=B1, b2=B2))
        write_configs(args.load, tmp)
        nginx = subprocess.Popen(pinned(1, ["nginx", "-p", tmp + "/", "-e", os.path.join(tmp, "ng.early.log"),
                                            "-c", os.path.join(tmp, "nginx.conf")]),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.wait_port(B1)
        procs.wait_port(B2)
        upstream_pids = children(nginx.pid) or [nginx.pid]  # the workers (taskset execs nginx: the same PID)
        mode = f"{args.rate * CONNECTIONS:,} req/s offered" if args.rate > 0 else "closed loop"
        what = "HTTP/2 over TLS, 10 streams each" if args.load == "h2" else "HTTP/1.1 kept alive"
        print(f"# {args.requests:,} requests per run, {what}, {CONNECTIONS} connections, {mode}",
              flush=True)
        results = {}
        for rnd in range(args.rounds):
            order = args.builds if rnd % 2 == 0 else list(reversed(args.builds))
            for build in order:
                r = measure(build, args, tmp, upstream_pids)
                results.setdefault(build, []).append(r)
                px = r["proxy"]
                print(f"r{rnd} {build}: proxy {px.get('all', 0):.3f} syscalls/req "
                      f"(write {px.get('write', 0):.3f}, epoll_wait {px.get('epoll_wait', 0):.3f}), "
                      f"upstreams {r['upstreams'].get('all', 0):.3f}, h2load {r['loadgen'].get('all', 0):.3f}, "
                      f"proxy CPU {r['cpu_us']:.2f} us/req", flush=True)
        print()
        print("| build | " + " | ".join(["all"] + CALLS) + " | upstreams | h2load | proxy CPU µs/req |")
        print("|---|" + "---:|" * (len(CALLS) + 4))
        for build in args.builds:
            rs = results[build]

            def med(side, call):
                return statistics.median(r[side].get(call, 0.0) for r in rs)
            cells = [f"{med('proxy', c):.3f}" for c in ["all"] + CALLS]
            cells += [f"{med('upstreams', 'all'):.3f}", f"{med('loadgen', 'all'):.3f}",
                      f"{statistics.median(r['cpu_us'] for r in rs):.2f}"]
            print(f"| {build} | " + " | ".join(cells) + " |")
        print("\n(medians over rounds; syscalls per request; upstreams: both NGINX upstreams' workers together)")
    finally:
        if nginx is not None:
            procs.stop(nginx, 10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
