#!/usr/bin/env python3
"""The release build we measure: profile-guided (PGO) and then laid out by BOLT from a profile of the same
training. `python3 benches/pgo.py` leaves it at target/pgo/switchyard (about 14 minutes on 2 cores).

Usage: python3 benches/pgo.py [--train-seconds 30] [--no-bolt] [--keep-profiles]

Same code and features as `cargo build --release`, built with Cargo.toml's `dist` profile (the release profile with
one codegen unit and fat LTO, which pay only with a profile), and the compiler gets to see which paths are hot:
  1. an instrumented build (RUSTFLAGS=-Cprofile-generate) into target/pgo-gen;
  2. a training run (below); SIGTERM drains the proxy and it writes its profile as it exits;
  3. `llvm-profdata merge`, and the build that uses the profile (-Cprofile-use, linked with --emit-relocs so
     that BOLT may move functions) into target/pgo;
  4. unless --no-bolt: `llvm-bolt -instrument` on that binary, the same training run again, and `llvm-bolt` with
     the profile it wrote (blocks and functions reordered, cold code split off).

The training run is the instrumented `switchyard demo` (--workers 1: the proxy on config/example.toml with a TLS
listener added, and its three demo upstreams in the same process, one of which fails 10 s in every 30), loaded in
turn on 127.0.0.1 with HTTP/1.1 kept alive and one request per connection (wrk), HTTP/1.1 and HTTP/2 over TLS and
HTTP/2 with prior knowledge (h2load), request bodies, and the admin endpoints. It is not a benchmark's setup: the
upstreams are switchyard's own, not the benchmarks' NGINX; the config has two pools, health checks, breakers,
retries and peak_ewma; and one upstream fails part of the time.

Needs llvm-profdata and llvm-bolt of the LLVM that rustc uses (`rustc -vV`): rustup's llvm-tools component, or
Debian's llvm-N and bolt-N packages (installed with apt-get when missing); and wrk, h2load and openssl
(likewise).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P, T, A = 18180, 18183, 18189


def llvm_tool(tool, package):
    """`tool` (llvm-profdata, llvm-bolt) of the LLVM major version rustc uses, from rustup's llvm-tools component
    or Debian's `package`-N (installed when missing)."""
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    major = re.search(r"LLVM version: (\d+)", out).group(1)
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True,
                             check=True).stdout.strip()
    debian = f"/usr/lib/llvm-{major}/bin/{tool}"
    candidates = [os.path.join(root, tool) for root, _, files in os.walk(sysroot) if tool in files] + [debian]
    for _ in range(2):
        for c in candidates:
            if os.access(c, os.X_OK):
                return c
        procs.ensure_tools({f"{tool}-{major}": f"{package}-{major}"})
    raise SystemExit(f"no {tool} for LLVM {major}: install rustup's llvm-tools or Debian's {package}-{major}")


def cargo_build(target_dir, rustflags):
    env = dict(os.environ, RUSTFLAGS=rustflags)
    print(f"# cargo build --profile dist --target-dir {target_dir}  (RUSTFLAGS={rustflags})", file=sys.stderr)
    subprocess.run(["cargo", "build", "--profile", "dist", "--locked", "--target-dir", target_dir], cwd=ROOT,
                   env=env, check=True)
    return os.path.join(target_dir, "dist", "switchyard")


def write_config(d):
    """config/example.toml (the demo's: two pools, health checks, breakers, retries, slow start, peak_ewma) on
    ports of its own, with a TLS listener added."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"],
                   check=True, capture_output=True)
    text = open(os.path.join(ROOT, "config", "example.toml")).read()
    text = text.replace('"127.0.0.1:8080"', f'"127.0.0.1:{P}"').replace('"127.0.0.1:9901"', f'"127.0.0.1:{A}"')
    text += f"""
