#!/usr/bin/env bash
# Delivery to a distant next hop: what a round trip per transaction costs, DATA against
# CHUNKING (`[delivery] chunking`), runs alternating so that machine drift hits both alike.
#
#   loadgen send (open loop, RATE msgs/s) --SMTP--> ringpost --SMTP--> loadgen sink --rtt RTT
#
# The sink waits RTT before each write of replies (a next hop that far away; loopback
# itself adds nothing measurable). At a rate that leaves the relay's connections idle
# between messages, a message starts a transaction of its own: with DATA it costs two
# round trips (envelope -> 354, content -> 250), as one chunk one. Per run: ringpost's
# delivery delay (arrival to delivery, `ringpost_delivery_delay_seconds`) p50 and p99 and
# its outbound transactions (chunked, chained) from /metrics.
#
# Needs root (own network namespace); builds nothing (cargo build --release first).
# Usage: benches/next-hop-rtt.sh
# Env:   RTT (20ms) RATE (100 msgs/s) N (1000 messages) ROUNDS (2) SIZE (1k)
set -u
if [ -z "${RTT_IN_NETNS:-}" ]; then exec unshare --net env RTT_IN_NETNS=1 bash "$0" "$@"; fi
ip link set lo up
cd "$(dirname "$0")/.."
RTT=${RTT:-20ms} RATE=${RATE:-100} N=${N:-1000} ROUNDS=${ROUNDS:-2} SIZE=${SIZE:-1k}
RP=target/release/ringpost LG=target/release/loadgen
[ -x "$RP" ] && [ -x "$LG" ] || { echo "cargo build --release first"; exit 2; }
TMP=$(mktemp -d /tmp/ringpost-rtt.XXXXXX)
trap 'pkill -P $$ 2>/dev/null; rm -rf "$TMP"' EXIT
up() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
delivered() { grep -o '"delivered_messages": *[0-9]*' "$TMP/sink.json" 2>/dev/null | grep -o '[0-9]*$'; }

echo "next hop $RTT away, $RATE msgs/s open loop, $N messages of $SIZE per run"
for round in $(seq "$ROUNDS"); do
  for chunking in false true; do
    rm -rf "$TMP/q" "$TMP/sink.json"
    printf '[server]\nhostname = "ringpost.bench.test"\n[[listen]]\naddr = "127.0.0.1:2838"\n[policy]\nrelay_domains = ["sink.test"]\nrelay_networks = ["127.0.0.0/8"]\n[queue]\ndir = "%s/q"\n[delivery]\nchunking = %s\n[[route]]\ndomain = "sink.test"\nsmarthost = "127.0.0.1:2837"\n[admin]\nlisten = "127.0.0.1:2839"\n' \
      "$TMP" "$chunking" >"$TMP/rp.toml"
    $LG sink --listen 127.0.0.1:2837 --no-tls --rtt "$RTT" --stats "$TMP/sink.json" >/dev/null 2>&1 &
    SINK=$!
    "$RP" serve --config "$TMP/rp.toml" >"$TMP/rp.log" 2>&1 & RPID=$!
    up 2838 && up 2837 || { echo "did not start: $(tail -2 "$TMP/rp.log")"; exit 1; }
    $LG send --target 127.0.0.1:2838 --connections 10 --rate "$RATE" --messages "$N" --size "$SIZE" \
      --domain sink.test --json "$TMP/send.json" >/dev/null 2>&1
    deadline=$((SECONDS + 60))
    while [ "$(delivered)" -lt "$N" ] 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    sleep 1.2  # the shards publish their counters once a second
    curl -s http://127.0.0.1:2839/metrics >"$TMP/metrics"
    kill $RPID $SINK; wait $RPID $SINK 2>/dev/null
    awk -v c="$chunking" -v got="$(delivered)" '
      /^ringpost_delivery_delay_seconds\{quantile="0\.5"/ {p50 = $2}
      /^ringpost_delivery_delay_seconds\{quantile="0\.99"/ {p99 = $2}
      /^ringpost_outbound_transactions_total/ {t += $2}
      /^ringpost_outbound_chunked_total/ {k += $2}
      /^ringpost_outbound_chained_total/ {h += $2}
      END {printf "chunking = %-5s  delivered %s  delivery delay p50 %.1f ms  p99 %.1f ms  transactions %d (%d chunked, %d chained)\n",
        c, got, 1000*p50, 1000*p99, t, k, h}' "$TMP/metrics"
  done
done
