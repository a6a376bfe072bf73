#!/usr/bin/env bash
# Run every cargo-fuzz target of the transparency-log and statement parsers for a short time
# (FUZZ_SECONDS each, default 20). Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). New corpus entries go to a temporary directory; the committed
# seeds in fuzz/seeds/ are read only. Crashes are written to fuzz/artifacts/ and fail the script.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${FUZZ_SECONDS:-20}"
TARGETS="${FUZZ_TARGETS:-note checkpoint cosignature tlog_proof dsse policy witness openai_request gen_frames node_status proof transcript log_entry transcript_request transcript_reply verdict dataset_record dataset_proof croissant mix gguf_meta text_digest text_index trace_request trace_index_header trace_report community_rules community_entry dashboard_call model_share}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)…" >&2
  cargo install cargo-fuzz --locked >&2
fi
# cargo-fuzz needs nightly features: use the nightly toolchain when there is one, else let the
# stable compiler accept them (RUSTC_BOOTSTRAP) and fuzz without AddressSanitizer.
if rustup run nightly rustc --version >/dev/null 2>&1; then
  FUZZ=(cargo +nightly fuzz)
  SAN=()
else
  echo "no nightly toolchain: fuzzing with the stable compiler (RUSTC_BOOTSTRAP=1, no sanitizer)" >&2
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
  SAN=(--sanitizer none)
fi
CORPUS="$(mktemp -d -t agora-fuzz-XXXXXX)"
trap 'rm -rf "$CORPUS"' EXIT
"${FUZZ[@]}" build "${SAN[@]}"
for t in $TARGETS; do
  echo "== fuzz $t for ${SECS}s"
  mkdir -p "$CORPUS/$t"
  "${FUZZ[@]}" run "${SAN[@]}" "$t" "$CORPUS/$t" "fuzz/seeds/$t" -- \
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
