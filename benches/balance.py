#!/usr/bin/env python3
"""Balancing over uneven backends (issue #16): round_robin, least_connections and peak_ewma side by side.

An open-loop client (a fixed arrival rate: each request is sent when it is due, whatever is still outstanding;
latency runs from its due time to the end of its response) drives switchyard over Python asyncio backends that
answer after an injected delay and name themselves in `X-Backend`. A fresh switchyard per scenario and algorithm
(`--workers 1`, retries off, no health checks), all on 127.0.0.1 and free ports.

  slow-one       4 backends at ~2 ms; backend 3 gets +50 ms from T1 to T2 (toggled at run time). Its share and the
                 pool's p50/p99/p99.9 in the steady slow phase, its share per second, and the issue's pass/fail
                 lines for peak_ewma (its `[pools.bench.peak_ewma] decay` is --decay).
  heterogeneous  10 backends: one at B ms, four at 10B, four at 100B, one at 1000B (linkerd's balancer bench).
  slow-start     3 backends, then a 4th added by rewriting the config and POST /api/reload; its share per second
                 over `[pools.bench.slow_start] window` beside the share its ramping weight should give.

Usage: python3 benches/balance.py [--binary PATH] [--algorithms round_robin,least_connections,peak_ewma]
           [--scenarios slow-one,heterogeneous,slow-start] [--rate 300] [--json FILE]    (--help: durations)
About 4 minutes with the defaults. Python 3.11 stdlib only. Every process started is stopped by PID on every
exit path (error, Ctrl-C, SIGTERM). The binary's `validate` checks every config first, so an algorithm or
section the build does not know yet fails at once (leave it out with --algorithms / --scenarios).
"""
import argparse, asyncio, json, math, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from functools import partial

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUEST = b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n"
STARTED: list[subprocess.Popen] = []

def seconds(text):
    for unit, scale in (("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        number = text[: -len(unit)]
        if text.endswith(unit) and number.replace(".", "", 1).isdigit():
            return float(number) * scale
    raise argparse.ArgumentTypeError(f"bad duration {text!r} (write 250ms, 2s, 1m)")

def header(head, name):
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


# ---- backends: a child process (`balance.py _backends N`) serving N HTTP/1.1 servers; stdin lines "I SECONDS"
async def serve_backends(n):
    delays = [0.0] * n

    async def handle(i, reader, writer):
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Backend: %d\r\n\r\nok\n" % i
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(int(header(head, b"content-length") or 0))
                if delays[i]:  # read on arrival: a request arriving while the backend is slow is slow
                    await asyncio.sleep(delays[i])
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(partial(handle, i), "127.0.0.1", 0, backlog=1024) for i in range(n)]
    print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := await stdin.readline():  # EOF (the parent closed the pipe or is gone) ends the process
        i, delay = line.split()
        delays[int(i)] = float(delay)

def spawn(argv, **kw):
    proc = subprocess.Popen(argv, start_new_session=True, **kw)  # our signals only, not the terminal's Ctrl-C
    STARTED.append(proc)
    return proc

def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in STARTED:
        STARTED.remove(proc)

def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

class Backends:
    def __init__(self, n):
        self.proc = spawn([sys.executable, os.path.abspath(__file__), "_backends", str(n)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ports = json.loads(self.proc.stdout.readline() or "null") or sys.exit("backends did not start")

    def set_ms(self, delays):  # {index: milliseconds}
        self.proc.stdin.write("".join(f"{i} {ms / 1e3}\n" for i, ms in delays.items()).encode())
        self.proc.stdin.flush()


# ---- switchyard
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def config(args, port, admin, algorithm, backend_ports, slow_start=False):
    backends = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in backend_ports)
    text = f"""drain_timeout = "1s"
[[listeners]]
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{admin}"
[[routes]]
path_prefix = "/"
pool = "bench"
[pools.bench]
algorithm = "{algorithm}"
backends = [ {backends} ]
[pools.bench.retry]
max_retries = 0
"""
    if algorithm == "peak_ewma":
        text += f'[pools.bench.peak_ewma]\ndecay = "{args.decay}"\n'
    if slow_start:
        text += f'[pools.bench.slow_start]\nwindow = "{args.window}"\nmin_weight_percent = {args.min_weight_percent}\n'
    return text

class Proxy:
    """One switchyard over pool "bench"; a context manager that stops it by PID however the block ends."""

    def __init__(self, args, folder, algorithm, backend_ports, slow_start=False):
        self.args, self.port, self.admin = args, free_port(), free_port()
        self.path, self.log = os.path.join(folder, "switchyard.toml"), os.path.join(folder, "switchyard.log")
        self.config = partial(config, args, self.port, self.admin, algorithm, slow_start=slow_start)
        self.write(self.config(backend_ports))

    def write(self, text):
        with open(self.path + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.path + ".tmp", self.path)

    def __enter__(self):
        argv = [self.args.binary, "run", "--config", self.path, "--workers", str(self.args.workers),
                "--log-level", "warn"]
        self.proc = spawn(argv, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"switchyard exited with {self.proc.returncode}:\n{open(self.log).read()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/healthz", timeout=1).read()
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"switchyard not ready after 15 s; log {self.log}")
                time.sleep(0.05)

    def reload(self):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}/api/reload", method="POST")
        return json.loads(urllib.request.urlopen(req, timeout=5).read())

    def __exit__(self, *exc):
        stop(self.proc)


