#!/usr/bin/env bash
# Memory per idle session: ringpost's RSS before and after N idle sessions (each past its
# greeting), and a new session's greeting + EHLO + QUIT time meanwhile. Loopback only.
# Usage: benches/idle-sessions.sh [RINGPOST_BINARY]   Env: N (5000)
set -u
RP=$(realpath "${1:-./target/release/ringpost}")
N=${N:-5000} PORT=3125
TMP=$(mktemp -d /tmp/ringpost-idle.XXXXXX)
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$TMP"' EXIT
ulimit -n $((N * 2 + 1024)) 2>/dev/null
printf '[[listen]]\naddr = "127.0.0.1:%s"\n[queue]\ndir = "%s/q"\n[delivery]\ndns = ["127.0.0.1:9"]\n[server]\nmax_connections_per_ip = 1000000\n' "$PORT" "$TMP" >"$TMP/c.toml"
"$RP" serve --config "$TMP/c.toml" >/dev/null 2>&1 & PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
python3 - "$PID" "$N" "$PORT" <<'PY'
import socket, sys, time
pid, n, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])
base = rss()
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for s in socks:
    s.settimeout(10)
    s.recv(100)
time.sleep(1.0)
after = rss()
print(f"RSS {base} KiB -> {after} KiB with {n} idle sessions: {(after - base) / n:.1f} KiB per session")
t = time.time()
c = socket.create_connection(("127.0.0.1", port))
c.recv(100); c.sendall(b"EHLO x\r\n"); c.recv(1000); c.sendall(b"QUIT\r\n"); c.recv(100)
print(f"a new session's greeting + EHLO + QUIT meanwhile: {1000 * (time.time() - t):.1f} ms")
PY