[[listeners]]
address = "127.0.0.1:{T}"
[listeners.tls]
certificates = [{{ cert = "{d}/cert.pem", key = "{d}/key.pem" }}]
"""
    open(f"{d}/train.toml", "w").write(text)
    open(f"{d}/body", "w").write("y" * 2048)


def run(argv, seconds):
    """Runs one load generator on CPU 1, bounded by its own duration and by a timeout."""
    subprocess.run(["taskset", "-c", "1"] + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=seconds + 30, check=False)


def train(binary, data_dir, seconds):
    """`switchyard demo` (the proxy and its three demo upstreams in one process) under each protocol in turn."""
    d = tempfile.mkdtemp(prefix="switchyard-pgo-")
    write_config(d)
    env = dict(os.environ, LLVM_PROFILE_FILE=os.path.join(data_dir, "switchyard-%p-%m.profraw"))
    sy = subprocess.Popen(["taskset", "-c", "0", binary, "demo", "--config", f"{d}/train.toml", "--workers", "1",
                           "--log-level", "warn"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in (P, T, A):
            procs.wait_port(port)
        s = max(1, seconds // 10)
        plain, tls = f"http://127.0.0.1:{P}", f"https://127.0.0.1:{T}"
        run(["wrk", "-t1", "-c50", f"-d{2 * s}s", plain + "/"], 2 * s)
        run(["wrk", "-t1", "-c20", f"-d{s}s", plain + "/api/items?page=2"], s)
        run(["wrk", "-t1", "-c20", f"-d{s}s", "-H", "Connection: close", plain + "/"], s)
        run(["wrk", "-t1", "-c20", f"-d{s}s", tls + "/"], s)
        run(["h2load", "-c50", "-m10", "-D", str(2 * s), tls + "/"], 2 * s)
        run(["h2load", "-c10", "-m10", "-D", str(s), plain + "/api/x"], s)
        run(["h2load", "-c10", "-m1", "-D", str(s), "-d", f"{d}/body", tls + "/api/upload"], s)
        run(["h2load", "--h1", "-c10", "-D", str(s), "-d", f"{d}/body", plain + "/"], s)
        run(["h2load", "--h1", "-n200", "-c2", f"http://127.0.0.1:{A}/metrics"], 5)
        run(["h2load", "--h1", "-n200", "-c2", f"http://127.0.0.1:{A}/api/pools"], 5)
    finally:
        procs.stop(sy, 30)
        shutil.rmtree(d, ignore_errors=True)
    if sy.returncode != 0:
        raise SystemExit(f"the instrumented proxy exited with {sy.returncode}: no profile")


def bolt(binary, bolt_tool, seconds, keep):
    """BOLT's instrumentation of `binary`, the training run on it, and the reordered binary from its profile."""
    work = tempfile.mkdtemp(prefix="switchyard-bolt-")
    fdata = os.path.join(work, "bolt.fdata")
    instrumented = os.path.join(work, "switchyard.inst")
    subprocess.run([bolt_tool, binary, "-instrument", f"-instrumentation-file={fdata}", "-o", instrumented],
                   check=True, stdout=subprocess.DEVNULL)
    train(instrumented, work, seconds)
    out = os.path.join(os.path.dirname(os.path.dirname(binary)), "switchyard")
    subprocess.run([bolt_tool, binary, "-o", out, f"-data={fdata}", "-reorder-blocks=ext-tsp",
                    "-reorder-functions=cdsort", "-split-functions", "-split-all-cold", "-split-eh"],
                   check=True, stdout=subprocess.DEVNULL)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=int, default=30)
    ap.add_argument("--no-bolt", action="store_true", help="stop after the PGO build (target/pgo/switchyard)")
    ap.add_argument("--keep-profiles", action="store_true", help="keep the raw and merged profiles")
    args = ap.parse_args()
    procs.ensure_tools({"wrk": "wrk", "h2load": "nghttp2-client", "openssl": "openssl", "taskset": "util-linux"})
    profdata = llvm_tool("llvm-profdata", "llvm")
    bolt_tool = None if args.no_bolt else llvm_tool("llvm-bolt", "bolt")
    data_dir = os.path.join(ROOT, "target", "pgo-data")
    shutil.rmtree(data_dir, ignore_errors=True)
    os.makedirs(data_dir)
    gen = cargo_build(os.path.join(ROOT, "target", "pgo-gen"), f"-Cprofile-generate={data_dir}")
    train(gen, data_dir, args.train_seconds)
    merged = os.path.join(data_dir, "merged.profdata")
    subprocess.run([profdata, "merge", "-o", merged, data_dir], check=True)
    built = cargo_build(os.path.join(ROOT, "target", "pgo"),
                        f"-Cprofile-use={merged} -Clink-arg=-Wl,--emit-relocs")
    if bolt_tool:
        out = bolt(built, bolt_tool, args.train_seconds, args.keep_profiles)
    else:
        out = os.path.join(ROOT, "target", "pgo", "switchyard")
        shutil.copy2(built, out)
    if not args.keep_profiles:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(out)


if __name__ == "__main__":
    main()
