#!/usr/bin/env bash
# Crash loop: loadgen send -> ringpost -> loadgen sink under load, ringpost SIGKILLed at
# random moments KILLS times and restarted each time. At the end every message the sender
# saw acknowledged must have reached the sink intact; duplicates (the crash windows) are
# counted and reported. Loopback only; bounded by KILLS and RATE x DURATION.
#
# Usage: benches/crash-loop.sh        Env: KILLS (20) RATE (1000 msgs/s) SEED (1)
set -u
cd "$(dirname "$0")/.."
KILLS=${KILLS:-20} RATE=${RATE:-1000} SEED=${SEED:-1}
cargo build --release --workspace >/dev/null 2>&1 || { echo "build failed"; exit 2; }
RP=$PWD/target/release/ringpost LG=$PWD/target/release/loadgen
TMP=$(mktemp -d /tmp/ringpost-crash-loop.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$TMP"; }
trap cleanup EXIT
SINK=2827 DNS=2853 RPP=2825
up() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }
$LG dns --listen 127.0.0.1:$DNS --mx sink.test=mx.sink.test:10 --a mx.sink.test=127.0.0.1 >/dev/null 2>&1 & PIDS+=($!)
$LG sink --listen 127.0.0.1:$SINK --no-tls --stats "$TMP/sink.json" >/dev/null 2>&1 & PIDS+=($!)
cat >"$TMP/rp.toml" <<CF
[server]
hostname = "relay.test"
max_connections_per_ip = 100000
[[listen]]
addr = "127.0.0.1:$RPP"
[policy]
relay_domains = ["sink.test"]
[queue]
dir = "$TMP/queue"
[delivery]
dns = ["127.0.0.1:$DNS"]
port = $SINK
retry_initial = "1s"
retry_max = "2s"
CF
start() { $RP serve --config "$TMP/rp.toml" >>"$TMP/rp.out" 2>>"$TMP/rp.err" & RPID=$!; PIDS+=($RPID); up $RPP; }
start
DURATION=$((KILLS + 5))
$LG send --target 127.0.0.1:$RPP --rate "$RATE" --duration "${DURATION}s" --connections 50 --domain sink.test \
  --seed "$SEED" --json "$TMP/send.json" >/dev/null 2>&1 & SEND=$!
for i in $(seq "$KILLS"); do
  sleep "$(awk -v s="$SEED$i" 'BEGIN{srand(s); printf "%.2f", 0.3 + rand()}')"
  kill -9 "$RPID"; wait "$RPID" 2>/dev/null
  start || { echo "restart $i failed: $(tail -3 "$TMP/rp.err")"; exit 1; }
done
wait $SEND
acked=$(json "$TMP/send.json" messages_accepted)
for _ in $(seq 600); do
  [ "$(json "$TMP/sink.json" delivered_messages)" -ge "$acked" ] && break
  sleep 0.1
done
delivered=$(json "$TMP/sink.json" delivered_messages)
dups=$(json "$TMP/sink.json" duplicated)
corrupted=$(json "$TMP/sink.json" corrupted)
echo "crash loop: $KILLS SIGKILLs; $acked messages acknowledged to the sender, $delivered distinct delivered, $dups duplicates (crash windows), $corrupted corrupted"
[ "$delivered" -ge "$acked" ] && [ "$corrupted" = 0 ] && echo "PASS: nothing acknowledged was lost" && exit 0
echo "FAIL"; exit 1
