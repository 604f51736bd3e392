#!/usr/bin/env bash
# The audit console and ITI-81 on a large trail (they must stay fast at 1,000,000 events).
# Fills the trail with real audited requests (half ITI-71 token requests, half ITI-72
# reads spread over 10 patients' partitions), lets the repository index them, then
# measures the console's pages and the matching ITI-81 query, each newest first.
# Server on CPU 0 with one worker, load on CPU 1, 4 connections.
# Usage: bench/console.sh [events, default 1000000] [seconds per scenario, default 10]
# BENCH_KEEP=1 keeps the filled installation; BENCH_REUSE=DIR measures it again.
events=${1:-1000000}
duration=${2:-10}
source "$(dirname "$0")/lib.sh"
start_server

token_of() { # client
  curl -fsS --cacert pki/ca.crt --cert "clients/$1.crt" --key "clients/$1.key" -d grant_type=client_credentials -d "client_id=$1" \
    "$url/realms/cara/protocol/openid-connect/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
day=$(date -u +%F)
week=$(date -u -d '7 days ago' +%F)

if [ -z "${BENCH_REUSE:-}" ]; then
  "$bin" pki issue-client tcu --out clients >/dev/null
  "$bin" pki issue-client auditor --out clients >/dev/null
  partitions=()
  accounts=()
  for n in $(seq 0 9); do
    accounts+=("$("$bin" account add --mpi-id "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/$(cat /proc/sys/kernel/random/uuid)" --partition-name "p$n" | sed -n 's/^account    //p')")
    partitions+=(--partition "p$n")
  done
  "$bin" client add --client-id tcu --auth tls_client_auth --cert clients/tcu.crt --scope "system/*.cruds" "${partitions[@]}" >/dev/null
  "$bin" client add --client-id auditor --auth tls_client_auth --cert clients/auditor.crt --scope "system/AuditEvent.rs" >/dev/null
  # The console keeps a bearer token in its cookie: one not bound to a certificate.
  secret=$("$bin" client add --client-id reader --auth client_secret_post --scope "system/AuditEvent.rs" | sed -n 's/^client_secret: //p')
  printf 'secret=%q\naccount=%q\n' "$secret" "${accounts[3]}" > bench.env
  access=$(token_of tcu)
  ids=()
  for n in $(seq 0 9); do
    ids+=("$(curl -fsS --cacert pki/ca.crt --cert clients/tcu.crt --key clients/tcu.key -H "Authorization: Bearer $access" \
      -H 'Content-Type: application/fhir+json' -d '{"resourceType":"Patient","name":[{"family":"Muster"}]}' "$url/fhir/p$n/Patient" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')")
  done
  started=$(date +%s)
  echo "filling the trail with $events audited requests (32 connections)"
  half=$((events / 2))
  taskset -c 1 oha --no-tui -n "$half" -c 32 -m POST -T application/x-www-form-urlencoded --cacert pki/ca.crt \
    --cert clients/tcu.crt --key clients/tcu.key -d "grant_type=client_credentials&client_id=tcu" \
    "$url/realms/cara/protocol/openid-connect/token" >/dev/null
  for n in $(seq 0 9); do
    access=$(token_of tcu)
    taskset -c 1 oha --no-tui -n $((half / 10)) -c 32 --cacert pki/ca.crt --cert clients/tcu.crt --key clients/tcu.key \
      -H "Authorization: Bearer $access" "$url/fhir/p$n/Patient/${ids[$n]}" >/dev/null
  done
  echo "requests sent in $(( $(date +%s) - started )) s; indexing the repository"
fi
source bench.env

auditor=$(token_of auditor)
iti81=(--cert clients/auditor.crt --key clients/auditor.key -H "Authorization: Bearer $auditor")
started=$(date +%s)
total=0
while [ "$total" -lt "$events" ]; do
  total=$(curl -fsS --max-time 3600 --cacert pki/ca.crt "${iti81[@]}" "$url/audit/fhir/AuditEvent?date=ge$week&_count=1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
done
echo "the repository holds $total events (caught up in $(( $(date +%s) - started )) s); data: $(du -sh data | cut -f1)"

# Catching up can outlast a token.
auditor=$(token_of auditor)
iti81=(--cert clients/auditor.crt --key clients/auditor.key -H "Authorization: Bearer $auditor")
reader=$(curl -fsS --cacert pki/ca.crt -d grant_type=client_credentials -d client_id=reader -d "client_secret=$secret" \
  "$url/realms/cara/protocol/openid-connect/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
cookie="Cookie: tessera_console=$reader"
first=$(curl -fsS --cacert pki/ca.crt "${iti81[@]}" "$url/audit/fhir/AuditEvent?date=ge$week&_count=1" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["entry"][0]["resource"]["id"])')
status=$(curl -s -o /dev/null -w '%{http_code}' --cacert pki/ca.crt -H "$cookie" "$url/console/events")
test "$status" = 200 || { echo "the console refused the reader's token: $status" >&2; exit 1; }
patient=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$account")

echo "Tessera audit console and ITI-81 over $total events, ${duration}s each, server on 1 core (taskset -c 0), 4 connections"
method=GET run_oha console-newest "$url/console/events" "$duration" -c 4 -H "$cookie"
method=GET run_oha console-page-100 "$url/console/events?page=100" "$duration" -c 4 -H "$cookie"
method=GET run_oha console-agent "$url/console/events?agent=tcu" "$duration" -c 4 -H "$cookie"
method=GET run_oha console-patient "$url/console/events?patient=$patient" "$duration" -c 4 -H "$cookie"
method=GET run_oha console-failures "$url/console/events?outcome=4" "$duration" -c 4 -H "$cookie"
method=GET run_oha console-agent-failures "$url/console/events?agent=tcu&outcome=4" "$duration" -c 4 -H "$cookie"
method=GET run_oha console-event "$url/console/events/$first" "$duration" -c 4 -H "$cookie"
method=GET run_oha iti81-newest-50 "$url/audit/fhir/AuditEvent?date=ge$week&date=le$day&_count=50" "$duration" -c 4 "${iti81[@]}"
