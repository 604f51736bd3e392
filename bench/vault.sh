#!/usr/bin/env bash
# FHIR Vault benchmark (release build, oha): authorized reads and searches over mutual
# TLS with a certificate-bound access token, as a CARA technical user calls the vault.
# Every request verifies the token (signature cached per token), reads its revocation
# row, checks the certificate binding, partition and scope, then reads the database.
# The partition holds one patient's record: 200 Observations, 50 of them HbA1c.
# Server on CPU 0 with one worker, load on CPU 1.
# Usage: bench/vault.sh [seconds, default 10] [database URL, default the embedded SQLite]
duration=${1:-10}
database=${2:-}
source "$(dirname "$0")/lib.sh"
if [ -n "$database" ]; then export TESSERA_DATABASE_URL="$database"; "$bin" init --dir "$work" >/dev/null; fi
start_server

bench_client p-bench

# One transaction loads the record.
python3 - >"$work/load.json" <<'PY'
import json
entries = [{"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000000",
            "resource": {"resourceType": "Patient", "name": [{"family": "Bench", "given": ["Anna"]}]},
            "request": {"method": "POST", "url": "Patient"}}]
for i in range(200):
    code = "4548-4" if i % 4 == 0 else ["8867-4", "8480-6", "29463-7"][i % 3]
    entries.append({"resource": {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"},
        "effectiveDateTime": f"20{10 + i % 15}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "valueQuantity": {"value": 5 + i % 3, "unit": "%"}},
        "request": {"method": "POST", "url": "Observation"}})
print(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
PY
location=$(curl -fsS "${tls[@]}" -H "$auth" -H 'Content-Type: application/fhir+json' --data-binary @"$work/load.json" "$fhir" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["entry"][1]["response"]["location"].split("/_history")[0])')
read_url="$fhir/$location"
search_url="$fhir/Observation?code=4548-4&_sort:desc=date&_count=10"
curl -fsS "${tls[@]}" -H "$auth" "$read_url" | grep -q '"resourceType":"Observation"'
curl -fsS "${tls[@]}" -H "$auth" "$search_url" | grep -q '"total":50'

backend=${database%%:*}
echo "Tessera FHIR Vault, ${duration}s each, ${backend:-sqlite}, server on 1 core (taskset -c 0), load on the other"
method=GET run_oha vault-read "$read_url" "$duration" -c 32 "${tls[@]:2}" -H "$auth"
method=GET run_oha vault-search "$search_url" "$duration" -c 32 "${tls[@]:2}" -H "$auth"
