#!/usr/bin/env python3
"""Reload of a config with 10,000 backends: the time to apply it, and the p99 of requests while reloads happen
against the p99 without them (targets: apply <= 300 ms, aim <= 100 ms; p99 during / outside <= 1.2x, aim <= 1.05x).

Usage: python3 benches/reload.py [--binary target/release/switchyard] [--backends 10000] [--reloads 10]
           [--rounds 3] [--seconds 10] [--rate 5000] [--interval 0.75] [--json FILE]    (--help: the rest)

Two NGINX upstreams (`200 "ok\\n"`, CPU 1) are pool `bench` behind the route `/`; the other backends (127.0.0.1,
ports 20000 and up where nothing is expected to listen, no health checks, so nothing connects to them) fill pools
of --pool-size, each behind a route of its own (`host = "svc-N.example"`). Two variants of that config differ in
--changed backends (the last backend of the first --changed filler pools moves to another port), so every reload
from one to the other adds and removes --changed backends. `switchyard validate` checks both first. switchyard
runs `--workers 1` on CPU 0 (the worker thread and the control-plane thread that does the reload share that
CPU); the load generator and this script run on CPU 1.

  apply    no load: --reloads reloads that change backends (the file rewritten, then at once `POST /api/reload`,
           which answers when the new config is applied), then --reloads that change nothing (POST only). The
           wall time of the POST (it includes an admin HTTP round trip, shown beside it), the answer's
           backends_added / backends_removed checked, and the process CPU time per reload.
  latency  a fixed-rate open loop (oha -q RATE --latency-correction over -c --connections kept-alive
           connections, latency from each request's due time; without oha, an asyncio client in this script)
           on `/`, --seconds per phase: `outside` (no reloads) and `during` (a changing reload every --interval s
           for the whole phase), alternating in order over --rounds rounds. Per phase p50/p99/max and every
           failed or non-200 request; the verdict is the median over rounds of p99 during / p99 outside.
           Each phase also shows the other processes' CPU (busy CPU time that is not this run's); above --quiet %
           the report warns that the machine was not quiet and the latencies are not to be trusted.

The apply verdict uses the median of the changing reloads without load (their max is printed beside it). At
the end `switchyard_config_reloads_total` is read from /metrics and must have counted every POST as a success.
oha is looked for in $OHA, on PATH, then ~/.cache/switchyard-bench/cargo/bin/oha (where ../shared/bench builds
it); it is never built here (`--loader asyncio` forces the fallback). Needs nginx and taskset (installed with
apt-get when missing). Python 3.11 stdlib only; all traffic on 127.0.0.1 and free ports; every process started
is stopped by PID on every exit path (error, Ctrl-C, SIGTERM). About 1.5 minutes with the defaults.
"""
import argparse, asyncio, json, math, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
import urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procs  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OHA_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "switchyard-bench", "cargo", "bin", "oha")
TOOLS = {"nginx": "nginx", "taskset": "util-linux"}
FILLER_PORT, MOVED_PORT = 20000, 19000  # filler backends at 20000 + k; a moved one at 19000 + j
STARTED: list[subprocess.Popen] = []
TWO_CPUS = (os.cpu_count() or 1) >= 2
PROXY_CPU = ["taskset", "-c", "0"] if TWO_CPUS else []
LOAD_CPU = ["taskset", "-c", "1"] if TWO_CPUS else []


# ---- processes
def ensure_tools():
    procs.ensure_tools(TOOLS)


def find_oha():
    for cand in (os.environ.get("OHA"), shutil.which("oha"), OHA_CACHE):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def spawn(argv, log, **kw):
    with open(log, "ab") as out:  # a session of its own: only our signals reach it, not the terminal's Ctrl-C
        proc = subprocess.Popen(argv, stdout=kw.pop("stdout", out), stderr=out, start_new_session=True, **kw)
    STARTED.append(proc)
    return proc


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in STARTED:
        STARTED.remove(proc)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_percent(seconds=1.0):
    """Each CPU's busy share (%) over `seconds`, whoever used it: a machine that is not quiet gives noisy p99s."""
    def sample():
        rows = [line.split() for line in open("/proc/stat") if re.match(r"cpu\d", line)]
        return [(sum(map(int, r[1:9])), int(r[4]) + int(r[5])) for r in rows]  # (all, idle + iowait)
    a = sample()
    time.sleep(seconds)
    return [round(100 * (1 - (i1 - i0) / max(1, t1 - t0))) for (t0, i0), (t1, i1) in zip(a, sample())]


