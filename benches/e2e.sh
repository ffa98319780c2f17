#!/usr/bin/env bash
# End-to-end benchmark on loopback, one comparable table.
#
#   loadgen send --SMTP--> ringpost --SMTP--> loadgen sink     (loadgen dns answers the MX)
#   loadgen send --SMTP--> loadgen sink                        (loadgen's own ceiling)
#   smtp-source  --SMTP--> smtp-sink                           (Postfix's tools, if installed)
#
# For each connection count it prints msgs/s, p50/p99 per-message latency and, for the relay
# row, ringpost's CPU per message and how many messages reached the sink. All traffic stays
# on 127.0.0.1; every run is bounded by MSGS and a timeout.
#
# Usage: benches/e2e.sh            (builds release binaries first)
# Env:   MSGS (20000) SIZE (1k) CONNS ("1 50 500") MODE (all | ceiling | relay)
#        RINGPOST (target/release/ringpost: another build, or a wrapper that edits the config)
#        RCPTS (1: recipients per message, all at sink.test: one transaction each)
#        SETTLE (30: seconds to wait for delivery to the sink after sending)
set -u
cd "$(dirname "$0")/.."
MSGS=${MSGS:-20000} SIZE=${SIZE:-1k} CONNS=${CONNS:-"1 50 500"} MODE=${MODE:-all} SETTLE=${SETTLE:-30}
RCPTS=${RCPTS:-1}
cargo build --release --workspace >/dev/null 2>&1 || { echo "cargo build --release failed"; exit 2; }
RP=${RINGPOST:-target/release/ringpost} LG=target/release/loadgen
TMP=$(mktemp -d /tmp/ringpost-e2e.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.3; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 143' INT TERM

SINK_PORT=2727 SRC_SINK_PORT=2728 RP_PORT=2725 DNS_PORT=2753
size_bytes=$(echo "$SIZE" | awk '/k$/{print $1*1024; next} /m$/{print $1*1048576; next} {print $1}')
up() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# The sink's delivered count while waiting: grep, not a Python start-up every poll.
delivered() { grep -o '"delivered_messages": *[0-9]*' "$TMP/sink.json" 2>/dev/null | grep -o '[0-9]*$'; }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

start_sink() {
  $LG sink --listen 127.0.0.1:$SINK_PORT --no-tls --shards 1 --stats "$TMP/sink.json" >"$TMP/sink.out" 2>&1 &
  PIDS+=($!); SINK_PID=$!; up $SINK_PORT || { echo "sink did not start"; exit 1; }
}
stop_sink() { kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null; }

printf '%-34s %6s %10s %9s %9s %11s %12s %10s %9s\n' "path" "conns" "sent/s" "p50 ms" "p99 ms" "e2e msgs/s" "CPU us/msg" "delivered" "msgs/conn"
row() { printf '%-34s %6s %10s %9s %9s %11s %12s %10s %9s\n' "$@"; }

for c in $CONNS; do
  if [ "$MODE" = all ] || [ "$MODE" = ceiling ]; then
    start_sink
    $LG send --target 127.0.0.1:$SINK_PORT --connections "$c" --shards 1 --messages "$MSGS" --size "$SIZE" \
      --rcpts-per-message "$RCPTS" --seed 1 --json "$TMP/send.json" >/dev/null 2>&1
    sleep 0.5
    row "loadgen send -> loadgen sink" "$c" "$(json "$TMP/send.json" "round(d['msgs_per_s'])")" \
      "$(json "$TMP/send.json" "d['message']['p50_us']/1000")" "$(json "$TMP/send.json" "d['message']['p99_us']/1000")" "-" "-" \
      "$(json "$TMP/sink.json" "d['delivered_messages']")" "-"
    stop_sink
    if command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null; then
      smtp-sink -u nobody -c 127.0.0.1:$SRC_SINK_PORT 5000 >"$TMP/ssink.out" 2>/dev/null &
      SS=$!; PIDS+=($SS); up $SRC_SINK_PORT
      t0=$(date +%s.%N)
      timeout 600 smtp-source -d -s "$c" -m "$MSGS" -l "$size_bytes" -r "$RCPTS" -f a@bench.test -t r@sink.test 127.0.0.1:$SRC_SINK_PORT >/dev/null 2>&1
      t1=$(date +%s.%N)
      kill $SS 2>/dev/null; wait $SS 2>/dev/null
      row "smtp-source -> smtp-sink" "$c" "$(echo "$t0 $t1 $MSGS" | awk '{printf "%.0f", $3/($2-$1)}')" "-" "-" "-" "-" "-" "-"
    fi
  fi
  if [ "$MODE" = all ] || [ "$MODE" = relay ]; then
    start_sink
    $LG dns --listen 127.0.0.1:$DNS_PORT --mx sink.test=mx.sink.test:10 --a mx.sink.test=127.0.0.1 >"$TMP/dns.out" 2>&1 &
    PIDS+=($!); DNS_PID=$!
    rm -rf "$TMP/queue"
    cat >"$TMP/ringpost.toml" <<CF
[server]
hostname = "ringpost.bench.test"
max_connections_per_ip = 100000
[[listen]]
addr = "127.0.0.1:$RP_PORT"
[policy]
relay_domains = ["sink.test"]
[queue]
dir = "$TMP/queue"
[delivery]
dns = ["127.0.0.1:$DNS_PORT"]
port = $SINK_PORT
CF
    $RP serve --config "$TMP/ringpost.toml" >"$TMP/rp.out" 2>"$TMP/rp.err" &
    RP_PID=$!; PIDS+=($RP_PID); up $RP_PORT || { echo "ringpost did not start: $(tail -3 "$TMP/rp.err")"; exit 1; }
    c0=$(cpu_ticks $RP_PID); t0=$(date +%s.%N); t1=""
    $LG send --target 127.0.0.1:$RP_PORT --connections "$c" --shards 1 --messages "$MSGS" --size "$SIZE" \
      --rcpts-per-message "$RCPTS" --seed 2 --json "$TMP/send.json" >/dev/null 2>&1
    for _ in $(seq $((SETTLE * 20))); do
      if [ "$(delivered)" -ge "$MSGS" ] 2>/dev/null; then t1=$(date +%s.%N); break; fi
      sleep 0.05
    done
    c1=$(cpu_ticks $RP_PID)
    cpu=$(echo "$c0 $c1 $(getconf CLK_TCK) $MSGS" | awk '{printf "%.1f", 1e6*($2-$1)/$3/$4}')
    e2e=NA; [ -n "$t1" ] && e2e=$(echo "$t0 $t1 $MSGS" | awk '{printf "%.0f", $3/($2-$1)}')
    row "loadgen send -> ringpost -> sink" "$c" "$(json "$TMP/send.json" "round(d['msgs_per_s'])")" \
      "$(json "$TMP/send.json" "d['message']['p50_us']/1000")" "$(json "$TMP/send.json" "d['message']['p99_us']/1000")" "$e2e" "$cpu" \
      "$(json "$TMP/sink.json" "d['delivered_messages']")" \
      "$(json "$TMP/sink.json" "round(d['messages']/max(1,d['connections_with_messages']))")"
    kill $RP_PID $DNS_PID 2>/dev/null; wait $RP_PID $DNS_PID 2>/dev/null
    stop_sink
  fi
done
echo "($MSGS messages of $SIZE, $RCPTS recipient(s) each, per row; sent/s and latency (MAIL to the final 250) as seen by the sender;"
echo " e2e = until the sink has every message; CPU = ringpost's user+system time per message;"
echo " delivered = distinct intact messages at the sink; msgs/conn = messages per delivery connection)"
