#!/usr/bin/env python3
"""A/B of switchyard builds: the same two NGINX upstreams (CPU 1), each build in turn with `--workers 1` on CPU 0,
`wrk -t1 -c50` on CPU 1, rounds alternating in order; prints req/s and requests per proxy CPU-second, and each
build's ratio to the first (paired by round, median). `haproxy` and `nginx` may be given as builds, as yardsticks
(one thread / one worker, round-robin over the same upstreams with kept-alive upstream connections, configured as
../shared/bench/compare.sh configures them).

Usage: python3 benches/ab.py BINARY_A BINARY_B [haproxy] [nginx]    (env: DUR seconds per run, default 6; ROUNDS,
default 4; CLOSE=1: every request on a new client connection, `wrk -H "Connection: close"`, so each costs an
accept, a handshake and a close on the client side while the upstream connections stay kept alive)

The close mode, switchyard against both C proxies: CLOSE=1 ROUNDS=5 python3 benches/ab.py target/release/switchyard haproxy nginx
A build may be given as BINARY:VARIANT to run it on another config: `peak_ewma`, `consistent_hash` (the pool's
algorithm), `limit_instance` or `limit_global` (a rate limit that never refuses on the route; global starts a
redis-server on 127.0.0.1:18088 for the run), `request_id` (`[request_id]` with its defaults), `browsers5` (the default
config while 5 headless Chromium tabs, on CPU 1, keep the status page open on the admin listener). The default is
round_robin without limits.
Needs nginx, haproxy and wrk (and redis-server for limit_global). Traffic stays on 127.0.0.1 (ports 18080-18089);
everything started is stopped.
"""
import os, subprocess, sys, time, re, signal, statistics, socket, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import HAPROXY_1, close_browsers, open_browsers
D = tempfile.mkdtemp(prefix="switchyard-ab-")
B1, B2, P, A = 18081, 18082, 18080, 18089
def nginx_conf():
    body = "".join(f"""server {{ listen 127.0.0.1:{p} backlog=4096; default_type text/plain; add_header X-Backend {p}; location / {{ return 200 "ok\\n"; }} }}\n""" for p in (B1, B2))
    t = f"""worker_processes 1; daemon off; master_process on; pid {D}/ng.pid; error_log {D}/ng.err warn; worker_rlimit_nofile 16384;
events {{ worker_connections 8192; multi_accept on; }}
http {{ access_log off; client_body_temp_path {D}/b; proxy_temp_path {D}/p; fastcgi_temp_path {D}/f; uwsgi_temp_path {D}/u; scgi_temp_path {D}/s; keepalive_requests 1000000; keepalive_timeout 65s; {body} }}"""
    open(f"{D}/ng.conf", "w").write(t)
