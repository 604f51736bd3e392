#!/usr/bin/env bash
# Runs every cargo-fuzz target for the given seconds each (default 600), on its kept
# corpus (fuzz/corpus/TARGET, which grows with what the run finds). A crash stops the
# run and leaves its input in fuzz/artifacts/TARGET. Needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). Leak detection is off: the harness (store, token
# service) lives for the whole process on purpose; memory errors and panics are what count.
#   fuzz/run.sh            # ten minutes each, as issue 14 asks
#   fuzz/run.sh 15         # a smoke run (CI)
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
targets=(jose token_request fhir_resource search_params bundle iti81_query)
cargo +nightly fuzz build -O
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  echo "== $target, ${seconds}s"
  if ! cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=16384 -detect_leaks=0 \
    -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "$target failed: the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|^#[0-9]+ *DONE' "$log" || true
done
