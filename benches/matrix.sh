#!/usr/bin/env bash
# The README's performance table in one run: ringpost against Postfix and the bare
# smtp-source -> smtp-sink ceiling (../shared/bench/vs-postfix.sh) for 1, 10 and 100 KiB
# messages, 1 and 10 recipients, and 1 and 2 shards; then loadgen -> ringpost -> loadgen
# sink (benches/e2e.sh) for accept latency as a client sees it. fsync on throughout; all
# traffic on loopback, each row bounded by MSGS messages.
#
# Needs root and Debian's postfix package (for vs-postfix.sh).
# Usage: benches/matrix.sh   Env: VS (path to vs-postfix.sh), MSGS (10000), RUNS (3),
#        SHARDS (0: ringpost's default, one per core; the size and recipient rows use it)
set -u
cd "$(dirname "$0")/.."
VS=${VS:-../shared/bench/vs-postfix.sh}
MSGS=${MSGS:-10000} RUNS=${RUNS:-3} SHARDS=${SHARDS:-0}
[ -x "$VS" ] || [ -f "$VS" ] || { echo "no vs-postfix.sh at $VS (set VS)"; exit 2; }
cargo build --release --workspace >/dev/null 2>&1 || { echo "cargo build --release failed"; exit 2; }
RP=target/release/ringpost

printf '%-28s %9s %9s %9s %8s %10s %12s\n' workload ceiling postfix ringpost "x pfx" "of ceil" "rp us/msg"
row() {
  local name=$1; shift
  local out
  out=$(env MSGS="$MSGS" RUNS="$RUNS" "$@" bash "$VS" "$RP" 2>&1)
  local ceil pf rp cpu ratio share
  ceil=$(echo "$out" | sed -n 's/^ceiling.*: *\([0-9]*\) msgs.*/\1/p')
  pf=$(echo "$out" | sed -n 's/^postfix end to end: *\([0-9NA]*\).*/\1/p')
  rp=$(echo "$out" | sed -n 's/^ringpost end to end: *\([0-9NA]*\) msgs.*/\1/p')
  cpu=$(echo "$out" | sed -n 's/.*ringpost CPU \([0-9.]*\) us\/msg.*/\1/p')
  ratio=$(echo "$out" | sed -n 's/.*ringpost\/postfix = \([0-9.]*\).*/\1/p')
  share=$(echo "$out" | sed -n 's/.*ringpost\/ceiling = \([0-9.]*\).*/\1/p')
  printf '%-28s %9s %9s %9s %8s %10s %12s\n' "$name" "${ceil:-?}" "${pf:-?}" "${rp:-?}" "${ratio:-?}" "${share:-?}" "${cpu:-?}"
}
row "1 KiB, 1 rcpt" SIZE=1024 RCPTS=1 SHARDS="$SHARDS"
row "10 KiB, 1 rcpt" SIZE=10240 RCPTS=1 SHARDS="$SHARDS"
row "100 KiB, 1 rcpt" SIZE=102400 RCPTS=1 SHARDS="$SHARDS"
row "1 KiB, 10 rcpts" SIZE=1024 RCPTS=10 SHARDS="$SHARDS"
row "1 KiB, 1 rcpt, 1 shard" SIZE=1024 RCPTS=1 SHARDS=1
row "1 KiB, 1 rcpt, 2 shards" SIZE=1024 RCPTS=1 SHARDS=2
row "1 KiB, 10 rcpts, 1 shard" SIZE=1024 RCPTS=10 SHARDS=1

echo
echo "loadgen send -> ringpost -> loadgen sink, 50 connections (latency: MAIL to the final 250):"
MSGS=$MSGS SIZE=1k CONNS=50 MODE=relay benches/e2e.sh 2>&1 | head -1 | sed 's/^/       /'
for size in 1k 10k 100k; do
  MSGS=$MSGS SIZE=$size CONNS=50 MODE=relay benches/e2e.sh 2>&1 | grep "ringpost -> sink" | sed "s/^/$(printf '%-6s' $size) /"
done
MSGS=$MSGS SIZE=1k RCPTS=10 CONNS=50 MODE=relay benches/e2e.sh 2>&1 | grep "ringpost -> sink" | sed "s/^/1k x10 /"