def busy_cpu_seconds():
    """CPU seconds every CPU has been busy since boot, all processes together."""
    rows = [line.split() for line in open("/proc/stat") if re.match(r"cpu\d", line)]
    return sum(sum(map(int, r[1:9])) - int(r[4]) - int(r[5]) for r in rows) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid):
    """CPU seconds of `pid` and its living children (NGINX's workers)."""
    total = 0.0
    try:
        total += cpu_seconds(pid)
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            total += sum(cpu_seconds(int(c)) for c in f.read().split())
    except OSError:
        pass
    return total


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def http(method, url, timeout=30.0):
    """(status, body bytes, wall seconds) of one request on a fresh connection."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    return status, body, time.perf_counter() - t0


def wait_ready(proc, admin, port, log, deadline_s=120.0):
    end = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            sys.exit(f"switchyard exited with {proc.returncode}:\n{open(log).read()[-3000:]}")
        try:
            if http("GET", f"http://127.0.0.1:{admin}/healthz", 1.0)[0] == 200:
                socket.create_connection(("127.0.0.1", port), 1).close()
                return
        except OSError:
            pass
        if time.monotonic() > end:
            sys.exit(f"switchyard not ready after {deadline_s:.0f} s; log {log}")
        time.sleep(0.05)


# ---- configs
NGINX = """worker_processes 1; daemon off; master_process on; pid {dir}/nginx.pid; error_log {dir}/nginx.err warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; multi_accept on; }}
http {{ access_log off; client_body_temp_path {dir}/b; proxy_temp_path {dir}/p; fastcgi_temp_path {dir}/f;
  uwsgi_temp_path {dir}/u; scgi_temp_path {dir}/s; keepalive_requests 1000000; keepalive_timeout 65s;
{servers} }}
"""
NGINX_SERVER = """  server {{ listen 127.0.0.1:{port} backlog=4096; default_type text/plain; location / {{ return 200 "ok\\n"; }} }}
"""


def filler_pools(total, pool_size):
    """[(pool name, [backend ports])] for the total - 2 backends beside the two NGINX ones."""
    filler = total - 2
    pools, k = [], 0
    for j in range(math.ceil(filler / pool_size)):
        n = min(pool_size, filler - k)
        pools.append((f"svc-{j}", [FILLER_PORT + k + i for i in range(n)]))
        k += n
    return pools


def sy_config(args, port, admin, b1, b2, moved):
    """The config text; `moved`: the last backend of the first --changed filler pools is on another port."""
    out = [f"""[[listeners]]
address = "127.0.0.1:{port}"

[admin]
address = "127.0.0.1:{admin}"

[[routes]]
path_prefix = "/"
pool = "bench"
"""]
    pools = filler_pools(args.backends, args.pool_size)
    for name, _ in pools:
        out.append(f'[[routes]]\nhost = "{name}.example"\npool = "{name}"\n')
    out.append(f"""
