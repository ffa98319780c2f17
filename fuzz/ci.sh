#!/usr/bin/env bash
# A short fuzz run of every target (FUZZ_SECONDS each, default 10), as CI does. cargo-fuzz
# is installed from crates.io when missing; on stable Rust, RUSTC_BOOTSTRAP=1 lets it use
# the sanitizer flags. A crash fails the run and leaves the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_TARGET=${FUZZ_SECONDS:-10}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  if ! cargo install --locked cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: cannot install cargo-fuzz; fuzzing skipped" >&2
    exit 0
  fi
fi
export RUSTC_BOOTSTRAP=1
for target in parser session data record dns; do
  out=$(cargo fuzz run "$target" -- -max_total_time="$SECONDS_PER_TARGET" 2>&1) || {
    echo "$out" | tail -40
    echo "fuzz: $target failed" >&2
    exit 1
  }
  echo "fuzz: $target: $(echo "$out" | grep -E '^Done' | tail -1)"
done
