"""Helpers the Python benches share: missing tools installed with apt-get, a process's CPU time and RSS from /proc,
waiting for a port, stopping a proxy (SIGTERM, then SIGKILL), and headless
Chromium tabs kept open on a page (each in a session of its own, so it can be stopped with all its children)."""
import os, shutil, signal, socket, subprocess, sys, time


# HAProxy as the benches' yardstick: one thread, round-robin over two upstreams with kept-alive (reused) upstream
# connections, configured as ../shared/bench/compare.sh configures it. Placeholders: {p} (its port), {b1}, {b2}.
HAPROXY_1 = """global
    nbthread 1
    maxconn 8192
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend fe
    bind 127.0.0.1:{p}
    default_backend be
backend be
    balance roundrobin
    server s1 127.0.0.1:{b1}
    server s2 127.0.0.1:{b2}
"""


def ensure_tools(tools):
    """Installs with apt-get the Debian packages of the `tools` ({command: package}) not on PATH."""
    missing = sorted({pkg for tool, pkg in tools.items() if not shutil.which(tool)})
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        print(f"# installing: {' '.join(missing)}", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + missing, check=True, env=env,
                       stdout=subprocess.DEVNULL)


def self_signed(tmp):
    """A new self-signed P-256 certificate for bench.test in `tmp`: (cert, key, pem), pem being both in one file
    (HAProxy's `crt`)."""
    cert, key, pem = (os.path.join(tmp, n) for n in ("cert.pem", "key.pem", "haproxy.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "30", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return cert, key, pem


def cpu(pid):
    """User + system CPU seconds of `pid`."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_port(p):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", p), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {p} not up")


def stop(p, timeout):
    """Stops process `p` with SIGTERM (a proxy drains and exits), and SIGKILL if it is still there after `timeout`
    seconds."""
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def open_browsers(n, url, profile_dir):
    """`n` headless Chromium tabs on `url`, on CPU 1."""
    return [subprocess.Popen(
        ["taskset", "-c", "1", "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
         f"--user-data-dir={profile_dir}/chromium-{i}", "--remote-debugging-port=0", "--no-first-run", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True) for i in range(n)]


def close_browsers(browsers):
    for b in browsers:
        os.killpg(b.pid, signal.SIGKILL)
        b.wait()
