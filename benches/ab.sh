#!/usr/bin/env bash
# A/B of ringpost builds (or settings) on the vs-postfix workload, runs alternating so that
# machine drift hits every side alike: smtp-source -> ringpost -> smtp-sink (static route),
# 50 sessions of lock-step SMTP, fsync on. Per run: accepted msgs/s (until smtp-source is
# done), end-to-end msgs/s (until smtp-sink has all), ringpost CPU per message (user part
# too) and smtp-sink's, then fsync and store p50, the share of messages whose envelope went out
# behind another's content and the records per group commit (p50; a message and its
# outcome are two), from /metrics. CEILING=1 first measures smtp-source -> smtp-sink
# alone, with the CPU each of them spends per message.
#
# Needs root (own network namespace) and Debian's postfix package for smtp-source/sink.
# Usage: benches/ab.sh BINARY [BINARY ...]   (default ./target/release/ringpost)
# Env:   N (20000 messages per run) R (1 recipient) ROUNDS (2) SHARDS (1) EXTRA (TOML lines,
#        e.g. $'[delivery]\nmax_connections_per_host = 16'; no [queue] or [tuning]) QUEUE
#        (lines for [queue], e.g. 'commit_window = "100us"') CEILING
set -u
if [ -z "${AB_IN_NETNS:-}" ]; then exec unshare --net env AB_IN_NETNS=1 bash "$0" "$@"; fi
ip link set lo up
[ $# -eq 0 ] && set -- ./target/release/ringpost
N=${N:-20000} R=${R:-1} ROUNDS=${ROUNDS:-2} SHARDS=${SHARDS:-1}
TMP=$(mktemp -d /tmp/ringpost-ab.XXXXXX)
trap 'pkill -P $$ 2>/dev/null; rm -rf "$TMP"' EXIT
up() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
sink_count() { tail -c 100 "$TMP/sink.out" | tr '\r' '\n' | grep mesg= | tail -1 | sed 's/.*mesg=\([0-9]*\).*/\1/'; }
source_run() { smtp-source -d -s 50 -m "$N" -r "$R" -l 1024 -M bench.test -f a@bench.test -t r@sink.test "127.0.0.1:$1" >/dev/null 2>&1; }
start_sink() {
  smtp-sink -u nobody -c 127.0.0.1:2637 4096 >"$TMP/sink.out" 2>/dev/null &
  up 2637; SINK=$(pgrep -n smtp-sink)
}
stop_sink() { pkill smtp-sink; sleep 0.2; }

if [ -n "${CEILING:-}" ]; then
  start_sink
  read -r ku0 ks0 < <(ticks "$SINK")
  /usr/bin/time -f "%U %S" -o "$TMP/src.time" bash -c "$(declare -f source_run); N=$N R=$R source_run 2637"
  read -r ku1 ks1 < <(ticks "$SINK")
  stop_sink
  read -r su ss <"$TMP/src.time"
  awk -v n="$N" -v hz="$(getconf CLK_TCK)" -v su="$su" -v ss="$ss" -v a="$ku0 $ks0 $ku1 $ks1" 'BEGIN {
    split(a, k, " ");
    printf "ceiling: smtp-source %.1f us/msg (user %.1f), smtp-sink %.1f us/msg (user %.1f)\n",
      1e6*(su+ss)/n, 1e6*su/n, 1e6*(k[3]-k[1]+k[4]-k[2])/hz/n, 1e6*(k[3]-k[1])/hz/n }'
fi

for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    rm -rf "$TMP/q"
    printf '[server]\nhostname = "ringpost.bench.test"\n[[listen]]\naddr = "127.0.0.1:2638"\n[policy]\nrelay_domains = ["sink.test"]\nrelay_networks = ["127.0.0.0/8"]\n[queue]\ndir = "%s/q"\n%s\n[[route]]\ndomain = "sink.test"\nsmarthost = "127.0.0.1:2637"\n[tuning]\nshards = %s\n[admin]\nlisten = "127.0.0.1:2639"\n%s\n' \
      "$TMP" "${QUEUE:-}" "$SHARDS" "${EXTRA:-}" >"$TMP/rp.toml"
    "$bin" serve --config "$TMP/rp.toml" >"$TMP/rp.log" 2>&1 & RP=$!
    up 2638 || { echo "$bin did not start: $(tail -2 "$TMP/rp.log")"; exit 1; }
    start_sink
    read -r u0 s0 < <(ticks "$RP")
    read -r k0 j0 < <(ticks "$SINK")
    t0=$(date +%s.%N); source_run 2638; t1=$(date +%s.%N)
    deadline=$((SECONDS + 120))
    while [ "$(sink_count)" -lt "$N" ] 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.01; done
    t2=$(date +%s.%N)
    read -r u1 s1 < <(ticks "$RP")
    read -r k1 j1 < <(ticks "$SINK")
    stop_sink
    curl -s http://127.0.0.1:2639/metrics >"$TMP/metrics"
    p50=$(grep -E '^ringpost_(fsync|store)_seconds\{quantile="0\.5"' "$TMP/metrics" | awk '{printf "%s %.0f us  ", $1, $2*1e6}' | sed 's/ringpost_//g; s/_seconds{quantile="0.5"}/ p50/g')
    p50="$p50$(awk -v n="$N" '/^ringpost_outbound_transactions_total/ {t += $2} /^ringpost_outbound_chained_total/ {c += $2}
      /^ringpost_commit_batch_records\{quantile="0\.5"/ {b = $2} /^ringpost_log_commits_total/ {f += $2}
      END {if (t) printf "chained %.0f%%  commit p50 %s records  %.3f fsyncs/msg", 100*c/t, b, f/n}' "$TMP/metrics")"
    kill $RP; wait $RP 2>/dev/null
    awk -v n="$N" -v hz="$(getconf CLK_TCK)" -v b="$bin" -v t="$t0 $t1 $t2" -v c="$u0 $u1 $s0 $s1" -v m="$p50" -v sk="$k0 $k1 $j0 $j1" 'BEGIN {
      split(t, x, " "); split(c, k, " "); split(sk, q, " ");
      printf "%s: accept %.0f/s  e2e %.0f/s  cpu %.1f us/msg (user %.1f)  sink cpu %.1f us/msg  %s\n", b,
        n/(x[2]-x[1]), n/(x[3]-x[1]), 1e6*(k[2]-k[1]+k[4]-k[3])/hz/n, 1e6*(k[2]-k[1])/hz/n,
        1e6*(q[2]-q[1]+q[4]-q[3])/hz/n, m }'
  done
done