SY = f"""[[listeners]]
address = "127.0.0.1:{P}"
[admin]
address = "127.0.0.1:{A}"
[[routes]]
path_prefix = "/"
pool = "bench"
[pools.bench]
algorithm = "round_robin"
backends = [ {{ address = "127.0.0.1:{B1}" }}, {{ address = "127.0.0.1:{B2}" }} ]
"""
HA = HAPROXY_1.format(p=P, b1=B1, b2=B2)
REDIS = 18088
VARIANTS = {
    "": "",
    "peak_ewma": 'algorithm = "peak_ewma"\n',
    "consistent_hash": 'algorithm = "consistent_hash"\n',
    "limit_instance": "",
    "limit_global": "",
    "request_id": "",
    "browsers5": "",
}
LIMIT = """[rate_limits.bench]
key = "client_ip"
rate = 10000000
burst = 10000000
scope = "{scope}"
[rate_limit_store]
redis = "redis://127.0.0.1:{redis}/0"
"""
def sy_config(variant):
    """The switchyard config for a variant: the pool's algorithm, or a limit that never refuses on the route."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(v for v in VARIANTS if v)}")
    text = SY.replace('algorithm = "round_robin"\n', VARIANTS[variant] or 'algorithm = "round_robin"\n')
    if variant == "request_id":
        text = "[request_id]\n" + text
    if variant.startswith("limit_"):
        text = text.replace('pool = "bench"\n', 'pool = "bench"\nrate_limits = ["bench"]\n')
        text += LIMIT.format(scope=variant.removeprefix("limit_"), redis=REDIS)
    return text
NGINX_PROXY = f"""worker_processes 1; daemon off; master_process on; pid {D}/ngp.pid; error_log {D}/ngp.err warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; multi_accept on; }}
http {{ access_log off; client_body_temp_path {D}/pb; proxy_temp_path {D}/pp; fastcgi_temp_path {D}/pf;
uwsgi_temp_path {D}/pu; scgi_temp_path {D}/ps; keepalive_requests 1000000; keepalive_timeout 65s;
upstream backends {{ server 127.0.0.1:{B1}; server 127.0.0.1:{B2}; keepalive 128; keepalive_requests 1000000; }}
server {{ listen 127.0.0.1:{P} backlog=4096; location / {{ proxy_pass http://backends; proxy_http_version 1.1;
proxy_set_header Connection ""; proxy_buffering on; }} }} }}
"""
def cpu(pid):
    """utime + stime of the process and its children that are still running (NGINX's worker), in seconds."""
    total = 0.0
    for q in [pid] + children(pid):
        try:
            f = open(f"/proc/{q}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return total
def children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []
def wait_port(p):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", p), 0.2).close(); return
        except OSError: time.sleep(0.05)
    raise SystemExit(f"port {p} not up")
def main():
    dur = int(os.environ.get("DUR", "6")); rounds = int(os.environ.get("ROUNDS", "4"))
    variants = sys.argv[1:]
    configs = {}
    for v in variants:
        binary, _, variant = v.partition(":")
        configs[v] = f"{D}/sy-{len(configs)}.toml"
        open(configs[v], "w").write(sy_config(variant))
    open(f"{D}/ha.cfg", "w").write(HA); nginx_conf(); open(f"{D}/ngp.conf", "w").write(NGINX_PROXY)
    close = ["-H", "Connection: close"] if os.environ.get("CLOSE") == "1" else []
    ng = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", D + "/", "-e", f"{D}/ng.early", "-c", f"{D}/ng.conf"])
    wait_port(B1)
    redis = None
    if any(v.endswith(":limit_global") for v in variants):
        redis = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--port", str(REDIS), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        wait_port(REDIS)
    res = {v: [] for v in variants}
    try:
        for r in range(rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                if v == "haproxy":
                    argv = ["haproxy", "-f", f"{D}/ha.cfg"]
                elif v == "nginx":
                    argv = ["nginx", "-p", D + "/", "-e", f"{D}/ngp.early", "-c", f"{D}/ngp.conf"]
                else:
                    argv = [v.partition(":")[0], "run", "--config", configs[v], "--workers", "1"]
                p = subprocess.Popen(["taskset", "-c", "0"] + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wait_port(P); time.sleep(0.5)
                browsers = []
                if v.endswith(":browsers5"):
                    browsers = open_browsers(5, f"http://127.0.0.1:{A}/", D)
                    time.sleep(4)
                subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c50", "-d2s"] + close + [f"http://127.0.0.1:{P}/"], capture_output=True)
                c0 = cpu(p.pid)
                out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c50", f"-d{dur}s"] + close + [f"http://127.0.0.1:{P}/"], capture_output=True, text=True).stdout
                c1 = cpu(p.pid)
                n = int(re.search(r"(\d+) requests in", out).group(1))
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                res[v].append((rps, n / (c1 - c0)))
                close_browsers(browsers)
                p.send_signal({"haproxy": signal.SIGUSR1, "nginx": signal.SIGQUIT}.get(v, signal.SIGTERM))
                try: p.wait(10)
                except subprocess.TimeoutExpired: p.kill(); p.wait()
                time.sleep(0.5)
                print(f"r{r} {os.path.basename(v):30s} {rps:9.0f} req/s {n/(c1-c0):9.0f} req/CPU-s", flush=True)
    finally:
        ng.send_signal(signal.SIGQUIT); ng.wait()
        if redis:
            redis.terminate(); redis.wait()
    base = variants[0]
    for v in variants:
        rr = [a[0] / b[0] for a, b in zip(res[v], res[base])]; cc = [a[1] / b[1] for a, b in zip(res[v], res[base])]
        print(f"{os.path.basename(v):30s} rps med {statistics.median(x[0] for x in res[v]):8.0f}  per-CPU med {statistics.median(x[1] for x in res[v]):8.0f}   vs {os.path.basename(base)}: rps {statistics.median(rr):.3f}x per-CPU {statistics.median(cc):.3f}x")
main()
