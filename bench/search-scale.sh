#!/usr/bin/env bash
# FHIR search at scale (issue 15): read and search in one partition holding many
# resources, and in one of many partitions, so a search's cost is seen to follow its page
# and its selectivity, not the size of the type or of the database.
#   - partition "big": one Patient and $BIG Observations (default 100,000), 1 in 100 of
#     them code 4548-4, loaded by transactions of 1,000 entries;
#   - $PARTITIONS small partitions (default 10,000), each one Patient and 10 Observations.
# Measured with oha (32 connections, mutual TLS, a certificate-bound token for every
# partition): read by id, a selective search (code, newest 10), the newest 10 of the
# whole type, and an exact total of the selective search; then the same read and search
# in one small partition.
# Server on CPU 0 with one worker, load on CPU 1. Loading takes minutes (it is printed).
# Usage: bench/search-scale.sh [seconds, default 10] [database URL, default the embedded SQLite]
#        BIG=100000 PARTITIONS=10000 bench/search-scale.sh 10 postgres://postgres@127.0.0.1:5432/scale
duration=${1:-10}
database=${2:-}
big=${BIG:-100000}
partitions=${PARTITIONS:-10000}
source "$(dirname "$0")/lib.sh"
if [ -n "$database" ]; then export TESSERA_DATABASE_URL="$database"; "$bin" init --dir "$work" >/dev/null; fi
start_server

started=$(date +%s)
mpi_prefix="urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1"
"$bin" account add --mpi-id "$mpi_prefix/$(cat /proc/sys/kernel/random/uuid)" --partition-name big >/dev/null
seq 1 "$partitions" | xargs -P 2 -I{} sh -c \
  "\"$bin\" account add --mpi-id \"$mpi_prefix/\$(cat /proc/sys/kernel/random/uuid)\" --partition-name small-{} >/dev/null"
"$bin" pki issue-client tcu --out clients >/dev/null
"$bin" client add --client-id tcu --auth tls_client_auth --cert clients/tcu.crt \
  --scope "system/*.cruds" --partition '*' >/dev/null
tls=(--cacert pki/ca.crt --cert clients/tcu.crt --key clients/tcu.key)
access=$(curl -fsS "${tls[@]}" -d grant_type=client_credentials -d client_id=tcu \
  "$url/realms/cara/protocol/openid-connect/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
auth="Authorization: Bearer $access"
echo "accounts: $((partitions + 1)) in $(( $(date +%s) - started )) s"

# The loader: transactions over one kept-alive mutual-TLS connection.
started=$(date +%s)
python3 "$root/bench/load.py" "$url" "$access" "$big" "$partitions"
echo "resources: $((big + 1 + partitions * 11)) in $(( $(date +%s) - started )) s"
# PostgreSQL plans from statistics: without them (autovacuum off, as on this machine, or
# not yet run after a bulk load) it picks indexes blindly, and a code search reads every
# row of the type (measured: 55 ms instead of 0.4 ms at 3,000 resources). Autovacuum
# analyzes a table soon after a load; this does it now.
if [ -n "$database" ]; then psql -q "$database" -c ANALYZE; fi
# A fresh token for the measurements (the load may outlast one).
access=$(curl -fsS "${tls[@]}" -d grant_type=client_credentials -d client_id=tcu \
  "$url/realms/cara/protocol/openid-connect/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
auth="Authorization: Bearer $access"

fhir="$url/fhir/big"
read_url=$(curl -fsS "${tls[@]}" -H "$auth" "$fhir/Observation?code=4548-4&_count=1&_total=none" \
  | python3 -c 'import json,sys; e=json.load(sys.stdin)["entry"][0]; print(e["fullUrl"])')
small="$url/fhir/small-$(( (partitions + 1) / 2 ))"
small_read=$(curl -fsS "${tls[@]}" -H "$auth" "$small/Observation?_count=1&_total=none" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["entry"][0]["fullUrl"])')
curl -fsS "${tls[@]}" -H "$auth" "$fhir/Observation?code=4548-4&_summary=count" | grep -q "\"total\":$(( (big + 99) / 100 ))"

backend=${database%%:*}
echo "Tessera FHIR search at scale, ${duration}s each, ${backend:-sqlite}: partition 'big' with $big Observations, $partitions other partitions; server on 1 core (taskset -c 0), load on the other"
o=("${tls[@]:2}" -H "$auth")
method=GET run_oha big-read "$read_url" "$duration" -c 32 "${o[@]}"
method=GET run_oha big-code-newest10 "$fhir/Observation?code=4548-4&_sort=-_lastUpdated&_count=10&_total=none" "$duration" -c 32 "${o[@]}"
method=GET run_oha big-newest10 "$fhir/Observation?_sort=-_lastUpdated&_count=10&_total=none" "$duration" -c 32 "${o[@]}"
method=GET run_oha big-code-total "$fhir/Observation?code=4548-4&_count=10" "$duration" -c 32 "${o[@]}"
method=GET run_oha small-read "$small_read" "$duration" -c 32 "${o[@]}"
method=GET run_oha small-search "$small/Observation?code=4548-4&_count=10" "$duration" -c 32 "${o[@]}"
