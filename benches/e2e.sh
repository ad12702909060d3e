#!/usr/bin/env bash
# End-to-end benchmark: two NGINX upstreams and switchyard on 127.0.0.1, driven by wrk (keep-alive), then a
# 1 GiB upload and a 1 GiB download through the proxy, then N idle keep-alive client connections. Prints req/s,
# p50/p99 and switchyard's RSS (idle, under load, peak across the large transfers, and per idle connection).
# Bounded: every step has a fixed duration or size.
#
# Usage (from the project root): benches/e2e.sh [--workers N] [--duration S] [--connections C] [--idle N]
#                                 [--binary PATH]   (default: cargo build --release, then target/release/switchyard)
# Needs nginx, wrk and curl (Debian: apt-get install -y nginx wrk curl). Everything it starts, it stops (by PID).
set -euo pipefail
workers=1 duration=10 connections=50 idle=10000 binary=
while [ $# -gt 0 ]; do
    case $1 in
        --workers) workers=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --idle) idle=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
for tool in nginx wrk curl; do
    command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "$tool is needed" >&2; exit 2; }
done
PATH=$PATH:/usr/sbin

if [ -z "$binary" ]; then
    cargo build --release --quiet
    binary=target/release/switchyard
fi
work=$(mktemp -d -t switchyard-e2e.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
b1=$(port) b2=$(port) proxy=$(port) admin=$(port)
truncate -s 1G "$work/big"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_max_body_size 2g;
  client_body_temp_path $work;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$b1; location = /big { root $work; } location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$b2; location = /big { root $work; } location / { return 200 "ok\n"; } }
}
CONF
nginx -c "$work/nginx.conf" & pids+=($!)
cat > "$work/switchyard.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$proxy"
[admin]
address = "127.0.0.1:$admin"
[limits]
max_connections = $((idle + 1000))
[[routes]]
pool = "bench"
[pools.bench]
backends = [{ address = "127.0.0.1:$b1" }, { address = "127.0.0.1:$b2" }]
CONF
"$binary" run --config "$work/switchyard.toml" --workers "$workers" 2>"$work/switchyard.log" &
sy=$!; pids+=($sy)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && break; sleep 0.1; done
rss() { awk "/^$1:/ {print \$2}" /proc/$sy/status; }

echo "switchyard --workers $workers; idle RSS $(rss VmRSS) KiB"
wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$proxy/" >/dev/null
wrk -t1 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:$proxy/" >"$work/wrk.txt"
echo "load: wrk -t1 -c$connections -d${duration}s"
awk '/Requests\/sec/ {print "  req/s " $2} / 50%/ {print "  p50 " $2} / 99%/ {print "  p99 " $2}' "$work/wrk.txt"
echo "  RSS under load $(rss VmRSS) KiB"

head -c 1073741824 /dev/zero | curl -sf -o /dev/null -T - -X PUT "http://127.0.0.1:$proxy/upload" || echo "  upload failed"
curl -sf -o /dev/null "http://127.0.0.1:$proxy/big" || echo "  download failed"
echo "1 GiB upload + 1 GiB download: peak RSS $(rss VmHWM) KiB"

# Idle keep-alive connections: each sends one request, reads the answer, and stays open.
python3 - "$proxy" "$sy" "$idle" <<'PY'
import resource, socket, sys, time
port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if n + 100 > hard:
    n = hard - 100
    print(f"  (the open-file limit allows {n} connections)")
def rss():
    return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
before = rss()
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    socks.append(s)
ok = sum(1 for s in socks if s.recv(4096).startswith(b"HTTP/1.1 200"))
time.sleep(1)
after = rss()
print(f"{n} idle keep-alive connections ({ok} answered 200): RSS {before} -> {after} KiB, "
      f"{(after - before) / n:.1f} KiB per connection")
PY
