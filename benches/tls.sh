#!/usr/bin/env bash
# STARTTLS cost: accept rate over 50 persistent sessions, plain vs STARTTLS; and sessions per
# ringpost CPU-second with one message per connection (shards = 1), plain vs STARTTLS.
# A self-signed ECDSA P-256 certificate is made with openssl. Loopback only.
# Usage: benches/tls.sh     (builds release binaries first)
set -u
cd "$(dirname "$0")/.."
cargo build --release --workspace >/dev/null 2>&1 || { echo "build failed"; exit 2; }
RP=$PWD/target/release/ringpost LG=$PWD/target/release/loadgen PORT=3025
TMP=$(mktemp -d /tmp/ringpost-tls.XXXXXX)
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$TMP"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TMP/key.pem" -out "$TMP/cert.pem" \
  -days 2 -subj /CN=relay.test -addext subjectAltName=DNS:relay.test 2>/dev/null || { echo "openssl needed"; exit 2; }
config() {
  printf '[server]\nhostname = "relay.test"\nmax_connections_per_ip = 100000\n[[listen]]\naddr = "127.0.0.1:%s"\n[tls]\ncert = "%s/cert.pem"\nkey = "%s/key.pem"\n[policy]\nrelay_domains = ["sink.test"]\n[queue]\ndir = "%s/q-%s"\n[delivery]\ndns = ["127.0.0.1:9"]\n[tuning]\nshards = %s\n' \
    "$PORT" "$TMP" "$TMP" "$TMP" "$1" "$1" >"$TMP/c.toml"
}
start() { config "$1"; "$RP" serve --config "$TMP/c.toml" >/dev/null 2>&1 & PID=$!; for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.1; done; }
stop() { kill $PID; wait $PID 2>/dev/null; }
ticks() { awk '{print $14+$15}' /proc/$PID/stat; }
start 0
for flag in "" --starttls; do
  r=$($LG send --target 127.0.0.1:$PORT --connections 50 --messages 20000 $flag --seed 3 2>/dev/null | grep throughput)
  echo "50 persistent sessions ${flag:-plain}: $r"
done
stop
start 1
for flag in "" --starttls; do
  c0=$(ticks)
  $LG send --target 127.0.0.1:$PORT --connections 20 --messages 4000 --one-message-per-connection $flag --seed 4 >/dev/null 2>&1
  c1=$(ticks)
  echo "one message per connection ${flag:-plain}: $(echo "$c0 $c1" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f sessions per ringpost CPU-second", 4000 / (($2 - $1) / hz)}')"
done
stop
