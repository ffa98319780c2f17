#!/usr/bin/env bash
# The ringpost leg of ../shared/bench/vs-postfix.sh alone, for quick iterations:
# smtp-source -> ringpost -> smtp-sink (static route), 3 runs, msgs/s and ringpost CPU per
# message. Needs root (own network namespace) and Debian's postfix package for the tools.
# Usage: benches/relay-only.sh [RINGPOST_BINARY]   Env: MSGS (10000) SESSIONS (50)
#        SHARDS (0 = default), SYNC (inline | ring), SERVE_ARGS, EXTRA (more TOML)
# Prints msgs/s end to end and ringpost's CPU per message (user, kernel) per run, then the
# fsync and store (end of content to 250) quantiles from ringpost's /metrics.
set -u
if [ -z "${VS_IN_NETNS:-}" ]; then exec unshare --net env VS_IN_NETNS=1 bash "$0" "$@"; fi
ip link set lo up
RINGPOST=$(realpath "${1:-./target/release/ringpost}")
MSGS=${MSGS:-10000} SESSIONS=${SESSIONS:-50}
TMP=$(mktemp -d /tmp/ringpost-relay-only.XXXXXX)
cat >"$TMP/rp.toml" <<CF
[server]
hostname = "ringpost.bench.test"
[[listen]]
addr = "127.0.0.1:2528"
[policy]
relay_domains = ["sink.test"]
relay_networks = ["127.0.0.0/8"]
[queue]
dir = "$TMP/q"
sync = "${SYNC:-inline}"
[admin]
listen = "127.0.0.1:2529"
[[route]]
domain = "sink.test"
smarthost = "127.0.0.1:2527"
[tuning]
shards = ${SHARDS:-0}
${EXTRA:-}
CF
"$RINGPOST" serve --config "$TMP/rp.toml" ${SERVE_ARGS:-} >"$TMP/rp.log" 2>&1 & RP=$!
up() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
up 2528
sink_count() { tail -c 200 "$TMP/sink.out" 2>/dev/null | tr '\r' '\n' | grep mesg= | tail -1 | sed 's/.*mesg=\([0-9]*\).*/\1/'; }
for r in 1 2 3; do
  : >"$TMP/sink.out"
  smtp-sink -u nobody -c 127.0.0.1:2527 4096 >"$TMP/sink.out" 2>/dev/null & S=$!
  up 2527; sleep 0.2
  read -r u0 s0 < <(awk '{print $14, $15}' /proc/$RP/stat); t0=$(date +%s.%N)
  smtp-source -d -s $SESSIONS -m $MSGS -l 1024 -M bench.test -f a@bench.test -t r@sink.test 127.0.0.1:2528 >/dev/null 2>&1 & SRC=$!
  deadline=$((SECONDS + 120))
  while [ $SECONDS -lt $deadline ]; do cnt=$(sink_count); [ "${cnt:-0}" -ge $MSGS ] && break; sleep 0.05; done
  t1=$(date +%s.%N); read -r u1 s1 < <(awk '{print $14, $15}' /proc/$RP/stat)
  wait $SRC 2>/dev/null
  kill $S; wait $S 2>/dev/null
  echo "$t0 $t1 $MSGS $u0 $u1 $s0 $s1" | awk -v hz=$(getconf CLK_TCK) '{u=1e6*($5-$4)/hz/$3; k=1e6*($7-$6)/hz/$3; printf "ringpost: %.0f msgs/s, %.1f us CPU/msg (user %.1f, kernel %.1f)\n", $3/($2-$1), u+k, u, k}'
done
sleep 1.2
curl -s http://127.0.0.1:2529/metrics | grep -E '^ringpost_(fsync|store)_seconds\{quantile="0\.(5|99)"' | sed 's/^/metrics: /'
kill $RP; wait $RP 2>/dev/null; tail -4 "$TMP/rp.log"; rm -rf "$TMP"
