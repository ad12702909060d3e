#!/usr/bin/env python3
"""What the status page costs the proxy: switchyard (`--workers 1`, CPU 0) idle, its CPU time over SECONDS with no
browser, then with 5 headless Chromium tabs (CPU 1) keeping `http://ADMIN/` open (each polls `/api/status` every
second and follows `/api/events/stream`). Two configs: the bench's one pool of 2 backends, and 50 pools of 20.
The difference, as a share of one CPU-second, is what a saturated proxy would lose in requests per CPU-second.
Also prints the size of one `/api/status` answer and the process's RSS.

Usage: python3 benches/status_page.py [BINARY]   (default target/release/switchyard; env SECONDS, default 30)
Needs chromium. Traffic stays on 127.0.0.1 (ports 18180-18189); everything started is stopped.
"""
import os, signal, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import close_browsers, cpu, open_browsers, rss_kib, wait_port

D = tempfile.mkdtemp(prefix="switchyard-status-")
P, A = 18180, 18189


def config(pools, backends):
    lines = [f'[[listeners]]\naddress = "127.0.0.1:{P}"\n[admin]\naddress = "127.0.0.1:{A}"\n']
    for i in range(pools):
        lines.append(f'[[routes]]\npath_prefix = "/p{i}"\npool = "pool{i}"\n')
    for i in range(pools):
        # Closed loopback ports: no health checks, so nothing is attempted; the page shows them all the same.
        addrs = ", ".join(f'{{ address = "127.0.0.{2 + i // 200}:{20000 + (i * backends + j) % 40000}" }}'
                          for j in range(backends))
        lines.append(f'[pools.pool{i}]\nbackends = [{addrs}]\n')
    return "".join(lines)








def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/switchyard"
    seconds = int(os.environ.get("SECONDS", "30"))
    print(f"| config | /api/status bytes | CPU, no browser | CPU, 5 browsers | cost (share of 1 CPU-s) | RSS |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, pools, backends in [("1 pool x 2", 1, 2), ("50 pools x 20", 50, 20)]:
        path = f"{D}/{pools}x{backends}.toml"
        open(path, "w").write(config(pools, backends))
        sy = subprocess.Popen(["taskset", "-c", "0", binary, "run", "--config", path, "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        browsers = []
        try:
            wait_port(A)
            size = len(urllib.request.urlopen(f"http://127.0.0.1:{A}/api/status").read())
            time.sleep(3)
            c0 = cpu(sy.pid); time.sleep(seconds); idle = (cpu(sy.pid) - c0) / seconds
            browsers = open_browsers(5, f"http://127.0.0.1:{A}/", D)
            time.sleep(8)
            c0 = cpu(sy.pid); time.sleep(seconds); watched = (cpu(sy.pid) - c0) / seconds
            rss = rss_kib(sy.pid)
            print(f"| {name} | {size} | {idle * 100:.2f}% | {watched * 100:.2f}% | {(watched - idle) * 100:.2f}% "
                  f"| {rss / 1024:.1f} MiB |", flush=True)
        finally:
            close_browsers(browsers)
            sy.send_signal(signal.SIGTERM)
            sy.wait(10)


main()
