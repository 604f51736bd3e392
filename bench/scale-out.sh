#!/usr/bin/env bash
# Issue 17, scale-out: 1, 2 and 4 `tessera serve` instances on one PostgreSQL, audited
# mTLS tokens per second of all instances together, with each instance on a hash chain
# of its own (`audit.chain` empty: "{host}:{port}", the default) against all instances
# on one shared chain (`TESSERA_AUDIT_CHAIN=shared`: the single chain of the trail before
# issue 17, whose head row every append of the cluster waited for). Both layouts run in
# the same run, alternating, ROUNDS times (default 2).
#
# Then the appends alone (examples/audit_writers.rs): 1 to 8 stores appending batches of
# 1 or 256 records (an instance's journal drainer appends what 50 ms brought: hundreds
# under load) as fast as they can, own chains against one shared chain.
#
# On this 2-core machine the instances, PostgreSQL and oha share both cores, so the
# curve says what serialises, not what more machines would add.
# Usage: bench/scale-out.sh [seconds per scenario, default 10]
# PostgreSQL: BENCH_PG (default postgres://postgres@127.0.0.1:5432); the database
# tessera_scale_bench is dropped and created.
set -euo pipefail
duration=${1:-10}
rounds=${ROUNDS:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/bench/out"
mkdir -p "$out"
if ! command -v oha >/dev/null; then
  [ -x /opt/oha/bin/oha ] || cargo install oha --locked --root /opt/oha
  export PATH="/opt/oha/bin:$PATH"
fi
(cd "$root" && cargo build --release --locked --quiet --bin tessera --example audit_writers)
bin="$root/target/release/tessera"
pg=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
db=tessera_scale_bench
psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null

work=$(mktemp -d)
servers=()
stop_servers() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
  servers=()
}
trap 'stop_servers; rm -rf "$work"' EXIT
"$bin" init --dir "$work" --database-url "$pg/$db" >/dev/null
sed -i 's/^workers = 0/workers = 1/' "$work/config/tessera.toml"
cd "$work"
"$bin" pki issue-client tcu --out clients >/dev/null
"$bin" client add --client-id tcu --auth tls_client_auth --cert clients/tcu.crt \
  --scope "system/*.rs" >/dev/null

start_servers() { # count, chain ("" = each its own)
  local count=$1 chain=$2
  for i in $(seq 1 "$count"); do
    TESSERA_AUDIT_CHAIN=$chain TESSERA_AUDIT_JOURNAL_DIR="data/journal-$i" RUST_LOG=warn \
      "$bin" serve --listen "127.0.0.1:$((18450 + i))" >"$out/scale-server-$i.log" 2>&1 &
    servers+=($!)
  done
  for i in $(seq 1 "$count"); do
    for _ in $(seq 1 100); do
      curl -fsS --cacert pki/ca.crt "https://127.0.0.1:$((18450 + i))/healthz" >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
}

load() { # count: 32 connections in all, spread over the instances; prints tokens/s
  local count=$1 pids=()
  for i in $(seq 1 "$count"); do
    oha --no-tui --output-format json -z "${duration}s" -c $((32 / count)) -m POST \
      -T application/x-www-form-urlencoded -d 'grant_type=client_credentials&client_id=tcu' \
      --cacert pki/ca.crt --cert clients/tcu.crt --key clients/tcu.key \
      "https://127.0.0.1:$((18450 + i))/realms/cara/protocol/openid-connect/token" \
      >"$out/scale-$i.json" &
    pids+=($!)
  done
  wait "${pids[@]}"
  python3 - "$count" "$out" <<'PY'
import json, sys
count, out = int(sys.argv[1]), sys.argv[2]
total, worst, codes = 0.0, 0.0, {}
for i in range(1, count + 1):
    d = json.load(open(f"{out}/scale-{i}.json"))
    total += d["summary"]["requestsPerSec"]
    worst = max(worst, d["latencyPercentiles"]["p99"] * 1000)
    for code, n in d.get("statusCodeDistribution", {}).items():
        codes[code] = codes.get(code, 0) + n
print(f"{total:8.0f} tokens/s  worst p99 {worst:6.1f} ms  status {codes}")
PY
}

echo "audited mTLS tokens on one PostgreSQL, 32 connections in all, ${duration}s per run, $rounds rounds"
for round in $(seq 1 "$rounds"); do
  for count in 1 2 4; do
    for layout in own shared; do
      chain=""
      [ "$layout" = shared ] && chain=shared
      start_servers "$count" "$chain"
      printf 'round %s  %s instance(s)  %-6s chains: ' "$round" "$count" "$layout"
      load "$count"
      stop_servers
    done
  done
done
"$bin" audit verify | head -n 1

echo
echo "appends alone: writers appending batches to $db as fast as they can (${duration}s each)"
writers="$root/target/release/examples/audit_writers"
for batch in 1 256; do
  for count in 1 2 4 8; do
    for layout in own shared; do
      "$writers" "$pg/$db" "$count" "$batch" "$duration" "$layout"
    done
  done
done
