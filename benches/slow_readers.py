#!/usr/bin/env python3
"""Slow readers: N clients (default 10,000) each ask switchyard for a 1 MiB response (env BODY_KIB; env HEAD_KIB sets the pool's max_response_header_bytes) and read it at about 1 KB/s
(receive buffer 4 KiB, 1 KiB a second), so every response is held up by its client. Reports the proxy's RSS
before and while they read, the RSS per slow client, its open descriptors, and how long a normal request takes
meanwhile (the proxy must stay responsive). NGINX is the upstream (on CPU 1), switchyard `--workers 1` on CPU 0.

Usage: python3 benches/slow_readers.py [BINARY] [N]   (default target/release/switchyard, 10000; env SECONDS: how
long the clients read, default 30; env INSTANCES: switchyard processes sharing the port with `reuse_port`, default
1, each `--workers 1`, RSS and descriptors summed). Needs nginx and a hard descriptor limit of 2N/INSTANCES + 1000
(or root to raise it); below that, N shrinks to fit and says so. Traffic stays on
127.0.0.1 (ports 18280-18289); everything started is stopped, every socket closed at the end.
"""
import asyncio, os, resource, signal, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import rss_kib, wait_port

D = tempfile.mkdtemp(prefix="switchyard-slow-")
UP, P, A = 18281, 18280, 18289




def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))




async def slow_client(stop, stats):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(s, ("127.0.0.1", P))
        await loop.sock_sendall(s, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        stats["connected"] += 1
        while not stop.is_set():
            data = await asyncio.wait_for(loop.sock_recv(s, 1024), 30)
            if not data:
                stats["closed_early"] += 1
                return
            stats["bytes"] += len(data)
            await asyncio.sleep(1)
    except (OSError, asyncio.TimeoutError) as e:
        stats["failed"] += 1
        stats.setdefault("why", {}).setdefault(type(e).__name__ + ": " + str(e)[:60], 0)
        stats["why"][type(e).__name__ + ": " + str(e)[:60]] += 1
    finally:
        s.close()


async def probe_latency():
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, ("127.0.0.1", P))
        await loop.sock_sendall(s, b"GET /small HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        got = b""
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(s, 4096), 10)
            if not chunk:
                break
            got += chunk
        return (time.monotonic() - start) * 1000, got[:12]
    finally:
        s.close()


def total(measure, pids):
    return sum(measure(p) for p in pids)


async def run(pids, n, seconds):
    stop = asyncio.Event()
    stats = {"connected": 0, "closed_early": 0, "failed": 0, "bytes": 0}
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(slow_client(stop, stats)))
        if i % 500 == 499:
            await asyncio.sleep(0.2)
    await asyncio.sleep(5)
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append((total(rss_kib, pids), total(fds, pids)))
        await asyncio.sleep(1)
    try:
        latency = await probe_latency()
    except (OSError, asyncio.TimeoutError) as e:
        latency = (float("nan"), f"no answer: {type(e).__name__}".encode())
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats, samples, latency


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/switchyard"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    seconds = int(os.environ.get("SECONDS", "30"))
    instances = int(os.environ.get("INSTANCES", "1"))
    # Each slow client costs a proxy two descriptors (its own, and the upstream connection its response holds).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = max(2 * n // instances, n) + 1000
    if hard != resource.RLIM_INFINITY and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            n = (hard - 1000) * instances // 2
            want = hard
            print(f"the hard descriptor limit is {hard} and cannot be raised here: {n} slow clients", flush=True)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    # nginx's worker runs as another user: it must be able to read the file.
    os.chmod(D, 0o755)
    with open(f"{D}/big", "wb") as f:
        f.write(b"x" * (int(os.environ.get("BODY_KIB", "1024")) << 10))
    os.chmod(f"{D}/big", 0o644)
    open(f"{D}/ng.conf", "w").write(f"""worker_processes 1; daemon off; pid {D}/ng.pid; error_log {D}/ng.err warn;
worker_rlimit_nofile {want};
events {{ worker_connections {want}; }}
http {{ access_log off; client_body_temp_path {D}/b; proxy_temp_path {D}/p; fastcgi_temp_path {D}/f;
  uwsgi_temp_path {D}/u; scgi_temp_path {D}/s; keepalive_requests 1000000;
  open_file_cache max=16 inactive=600s; open_file_cache_valid 600s;
  server {{ listen 127.0.0.1:{UP} backlog=4096; root {D};
    location = /big {{ try_files /big =404; }}
    location = /small {{ return 200 "ok\\n"; }} }} }}""")
    head = os.environ.get("HEAD_KIB")
    head_limit = f"max_response_header_bytes = {int(head) * 1024}" if head else ""
    for i in range(instances):
        open(f"{D}/sy{i}.toml", "w").write(f"""[[listeners]]
address = "127.0.0.1:{P}"
reuse_port = {"true" if instances > 1 else "false"}
[admin]
address = "127.0.0.1:{A - i}"
[limits]
max_connections = {n + 1000}
idle_timeout = "120s"
[[routes]]
pool = "up"
[pools.up]
backends = [{{ address = "127.0.0.1:{UP}" }}]
{head_limit}
[pools.up.timeouts]
request = "300s"
""")
    ng = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", D + "/", "-e", f"{D}/ng.early", "-c", f"{D}/ng.conf"])
    sys_ = [subprocess.Popen(["taskset", "-c", "0", binary, "run", "--config", f"{D}/sy{i}.toml", "--workers", "1"],
                             stdout=subprocess.DEVNULL, stderr=open(f"{D}/sy{i}.err", "w")) for i in range(instances)]
    pids = [p.pid for p in sys_]
    try:
        wait_port(UP)
        wait_port(P)
        time.sleep(1)
        base = total(rss_kib, pids)
        stats, samples, (ms, head) = asyncio.run(run(pids, n, seconds))
        peak = max(r for r, _ in samples)
        last = samples[-1][0]
        first = samples[0][0]
        print(f"switchyard processes: {instances}")
        print(f"| slow clients | connected | failed | closed early | RSS idle | RSS while reading (first / last / peak) "
              f"| per slow client | open fds | a normal request meanwhile |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {n} | {stats['connected']} | {stats['failed']} | {stats['closed_early']} | {base / 1024:.1f} MiB "
              f"| {first / 1024:.1f} / {last / 1024:.1f} / {peak / 1024:.1f} MiB "
              f"| {(peak - base) / max(1, stats['connected']):.1f} KiB | {samples[-1][1]} "
              f"| {ms:.1f} ms ({head.decode(errors='replace').strip()}) |")
        if stats.get("why"):
            print("failures:", stats["why"])
        print(f"growth over the {seconds} s of reading: {(last - first) / 1024:+.1f} MiB; "
              f"bytes the clients read in all: {stats['bytes'] / (1 << 20):.1f} MiB")
    finally:
        for p in sys_:
            p.send_signal(signal.SIGKILL)
            p.wait()
        ng.send_signal(signal.SIGQUIT)
        ng.wait()


main()