[pools.bench]
algorithm = "round_robin"
backends = [ {{ address = "127.0.0.1:{b1}" }}, {{ address = "127.0.0.1:{b2}" }} ]
""")
    for j, (name, ports) in enumerate(pools):
        if moved and j < args.changed:
            ports = ports[:-1] + [MOVED_PORT + j]
        rows = "".join(f'  {{ address = "127.0.0.1:{p}" }},\n' for p in ports)
        out.append(f'[pools.{name}]\nbackends = [\n{rows}]\n')
    return "\n".join(out)


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# ---- the load: oha, or an asyncio open loop (`reload.py _load PORT RATE SECONDS CONNECTIONS`, a child process)
def loader_argv(args, port):
    if args.oha:
        return LOAD_CPU + [args.oha, "-q", str(args.rate), "-z", f"{args.seconds}s", "-c", str(args.connections),
                           "--latency-correction", "-w", "--no-tui", "--output-format", "json",
                           "--worker-threads", "1", f"http://127.0.0.1:{port}/"]
    return LOAD_CPU + [sys.executable, os.path.abspath(__file__), "_load", str(port), str(args.rate),
                       str(args.seconds), str(args.connections)]


def parse_oha(text):
    d = json.loads(text)
    codes = {k: v for k, v in (d.get("statusCodeDistribution") or {}).items()}
    errors = dict(d.get("errorDistribution") or {})
    lat, summary = d.get("latencyPercentiles") or {}, d.get("summary") or {}
    ok = codes.get("200", 0)
    failed = sum(v for k, v in codes.items() if k != "200") + sum(errors.values())
    ms = lambda v: None if v is None else round(v * 1e3, 3)
    return {"requests": ok + failed, "ok": ok, "failed": failed,
            "failures": {**{f"status {k}": v for k, v in codes.items() if k != "200"}, **errors},
            "p50_ms": ms(lat.get("p50")), "p99_ms": ms(lat.get("p99")), "p999_ms": ms(lat.get("p99.9")),
            "max_ms": ms(summary.get("slowest"))}


def quantile(sorted_values, q):  # nearest rank
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)] if sorted_values else None


async def open_loop(port, rate, seconds, connections):
    """Request i is due at start + i/rate; it takes an idle kept-alive connection, or opens one while fewer than
    `connections` are open, or waits for one; its latency runs from its due time to the end of its response."""
    loop = asyncio.get_running_loop()
    idle, opened, latencies, failures, tasks = asyncio.Queue(), [0], [], {}, set()
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def one(due):
        conn = None
        try:
            if idle.empty() and opened[0] < connections:
                opened[0] += 1
                try:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                except BaseException:
                    opened[0] -= 1
                    raise
            else:
                conn = await idle.get()
            reader, writer = conn
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
            await reader.readexactly(int(length.group(1)) if length else 0)
            status = int(head.split(b" ", 2)[1])
            if re.search(rb"\r\nconnection:\s*close", head, re.I):
                writer.close()
                opened[0] -= 1
            else:
                idle.put_nowait(conn)
            if status != 200:
                failures[f"status {status}"] = failures.get(f"status {status}", 0) + 1
            else:
                latencies.append(loop.time() - due)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
            failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
            if conn:
                conn[1].close()
                opened[0] -= 1

    start = loop.time() + 0.05
    n = int(seconds * rate)
    for i in range(n):
        due = start + i / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        task = loop.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, late = await asyncio.wait(set(tasks), timeout=30)
        for task in late:
            task.cancel()
        if late:
            failures["unanswered after 30 s"] = len(late)
    latencies.sort()
    ms = lambda v: None if v is None else round(v * 1e3, 3)
    failed = sum(failures.values())
    return {"requests": n, "ok": len(latencies), "failed": failed, "failures": failures,
            "p50_ms": ms(quantile(latencies, 0.5)), "p99_ms": ms(quantile(latencies, 0.99)),
            "p999_ms": ms(quantile(latencies, 0.999)), "max_ms": ms(latencies[-1] if latencies else None)}


# ---- the benchmark
class Bench:
    def __init__(self, args, folder):
        self.args, self.folder = args, folder
        self.b1, self.b2, self.port, self.admin = free_port(), free_port(), free_port(), free_port()
        self.path, self.log = os.path.join(folder, "switchyard.toml"), os.path.join(folder, "switchyard.log")
        self.texts = [sy_config(args, self.port, self.admin, self.b1, self.b2, moved) for moved in (False, True)]
        self.current = 0  # which variant the file holds
        self.posts = 0
        self.bad_answers = []

    def validate(self):
        took = []
        for i, text in enumerate(self.texts):
            check = os.path.join(self.folder, f"check-{i}.toml")
            with open(check, "w") as f:
                f.write(text)
            t0 = time.perf_counter()
            out = subprocess.run([self.args.binary, "validate", "--config", check], capture_output=True, text=True)
            took.append(time.perf_counter() - t0)
            if out.returncode:
                sys.exit(f"switchyard validate refused the config ({check}):\n{out.stderr.strip()}{out.stdout.strip()}")
        return took

    def start_nginx(self):
        servers = "".join(NGINX_SERVER.format(port=p) for p in (self.b1, self.b2))
        conf = os.path.join(self.folder, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX.format(dir=self.folder, servers=servers))
        self.nginx = spawn(LOAD_CPU + ["nginx", "-p", self.folder + "/", "-e", os.path.join(self.folder, "nginx.early"),
                                       "-c", conf], os.path.join(self.folder, "nginx.log"))
        for p in (self.b1, self.b2):
            end = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", p), 0.2).close()
                    break
                except OSError:
                    if self.nginx.poll() is not None or time.monotonic() > end:
                        sys.exit(f"nginx did not start; see {self.folder}/nginx.err")
                    time.sleep(0.05)

    def start_switchyard(self):
        write_atomic(self.path, self.texts[0])
        self.current = 0
        t0 = time.perf_counter()
        self.proc = spawn(PROXY_CPU + [self.args.binary, "--log-level", "info", "run", "--config", self.path,
                                       "--workers", "1"], self.log)
        wait_ready(self.proc, self.admin, self.port, self.log)
        return time.perf_counter() - t0

    def reload(self, change):
        """One POST /api/reload, after rewriting the file with the other variant when `change`; its wall time."""
        expect = self.args.changed if change else 0
        if change:
            self.current ^= 1
            write_atomic(self.path, self.texts[self.current])
        status, body, took = http("POST", f"http://127.0.0.1:{self.admin}/api/reload")
        self.posts += 1
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {"raw": body[:200].decode(errors="replace")}
        if (status != 200 or answer.get("status") != "ok" or len(answer.get("backends_added", ())) != expect
                or len(answer.get("backends_removed", ())) != expect):
            self.bad_answers.append({"status": status, "expected_added_removed": expect,
                                     "answer": {k: (v if not isinstance(v, list) or len(v) < 8 else f"{len(v)} items")
                                                for k, v in answer.items()}})
        return took

    def reloads_metric(self):
        _, body, _ = http("GET", f"http://127.0.0.1:{self.admin}/metrics")
        counts = {}
        for m in re.finditer(r'^switchyard_config_reloads_total\{result="(\w+)"\} (\d+)', body.decode(), re.M):
            counts[m.group(1)] = int(m.group(2))
        return counts

    def apply_stage(self):
        args, pid = self.args, self.proc.pid
        rtt = sorted(http("GET", f"http://127.0.0.1:{self.admin}/healthz")[2] for _ in range(20))
        out = {"admin_round_trip_ms": round(1e3 * statistics.median(rtt), 2)}
        for kind, change in (("changed", True), ("unchanged", False)):
            times, cpu0, t0 = [], cpu_seconds(pid), time.perf_counter()
            for _ in range(args.reloads):
                times.append(self.reload(change))
                time.sleep(args.settle)  # past the watcher's 150 ms debounce: its re-read finds nothing new
            cpu = cpu_seconds(pid) - cpu0
            out[kind] = {"ms": [round(1e3 * t, 2) for t in times], "median_ms": round(1e3 * statistics.median(times), 2),
                         "max_ms": round(1e3 * max(times), 2),
                         "cpu_ms_per_reload": round(1e3 * cpu / args.reloads, 1),
                         "cpu_share_of_wall": round(cpu / (time.perf_counter() - t0), 3)}
            print(f"  {kind:9} reloads: median {out[kind]['median_ms']} ms, max {out[kind]['max_ms']} ms "
                  f"({', '.join(f'{t:.0f}' for t in out[kind]['ms'])}); switchyard CPU "
                  f"{out[kind]['cpu_ms_per_reload']} ms per reload", flush=True)
        out["rss_mib_after"] = round(rss_mib(pid), 1)
        return out

    def ours(self):
        """CPU seconds used so far by what this run started (the load generator once it was waited for)."""
        children = os.times()
        return (time.process_time() + children.children_user + children.children_system
                + tree_cpu_seconds(self.proc.pid) + tree_cpu_seconds(self.nginx.pid))

    def phase(self, kind):
        args = self.args
        out_path = os.path.join(self.folder, f"load-{kind}.json")
        busy0, ours0 = busy_cpu_seconds(), self.ours()
        with open(out_path, "wb") as out:
            loader = spawn(loader_argv(args, self.port), os.path.join(self.folder, "load.log"), stdout=out)
        t0 = time.monotonic()
        times = []
        if kind == "during":
            due, end = t0 + 0.25, t0 + args.seconds - 0.5
            while due <= end:  # bounded: `due` advances by --interval each turn
                time.sleep(max(0.0, due - time.monotonic()))
                times.append(self.reload(True))
                due += args.interval
        try:
            loader.wait(args.seconds + 60)
        finally:
            stop(loader)
        # Everyone else's CPU over the phase (busy CPU time not ours), in % of one CPU: a sign the run was disturbed.
        others = max(0.0, busy_cpu_seconds() - busy0 - (self.ours() - ours0)) / (time.monotonic() - t0)
        text = open(out_path).read()
        try:
            r = parse_oha(text) if args.oha else json.loads(text)
        except (ValueError, KeyError):
            sys.exit(f"the load generator's output is not what was expected:\n{text[:2000]}\n"
                     f"{open(os.path.join(self.folder, 'load.log')).read()[-2000:]}")
        r["achieved_rps"] = round(r["requests"] / args.seconds, 1)
        r["others_cpu_percent"] = round(100 * others)
        r["reloads"] = len(times)
        if times:
            r["reload_median_ms"] = round(1e3 * statistics.median(times), 2)
            r["reload_max_ms"] = round(1e3 * max(times), 2)
        return r

    def latency_stage(self):
        args = self.args
        warm = argparse.Namespace(**{**vars(args), "seconds": 2})
        with open(os.path.join(self.folder, "warm.json"), "wb") as out:
            w = spawn(loader_argv(warm, self.port), os.path.join(self.folder, "load.log"), stdout=out)
        try:
            w.wait(60)
        finally:
            stop(w)
        rounds = []
        for r in range(args.rounds):
            order = ("outside", "during") if r % 2 == 0 else ("during", "outside")
            res = {}
            for kind in order:
                time.sleep(1.0)
                res[kind] = self.phase(kind)
                x = res[kind]
                extra = (f"; {x['reloads']} reloads, median {x.get('reload_median_ms')} ms, max "
                         f"{x.get('reload_max_ms')} ms") if kind == "during" else ""
                print(f"  round {r + 1} {kind:7}: p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms, max {x['max_ms']} ms; "
                      f"{x['requests']} requests ({x['achieved_rps']}/s), {x['failed']} failed"
                      f"{' ' + json.dumps(x['failures']) if x['failed'] else ''}{extra}; others' CPU "
                      f"{x['others_cpu_percent']}%", flush=True)
            res["p99_ratio"] = round(res["during"]["p99_ms"] / res["outside"]["p99_ms"], 3) \
                if res["during"]["p99_ms"] and res["outside"]["p99_ms"] else None
            rounds.append(res)
        return rounds

    def log_summary(self):
        text = open(self.log, errors="replace").read()
        lines = text.splitlines()
        reloaded = sum("config reloaded" in line for line in lines)
        loud = [line for line in lines if re.search(r"\b(WARN|ERROR)\b", line)]
        return {"config_reloaded_lines": reloaded, "warn_error_lines": len(loud), "first_warn_error": loud[:5]}


def med(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def report(args, res):
    ap, rounds = res["apply"], res["latency"]
    ph = {k: {f: med([r[k][f] for r in rounds]) for f in ("p50_ms", "p99_ms", "p999_ms", "max_ms", "achieved_rps")}
          for k in ("outside", "during")}
    failed = {k: sum(r[k]["failed"] for r in rounds) for k in ("outside", "during")}
    requests = {k: sum(r[k]["requests"] for r in rounds) for k in ("outside", "during")}
    ratio = med([r["p99_ratio"] for r in rounds])
    during_reloads = [t for r in rounds for t in [r["during"].get("reload_median_ms")] if t is not None]
    print(f"\n## Reload with {args.backends} backends ({len(filler_pools(args.backends, args.pool_size)) + 1} pools), "
          f"--workers 1\n")
    print("| reload (no load) | median ms | max ms | switchyard CPU ms / reload |")
    print("|---|---:|---:|---:|")
    for kind in ("changed", "unchanged"):
        k = ap[kind]
        label = f"{args.changed} added + {args.changed} removed" if kind == "changed" else "nothing changed"
        print(f"| {label} | {k['median_ms']} | {k['max_ms']} | {k['cpu_ms_per_reload']} |")
    print(f"\n(admin round trip, GET /healthz: {ap['admin_round_trip_ms']} ms; startup to ready "
          f"{res['startup_ms']} ms; validate {res['validate_ms']} ms per run; RSS {ap['rss_mib_after']} MiB)\n")
    print(f"| phase ({args.rate} req/s, {args.seconds} s, median of {len(rounds)} rounds) | p50 ms | p99 ms | "
          f"p99.9 ms | max ms | req/s | failed / requests |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k in ("outside", "during"):
        print(f"| {k} | {ph[k]['p50_ms']} | {ph[k]['p99_ms']} | {ph[k]['p999_ms']} | {ph[k]['max_ms']} | "
              f"{ph[k]['achieved_rps']} | {failed[k]} / {requests[k]} |")
    others = [r[k]["others_cpu_percent"] for r in rounds for k in ("outside", "during")]
    print(f"\nCPUs busy before the run {res['busy_before_percent']} %, after it {res['busy_after_percent']} %; "
          f"other processes' CPU per phase (% of one CPU): {', '.join(map(str, others))}")
    if max(others) > args.quiet:
        print(f"WARNING: other processes used up to {max(others)}% of a CPU during a phase: the machine was not quiet, "
              f"latencies are not trustworthy (run again on a quiet machine)")
    print(f"p99 during / outside per round: {', '.join(str(r['p99_ratio']) for r in rounds)}; median {ratio}")
    print(f"reloads under load: {sum(r['during']['reloads'] for r in rounds)}, median of the rounds' medians "
          f"{med(during_reloads)} ms, max {max((r['during'].get('reload_max_ms') or 0) for r in rounds)} ms")
    m = res["metrics"]
    print(f"switchyard_config_reloads_total: {m['after']} (before the reloads {m['before']}; {m['posts']} POSTs); "
          f"log: {res['log']['config_reloaded_lines']} 'config reloaded' lines, "
          f"{res['log']['warn_error_lines']} WARN/ERROR lines")
    for line in res["log"]["first_warn_error"]:
        print(f"  log: {line[:300]}")
    for bad in res["bad_answers"][:5]:
        print(f"  unexpected reload answer: {json.dumps(bad)[:300]}")
    verdict = lambda ok: "PASS" if ok else "FAIL"
    aim = lambda ok: "met" if ok else "not met"
    a = ap["changed"]["median_ms"]
    counted = m["after"].get("success", 0) - m["before"].get("success", 0) == m["posts"] and \
        m["after"].get("failure", 0) == m["before"].get("failure", 0)
    print()
    print(f"{verdict(a <= 300)} apply time {a} ms (median; max {ap['changed']['max_ms']} ms) <= 300 ms "
          f"(aim <= 100 ms: {aim(a <= 100)})")
    print(f"{verdict(ratio is not None and ratio <= 1.2)} p99 during reloads / outside = {ratio}x <= 1.2x "
          f"(aim <= 1.05x: {aim(ratio is not None and ratio <= 1.05)})")
    print(f"{verdict(failed['during'] == 0 and failed['outside'] == 0)} no failed or non-200 request "
          f"({failed['during']} during reloads, {failed['outside']} outside)")
    print(f"{verdict(counted and not res['bad_answers'])} every POST /api/reload answered ok with the expected "
          f"backends added/removed and counted as a success ({len(res['bad_answers'])} unexpected answers)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "switchyard"),
                    help="the switchyard to measure")
    ap.add_argument("--backends", type=int, default=10000, help="backends in all, the two NGINX ones included")
    ap.add_argument("--pool-size", type=int, default=100, help="backends per filler pool")
    ap.add_argument("--changed", type=int, default=5, help="backends added and removed by each changing reload")
    ap.add_argument("--reloads", type=int, default=10, help="reloads of each kind in the apply stage")
    ap.add_argument("--settle", type=float, default=0.4, help="seconds between two reloads of the apply stage")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the two latency phases")
    ap.add_argument("--seconds", type=int, default=10, help="seconds per latency phase")
    ap.add_argument("--rate", type=int, default=5000, help="offered requests per second")
    ap.add_argument("--connections", type=int, default=50, help="most connections the load generator opens")
    ap.add_argument("--interval", type=float, default=0.75, help="seconds between reloads in the `during` phase")
    ap.add_argument("--loader", choices=("auto", "oha", "asyncio"), default="auto",
                    help="auto: oha when found, else the asyncio open loop")
    ap.add_argument("--quiet", type=int, default=15, help="warn when a CPU is busier than this %% before the run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    ap.add_argument("--json", help="also write every number to this file")
    args = ap.parse_args()
    if not os.access(args.binary, os.X_OK):
        ap.error(f"no switchyard binary at {args.binary} (cargo build --release, or --binary)")
    pools = math.ceil((args.backends - 2) / max(1, args.pool_size))
    if args.backends < 3 or args.pool_size < 1 or not 0 <= args.changed <= pools or args.backends > 39000 \
            or args.changed > 999 or min(args.reloads, args.rounds, args.seconds, args.rate) < 1 or args.interval <= 0:
        ap.error("need 3 <= --backends <= 39000, --pool-size >= 1, 0 <= --changed <= min(filler pools, 999), "
                 "--reloads, --rounds, --seconds, --rate >= 1 and --interval > 0")
    args.oha = None if args.loader == "asyncio" else find_oha()
    if args.loader == "oha" and not args.oha:
        ap.error(f"no oha in $OHA, on PATH or at {OHA_CACHE}")
    ensure_tools()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM as Ctrl-C: the finally below runs
    if TWO_CPUS:
        os.sched_setaffinity(0, {1})  # this script (its POSTs) beside the load generator, off switchyard's CPU
    folder = tempfile.mkdtemp(prefix="switchyard-reload-")
    bench = Bench(args, folder)
    res = {"settings": {k: v for k, v in vars(args).items()}}
    ok = False
    try:
        res["busy_before_percent"] = busy_percent()
        if max(res["busy_before_percent"]) > args.quiet:
            print(f"# warning: the machine is not quiet (CPUs busy {res['busy_before_percent']} % over 1 s before "
                  f"the run): latencies will be noisy", flush=True)
        took = bench.validate()
        res["validate_ms"] = round(1e3 * statistics.median(took), 1)
        size = len(bench.texts[0])
        print(f"switchyard {args.binary} --workers 1 (CPU 0); {args.backends} backends in {pools + 1} pools, config "
              f"{size / 1024:.0f} KiB, validate {res['validate_ms']} ms; load "
              f"{'oha ' + args.oha if args.oha else 'asyncio open loop (this script)'} at {args.rate} req/s; "
              f"files in {folder}", flush=True)
        bench.start_nginx()
        res["startup_ms"] = round(1e3 * bench.start_switchyard(), 1)
        status, body, _ = http("GET", f"http://127.0.0.1:{bench.port}/", 5)
        if status != 200 or body != b"ok\n":
            sys.exit(f"GET / through switchyard answered {status} {body[:100]!r}; log {bench.log}")
        res["metrics"] = {"before": bench.reloads_metric()}
        print(f"-- apply (no load; ready after {res['startup_ms']} ms, RSS {rss_mib(bench.proc.pid):.0f} MiB)",
              flush=True)
        res["apply"] = bench.apply_stage()
        print(f"-- latency: {args.rounds} rounds of outside / during, {args.seconds} s each", flush=True)
        res["latency"] = bench.latency_stage()
        time.sleep(0.5)  # the watcher's last re-read
        res["metrics"].update(after=bench.reloads_metric(), posts=bench.posts)
        res["rss_mib_end"] = round(rss_mib(bench.proc.pid), 1)
        res["bad_answers"] = bench.bad_answers
        ok = True
    finally:
        for proc in list(STARTED)[::-1]:
            stop(proc, signal.SIGQUIT if proc is getattr(bench, "nginx", None) else signal.SIGTERM)
        if ok:
            res["log"] = bench.log_summary()
    res["busy_after_percent"] = busy_percent()
    report(args, res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        print(f"\nnumbers in {args.json}")
    if args.keep:
        print(f"files kept in {folder}")
    else:
        shutil.rmtree(folder)  # kept when something failed: the configs and switchyard's log are there


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["_load"]:
            port, rate, seconds, connections = (int(x) for x in sys.argv[2:6])
            print(json.dumps(asyncio.run(open_loop(port, rate, seconds, connections))))
        else:
            main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every process started was stopped")
