#!/usr/bin/env bash
# What indexing the audit repository in the background costs and saves (issue 17):
# `audit.index_events_per_second` 0 (only a query indexes) against 500 (the default),
# alternating, each on a fresh server over the same installation (SQLite):
#   - audited mTLS tokens at full load (the background indexer takes its share of the core);
#   - a moderate load (300 tokens a second for 20 s), then an auditor's first ITI-81 query:
#     how long it waits for the index.
# Usage: bench/repository-index.sh [seconds at full load, default 10] [rounds, default 2]
duration=${1:-10}
rounds=${2:-2}
source "$(dirname "$0")/lib.sh"
"$bin" pki issue-client bench --out clients >/dev/null
"$bin" client add --client-id bench-tcu --auth tls_client_auth --cert clients/bench.crt \
  --scope "system/*.rs" >/dev/null
"$bin" pki issue-client auditor --out clients >/dev/null
"$bin" client add --client-id auditor --auth tls_client_auth --cert clients/auditor.crt \
  --scope "system/AuditEvent.rs" >/dev/null
token_url="$url/realms/cara/protocol/openid-connect/token"
form="grant_type=client_credentials&client_id=bench-tcu"
bench=(--cert clients/bench.crt --key clients/bench.key)
auditor=(--cacert pki/ca.crt --cert clients/auditor.crt --key clients/auditor.key)

query() { # prints how long an ITI-81 query took, in ms
  local access started
  access=$(curl -fsS "${auditor[@]}" -d grant_type=client_credentials -d client_id=auditor "$token_url" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  started=$(date +%s%N)
  curl -fsS --max-time 3600 "${auditor[@]}" -H "Authorization: Bearer $access" \
    "$url/audit/fhir/AuditEvent?date=ge$(date -u +%Y-%m-%d)&_count=10&_total=none" >/dev/null
  echo $(( ($(date +%s%N) - started) / 1000000 ))
}

echo "background indexing of the audit repository: 0 (only queries index) against 500 events/s"
for round in $(seq 1 "$rounds"); do
  for per_second in 0 500; do
    export TESSERA_AUDIT_INDEX_EVENTS_PER_SECOND=$per_second
    start_server
    query >/dev/null # the repository starts current
    run_oha "index-$per_second-full-$round" "$token_url" "$duration" -c 32 "${bench[@]}" -d "$form"
    query >/dev/null
    taskset -c 1 oha --no-tui -z 20s -q 300 -c 8 -m POST -T application/x-www-form-urlencoded \
      --cacert pki/ca.crt "${bench[@]}" -d "$form" "$token_url" >/dev/null
    sleep 1
    echo "index-$per_second-moderate-$round: after 20 s at 300 tokens/s, an auditor's query took $(query) ms"
    kill "$server"; wait "$server" 2>/dev/null || true; server=""
  done
done