# ---- the load: a minimal HTTP/1.1 keep-alive client, driven open-loop
class Client:
    def __init__(self, port):
        self.port, self.idle, self.opened = port, [], 0

    async def get(self):
        """(status, backend index or None); a connection goes back to the idle stack after a whole response."""
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.opened += 1
        try:
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(header(head, b"content-length") or 0))
        except BaseException:
            writer.close()
            raise
        if (header(head, b"connection") or b"").lower() == b"close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        status, backend = int(head.split(b" ", 2)[1]), header(head, b"x-backend")
        return status, int(backend) if status == 200 and backend is not None else None

async def open_loop(port, rate, duration, events=(), watch_pid=None):
    """Request i is due at start + i/rate and sent then; `events` are (offset s, function, maybe async) called on
    schedule. Returns the samples (due offset s, latency s, backend or None when it failed), the client's own
    figures, and `start`."""
    loop = asyncio.get_running_loop()
    client, samples, lags, pending, events = Client(port), [], [], set(), sorted(events, key=lambda e: e[0])

    async def one(due):
        lags.append(loop.time() - due)
        try:
            _, backend = await client.get()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
            backend = None
        samples.append((due - start, loop.time() - due, backend))

    cpu0, watched0 = time.process_time(), watch_pid and cpu_seconds(watch_pid)
    start = loop.time() + 0.05
    n = int(duration * rate)
    for i in range(n):
        due = start + i / rate
        while events and start + events[0][0] <= due:
            if asyncio.iscoroutine(action := events.pop(0)[1]()):  # an async event runs beside the load
                pending.add(task := loop.create_task(action))
                task.add_done_callback(pending.discard)
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        task = loop.create_task(one(due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    sent_for = loop.time() - start
    if pending:
        _, late = await asyncio.wait(set(pending), timeout=30)
        for task in late:
            task.cancel()
    wall = loop.time() - start
    for _, writer in client.idle:
        writer.close()
    lags.sort()
    ok = sum(1 for s in samples if s[2] is not None)
    info = {"target_rps": rate, "sent_rps": round(n / sent_for, 1), "answered_rps": round(ok / duration, 1),
            "errors": n - ok, "send_lag_p99_ms": round(1e3 * lags[int(0.99 * (len(lags) - 1))], 2) if lags else None,
            "connections": client.opened, "client_cpu_percent": round(100 * (time.process_time() - cpu0) / wall)}
    if watch_pid:
        info["backends_cpu_percent"] = round(100 * (cpu_seconds(watch_pid) - watched0) / wall)
    return samples, info, start

def quantile(sorted_values, q):  # nearest rank
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)] if sorted_values else float("nan")

def summarize(samples, t_from, t_to, n_backends):
    chosen = [s for s in samples if t_from <= s[0] < t_to]
    latencies = sorted(s[1] for s in chosen)
    counts = [0] * n_backends
    for _, _, backend in chosen:
        if backend is not None:
            counts[backend] += 1
    ok = sum(counts) or 1
    return {"window_s": [t_from, t_to], "requests": len(chosen), "errors": len(chosen) - sum(counts),
            "share": [round(c / ok, 4) for c in counts],
            **{k: round(1e3 * quantile(latencies, q), 2)
               for k, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999))}}

