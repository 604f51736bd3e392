#!/usr/bin/env bash
# Runs the seed 002 Python client end to end against a fresh Tessera: init, serve,
# keygen, registration by the operator, token request, verification, replay refusal,
# seed 002's FHIR Observation query against the vault, and a Bulk Data export of it.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
cargo build --locked --quiet
bin="$root/target/debug/tessera"

venv="$root/target/python-venv"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q --disable-pip-version-check -r examples/python/requirements.txt

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"$bin" init --dir "$work" >/dev/null
cd "$work"
TESSERA_SERVER_LISTEN="127.0.0.1:$port" "$bin" serve >serve.log 2>&1 &
server=$!
for _ in $(seq 1 50); do
  curl -fsS --cacert pki/ca.crt "https://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

base="https://127.0.0.1:$port"
# The operator creates a patient account (its partition is the client's FHIR base) and
# a writer fills it with two HbA1c results.
"$bin" account add --mpi-id "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/$(cat /proc/sys/kernel/random/uuid)" --partition-name p-seed >/dev/null
secret=$("$bin" client add --client-id loader --auth client_secret_post --scope "system/Observation.c" --partition p-seed | sed -n 's/^client_secret: //p')
loader_token=$(curl -fsS --cacert pki/ca.crt -d grant_type=client_credentials -d client_id=loader -d "client_secret=$secret" \
  "$base/realms/cara/protocol/openid-connect/token" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
for date in 2023-04-01 2024-02-15; do
  curl -fsS --cacert pki/ca.crt -H "Authorization: Bearer $loader_token" -H 'Content-Type: application/fhir+json' \
    -d '{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"4548-4"}]},"effectiveDateTime":"'$date'"}' \
    "$base/fhir/p-seed/Observation" >/dev/null
done

client_id=$(cat /proc/sys/kernel/random/uuid)
"$venv/bin/python" "$root/examples/python/backend_services.py" keygen "$work"
"$bin" client add --client-id "$client_id" --auth private_key_jwt --public-key public.pem --scope "system/Patient.rs system/Observation.rs" --partition p-seed
"$venv/bin/python" "$root/examples/python/backend_services.py" token \
  --base-url "$base" --ca pki/ca.crt --client-id "$client_id" --key private.pem --scope "system/Patient.rs system/Observation.rs" \
  --fhir-base "$base/fhir/p-seed" --expect-observations 2
# Bulk Data: the same client exports the partition (SMART Bulk Data Access 2.0): both
# Observations; the Practitioners its scopes do not grant are named in the error file.
"$venv/bin/python" "$root/examples/python/bulk_export.py" \
  --fhir-base "$base/fhir/p-seed" --ca pki/ca.crt --client-id "$client_id" --key private.pem \
  --scope "system/Patient.rs system/Observation.rs" --type Observation,Patient,Practitioner \
  --out "$work/export" --expect Observation=2 --expect-withheld Practitioner
test "$(wc -l < "$work/export/Observation-1.ndjson")" -eq 2
"$venv/bin/python" "$root/examples/python/bulk_export.py" \
  --fhir-base "$base/fhir/p-seed" --ca pki/ca.crt --client-id "$client_id" --key private.pem \
  --scope "system/Observation.rs" --cancel
echo "python example: passed"
