#!/usr/bin/env bash
# An A/B of two or more builds of tessera on one installation: each round starts each
# binary in turn (same database, same clients, server on CPU 0 with one worker, oha on
# CPU 1) and loads the same endpoints, so the builds alternate under the same drift.
# Build the variants first (e.g. a scratch worktree with a patch, copied out of
# target/release); bench/lib.sh's own build of this checkout sets up the installation.
# Usage: bench/ab.sh SECONDS ROUNDS BINARY BINARY... ; SCENARIOS picks from
#   jwks token introspect vault-read handshake tls-floor (default: the first four);
#   tls-floor loads examples/tls_floor.rs (the reference of handshake) before each build's
#   server starts. After each scenario the journal's records per sync since the start,
#   and the core's microseconds a 200 by server thread (the scheduler's accounting: the
#   actix worker, the audit journal and drainer, the blocking pool).
#   CONNECTIONS sets the load's connections (default 32).
duration=$1
rounds=$2
connections=${CONNECTIONS:-32}
shift 2
binaries=("$@")
[ ${#binaries[@]} -ge 2 ] || { echo "usage: bench/ab.sh SECONDS ROUNDS BINARY BINARY..." >&2; exit 2; }
BENCH_BIN=${binaries[0]}
source "$(dirname "$0")/lib.sh"

serve() { # binary
  bin=$1
  start_server
}
serve "${binaries[0]}"
bench_client p-ab
bench_gateway_and_auditor
token_url="$url/realms/cara/protocol/openid-connect/token"
read_url=$(bench_patient AB)
kill "$server"; wait "$server" 2>/dev/null || true
# Each server starts on the events the builds before it appended under load (the
# repository's background indexer skips the seconds of a full load), and indexed them
# during the next scenario: about 5% of the core under JWKS (the audit-indexer thread
# in the accounts by thread). Not what an A/B compares (bench/repository-index.sh does).
sed -i 's/^index_events_per_second = .*/index_events_per_second = 0/' config/tessera.toml
mtls=(--cert clients/tcu.crt --key clients/tcu.key)
with_floor=""
if [[ " ${SCENARIOS:-} " == *" tls-floor "* ]]; then
  # The reference of new-handshake tokens, loaded in turn with the builds.
  with_floor=1
  start_tls_floor
fi
for round in $(seq 1 "$rounds"); do
  for binary in "${binaries[@]}"; do
    echo "-- round $round: $binary"
    if [ -n "$with_floor" ]; then
      # Before the server starts: nothing of it (its start, its background indexing of
      # the rounds before) shares the core with the reference.
      method=GET run_oha tls-floor "https://127.0.0.1:18444/" "$duration" -c "$connections" --disable-keepalive \
        "${mtls[@]}"
    fi
    serve "$binary"
    access=$(curl -fsS "${tls[@]}" -d grant_type=client_credentials -d client_id=tcu "$token_url" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    for scenario in ${SCENARIOS:-jwks token introspect vault-read}; do
      [ "$scenario" = tls-floor ] && continue # measured before the server started
      before=$(threads_cpu)
      case $scenario in
        jwks) method=GET run_oha jwks "$url/realms/cara/protocol/openid-connect/certs" "$duration" -c "$connections" "${mtls[@]}" ;;
        token) run_oha token "$token_url" "$duration" -c "$connections" "${mtls[@]}" \
          -d "grant_type=client_credentials&client_id=tcu" ;;
        introspect) run_oha introspect "$token_url/introspect" "$duration" -c "$connections" \
          --cert clients/gateway.crt --key clients/gateway.key -d "client_id=gateway&token=$access" ;;
        vault-read) method=GET run_oha vault-read "$read_url" "$duration" -c "$connections" "${mtls[@]}" \
          -H "Authorization: Bearer $access" ;;
        handshake) run_oha token-handshake "$token_url" "$duration" -c "$connections" --disable-keepalive "${mtls[@]}" \
          -d "grant_type=client_credentials&client_id=tcu" ;;
        *) echo "unknown scenario $scenario" >&2; exit 2 ;;
      esac
      journal=$(curl -fsS "${tls[@]}" "$url/metrics" | awk '
        /^tessera_audit_journal_records_total/ { r = $2 } /^tessera_audit_journal_syncs_total/ { s = $2 }
        END { if (s > 0) printf "%d records in %d syncs since start, %.1f a sync", r, s, r / s }')
      echo "   journal: $journal"
      report=$scenario; [ "$scenario" = handshake ] && report=token-handshake
      threads_cpu_since "$before" "$out/$report.json"
    done
    kill "$server"; wait "$server" 2>/dev/null || true
  done
done