def share_per_second(samples, backend, t_from, t_to):
    """[(second, share of `backend`, answered)] for buckets [t_from + k, t_from + k + 1)."""
    buckets = [[0, 0] for _ in range(int(t_to - t_from))]
    for due, _, b in samples:
        k = math.floor(due - t_from)
        if 0 <= k < len(buckets) and b is not None:
            buckets[k][0] += b == backend
            buckets[k][1] += 1
    return [(k, hits / total if total else float("nan"), total) for k, (hits, total) in enumerate(buckets)]

def client_line(algorithm, info):
    return (f"  {algorithm:18} sent {info['sent_rps']}/s of {info['target_rps']}, answered {info['answered_rps']}/s, "
            f"{info['errors']} errors, send lag p99 {info['send_lag_p99_ms']} ms, {info['connections']} connections, "
            f"client CPU {info['client_cpu_percent']}%, backends CPU {info.get('backends_cpu_percent')}%")


# ---- scenarios
def slow_one(args, backends, folder, algorithm):
    t1, t2 = args.warmup, args.warmup + args.slow
    end, slow = t2 + args.recover, 3
    backends.set_ms({i: args.base_ms for i in range(4)})
    events = [(t1, lambda: backends.set_ms({slow: args.base_ms + args.extra_ms})),
              (t2, lambda: backends.set_ms({slow: args.base_ms}))]
    with Proxy(args, folder, algorithm, backends.ports[:4]) as proxy:
        samples, info, _ = asyncio.run(open_loop(proxy.port, args.rate, end, events, backends.proc.pid))
    series = share_per_second(samples, slow, 0, end)
    below = next((k for k, share, _ in series[t1:t2] if share < 0.10), None)
    back = next((k for k, share, _ in series[t2:] if share >= 0.20), None)
    return {"steady": summarize(samples, t1 + min(5, args.slow // 2), t2, 4), "client": info,
            "series": [round(share, 4) for _, share, _ in series],
            "below_10_after_s": None if below is None else below - t1 + 1,  # end of the first bucket under 10%
            "stayed_below_10": below is not None and all(s < 0.10 for _, s, _ in series[below:t2]),
            "back_20_after_s": None if back is None else back - t2 + 1}

def heterogeneous_delays(args):
    b = args.hetero_base_ms
    return [b] + [10 * b] * 4 + [100 * b] * 4 + [1000 * b]

def heterogeneous(args, backends, folder, algorithm):
    delays = heterogeneous_delays(args)
    backends.set_ms(dict(enumerate(delays)))
    with Proxy(args, folder, algorithm, backends.ports[:10]) as proxy:
        samples, info, _ = asyncio.run(open_loop(proxy.port, args.rate, 2 + args.hetero_secs, (), backends.proc.pid))
    result = summarize(samples, 2, 2 + args.hetero_secs, 10)
    sh = result["share"]
    result["class_share"] = {"1x": sh[0], "10x": round(sum(sh[1:5]), 4), "100x": round(sum(sh[5:9]), 4), "1000x": sh[9]}
    return {"result": result, "client": info}

def expected_share(args, t):
    """The new backend's share at t s after it was added, all weights equal, its weight ramping linearly from
    min_weight_percent to 100% of itself over the window (the three others at full weight)."""
    m = args.min_weight_percent / 100
    f = m + (1 - m) * min(1.0, max(0.0, t) / seconds(args.window))
    return f / (f + 3)

def slow_start(args, backends, folder, algorithm):
    backends.set_ms({i: args.base_ms for i in range(4)})
    window, before, after = seconds(args.window), 3, 3
    added = {}
    with Proxy(args, folder, algorithm, backends.ports[:3], slow_start=True) as proxy:
        async def add():  # the config file rewritten (the file watcher sees it too), then POST /api/reload
            proxy.write(proxy.config(backends.ports[:4]))
            try:
                added["reply"] = await asyncio.to_thread(proxy.reload)
                added["t"] = asyncio.get_running_loop().time()
            except OSError as e:  # HTTPError included: a refused reload answers 400 with the reason
                added["error"] = f"{e}: {e.read().decode() if hasattr(e, 'read') else ''}"
        end = before + math.ceil(window) + after
        samples, info, start = asyncio.run(open_loop(proxy.port, args.rate, end, [(before, add)], backends.proc.pid))
    if "t" not in added:
        sys.exit(f"slow-start: the reload failed or did not answer in time: {added}")
    t0 = added["t"] - start
    rows = [(k, share, n, expected_share(args, k + 0.5)) for k, share, n in
            share_per_second(samples, 3, t0, t0 + math.ceil(window) + after - 1)]
    floor = expected_share(args, 0)
    return {"added_at_s": round(t0, 3), "reload": added["reply"], "floor_share": round(floor, 4), "client": info,
            "per_second": [{"t": k, "share": round(s, 4), "answered": n, "expected": round(e, 4)}
                           for k, s, n, e in rows],
            "fell_below_floor": any(s < floor for k, s, _, _ in rows if k < window)}


# ---- the report
LATENCY_HEAD = f"{'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'requests':>9} {'errors':>7}"

def latency_cells(s):
    return f"{s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['p999_ms']:9.2f} {s['requests']:9} {s['errors']:7}"

def report_slow_one(args, res):
    t1, t2 = args.warmup, args.warmup + args.slow
    steady = next(iter(res.values()))["steady"]["window_s"]
    print(f"\n== slow-one: 4 backends at {args.base_ms} ms; backend 3 gets +{args.extra_ms} ms from t={t1} s to "
          f"t={t2} s; {args.rate} req/s for {t2 + args.recover} s\nsteady slow phase (requests due at t={steady[0]}.."
          f"{steady[1]} s):\n  {'algorithm':18} {'slow share':>10} {LATENCY_HEAD}   shares of backends 0/1/2/3")
    for a, r in res.items():
        shares = " / ".join(f"{100 * v:.1f}%" for v in r["steady"]["share"])
        print(f"  {a:18} {100 * r['steady']['share'][3]:9.1f}% {latency_cells(r['steady'])}   {shares}")
    print("slow backend's share per 1-s bucket (t = seconds since the load started):")
    print(f"  {'t':>3} {'phase':>8} " + " ".join(f"{a:>18}" for a in res))
    for k in range(t2 + args.recover):
        phase = "slow" if t1 <= k < t2 else ("recover" if k >= t2 else "fast")
        print(f"  {k:3} {phase:>8} " + " ".join(f"{100 * r['series'][k]:17.1f}%" for r in res.values()))
    for a, r in res.items():
        print(f"  {a:18} under 10% by {r['below_10_after_s']} s after the slowdown (stayed: {r['stayed_below_10']}); "
              f">= 20% again {r['back_20_after_s']} s after it ended")
    decay = seconds(args.decay)
    print(f"peak_ewma decay = {args.decay} (so 2 x decay = {2 * decay:g} s)")
    pe = res.get("peak_ewma")
    if pe is None:
        print("  (no pass/fail lines: peak_ewma is not in --algorithms)")
        return
    verdict = lambda ok: "PASS" if ok else "FAIL"
    p99 = pe["steady"]["p99_ms"]
    for other, factor in (("round_robin", 0.5), ("least_connections", 1.0)):
        if other in res:
            theirs = res[other]["steady"]["p99_ms"]
            print(f"{verdict(p99 <= factor * theirs)} peak_ewma p99 {p99} ms <= {factor:g} x {other} p99 {theirs} ms")
    b = pe["below_10_after_s"]
    print(f"{verdict(b is not None and b <= 5 and pe['stayed_below_10'])} slow share < 10% within 5 s of the slowdown "
          f"(after {b} s, stayed until it ended: {pe['stayed_below_10']})")
    b = pe["back_20_after_s"]
    print(f"{verdict(b is not None and b <= 2 * decay)} slow share back to >= 20% within 2 x decay = {2 * decay:g} s "
          f"after the slowdown ended (after {b} s)")

def report_heterogeneous(args, res):
    d = heterogeneous_delays(args)
    print(f"\n== heterogeneous: 10 backends at {d[0]:g} ms (1), {d[1]:g} ms (4), {d[5]:g} ms (4), {d[9]:g} ms (1); "
          f"{args.rate} req/s for {args.hetero_secs} s after 2 s of warm-up (asyncio rounds sleeps up to whole ms)")
    print(f"  {'algorithm':18} {LATENCY_HEAD}   share 1x / 10x / 100x / 1000x")
    for a, r in res.items():
        classes = " / ".join(f"{100 * v:.1f}%" for v in r["result"]["class_share"].values())
        print(f"  {a:18} {latency_cells(r['result'])}   {classes}")

def report_slow_start(args, res):
    print(f"\n== slow-start: window = {args.window}, min_weight_percent = {args.min_weight_percent}; 3 backends at "
          f"{args.base_ms} ms, the 4th added (config rewritten + POST /api/reload) 3 s in; {args.rate} req/s")
    print("  expected = its share if its weight ramps linearly from min_weight_percent to 100% over the window")
    for a, r in res.items():
        print(f"  {a}: added at t={r['added_at_s']} s (the reload added {r['reload'].get('backends_added')}); "
              f"floor share {100 * r['floor_share']:.1f}%")
        print(f"    {'s':>3} {'measured':>9} {'expected':>9} {'answered':>9}")
        for row in r["per_second"]:
            mark = "  < floor" if row["share"] < r["floor_share"] else ""
            print(f"    {row['t']:3} {100 * row['share']:8.1f}% {100 * row['expected']:8.1f}% "
                  f"{row['answered']:9}{mark}")
        print(f"    fell below the floor within the window: {r['fell_below_floor']}")

SCENARIOS = {"slow-one": (slow_one, report_slow_one, 4), "heterogeneous": (heterogeneous, report_heterogeneous, 10),
             "slow-start": (slow_start, report_slow_start, 4)}

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "switchyard"))
    ap.add_argument("--algorithms", default="round_robin,least_connections,peak_ewma")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--rate", type=int, default=300, help="offered requests per second")
    ap.add_argument("--workers", type=int, default=1, help="switchyard --workers")
    ap.add_argument("--json", help="also write every number to this file")
    ap.add_argument("--base-ms", type=float, default=2.0, help="slow-one and slow-start: every backend's delay")
    ap.add_argument("--extra-ms", type=float, default=50.0, help="slow-one: the slow backend's extra delay")
    ap.add_argument("--warmup", type=int, default=5, help="slow-one: seconds before the slowdown (T1)")
    ap.add_argument("--slow", type=int, default=20, help="slow-one: seconds it stays slow (T2 - T1)")
    ap.add_argument("--recover", type=int, default=10, help="slow-one: seconds after it recovers")
    ap.add_argument("--decay", default="2s", type=lambda s: seconds(s) and s, help="peak_ewma decay")
    ap.add_argument("--hetero-base-ms", type=float, default=0.5, help="heterogeneous: the fast backend's delay B")
    ap.add_argument("--hetero-secs", type=int, default=15, help="heterogeneous: measured seconds per algorithm")
    ap.add_argument("--window", default="10s", type=lambda s: seconds(s) and s, help="slow_start window")
    ap.add_argument("--min-weight-percent", type=int, default=10, help="slow_start min_weight_percent")
    args = ap.parse_args()
    algorithms, scenarios = args.algorithms.split(","), args.scenarios.split(",")
    if unknown := [s for s in scenarios if s not in SCENARIOS]:
        ap.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if not os.access(args.binary, os.X_OK):
        ap.error(f"no switchyard binary at {args.binary} (cargo build --release, or --binary)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM as Ctrl-C: the finally below runs
    folder = tempfile.mkdtemp(prefix="switchyard-balance-")
    for a in algorithms:  # every config this run will use, checked before any load
        for s in scenarios:
            path = os.path.join(folder, "check.toml")
            with open(path, "w") as f:
                f.write(config(args, 1, 2, a, range(3, 3 + SCENARIOS[s][2]), slow_start=s == "slow-start"))
            out = subprocess.run([args.binary, "validate", "--config", path], capture_output=True, text=True)
            if out.returncode:
                shutil.rmtree(folder)
                sys.exit(f"{s} with {a}: switchyard validate refused the config:\n{out.stderr.strip()}\n"
                         "(leave it out with --algorithms / --scenarios)")
    print(f"switchyard {args.binary} --workers {args.workers}; algorithms {', '.join(algorithms)}; "
          f"{args.rate} req/s open loop; files in {folder}", flush=True)
    results = {"settings": vars(args)}
    try:
        backends = Backends(10)
        for s in scenarios:
            run, show, _ = SCENARIOS[s]
            results[s] = {}
            for a in algorithms:
                print(f"-- {s} / {a} ...", flush=True)
                results[s][a] = run(args, backends, folder, a)
            show(args, results[s])
            print("client (open loop; sent = achieved launch rate, send lag = how late launches were):")
            for a, r in results[s].items():
                print(client_line(a, r["client"]))
            sys.stdout.flush()
    finally:
        for proc in list(STARTED):
            stop(proc)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nnumbers in {args.json}")
    shutil.rmtree(folder)  # kept when something failed: the configs and switchyard's log are there

if __name__ == "__main__":
    try:  # the backends' child runs in a session of its own: only the SIGTERM of stop() reaches it
        asyncio.run(serve_backends(int(sys.argv[2]))) if sys.argv[1:2] == ["_backends"] else main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every process started was stopped")
