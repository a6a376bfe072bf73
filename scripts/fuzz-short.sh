#!/usr/bin/env bash
# Run every cargo-fuzz target of the transparency-log and statement parsers for a short time
# (FUZZ_SECONDS each, default 20). Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). New corpus entries go to a temporary directory; the committed
# seeds in fuzz/seeds/ are read only. Crashes are written to fuzz/artifacts/ and fail the script.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${FUZZ_SECONDS:-20}"
TARGETS="${FUZZ_TARGETS:-note checkpoint cosignature tlog_proof dsse policy witness}"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
  exit 1
fi
CORPUS="$(mktemp -d -t agora-fuzz-XXXXXX)"
trap 'rm -rf "$CORPUS"' EXIT
cargo +nightly fuzz build
for t in $TARGETS; do
  echo "== fuzz $t for ${SECS}s"
  mkdir -p "$CORPUS/$t"
  cargo +nightly fuzz run "$t" "$CORPUS/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::number_of_executed_units|stat::new_units_added|Done|==|SUMMARY|INFO: Running)|panicked|ERROR" || true
  # cargo fuzz exits non-zero on a crash; with `|| true` above, check for artifacts instead.
  if compgen -G "fuzz/artifacts/$t/crash-*" >/dev/null || compgen -G "fuzz/artifacts/$t/oom-*" >/dev/null \
     || compgen -G "fuzz/artifacts/$t/timeout-*" >/dev/null; then
    echo "fuzz target $t found a failure: see fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzz-short: all targets ran ${SECS}s without a crash"
