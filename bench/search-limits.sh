#!/usr/bin/env bash
# The worst search one request may still ask for within the bounds on search cost.
# A partition of 10,000 Patients; each search within the bounds of
# tessera_vault::search (16 parameters, 32 values, 4 sort keys, 4096 bytes) makes up to
# 32 passes over the index. Measured: the seed-like single-value search, the widest
# allowed searches, and a request past the bounds (refused with 400 before it runs).
# Server on CPU 0 with one worker, load on CPU 1, 4 connections.
# Usage: bench/search-limits.sh [seconds, default 10]
duration=${1:-10}
source "$(dirname "$0")/lib.sh"
start_server

bench_client p-bench

echo "loading 10,000 Patients (10 transactions of 1,000)"
for batch in $(seq 0 9); do
  python3 - "$batch" >"$work/load.json" <<'PY'
import json, sys
batch = int(sys.argv[1])
families = ["Muster", "Meier", "Keller", "Weber", "Huber", "Schneider", "Brunner", "Steiner", "Baumann", "Fischer"]
entries = [{"resource": {"resourceType": "Patient", "active": True,
                         "name": [{"family": f"{families[i % 10]}{i % 97}", "given": [f"G{i}"]}],
                         "birthDate": f"19{50 + i % 50}-{1 + i % 12:02d}-{1 + i % 28:02d}"},
            "request": {"method": "POST", "url": "Patient"}}
           for i in range(batch * 1000, batch * 1000 + 1000)]
print(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
PY
  curl -fsS -o /dev/null "${tls[@]}" -H "$auth" -H 'Content-Type: application/fhir+json' --data-binary @"$work/load.json" "$fhir"
done

values=$(python3 -c 'print(",".join(f"Zz{i}" for i in range(32)))')
params=$(python3 -c 'print("&".join(f"family=Zz{i},Yy{i}" for i in range(16)))')
dates=$(python3 -c 'print("&".join("birthdate=ge1950-01-01,le2001-01-01" for i in range(16)))')
past=$(python3 -c 'print("&".join(f"family=x{i}" for i in range(1000)))')
one="$fhir/Patient?family=Muster1&_count=10"
curl -fsS "${tls[@]}" -H "$auth" "$one" | grep -q '"resourceType":"Bundle"'
test "$(curl -s -o /dev/null -w '%{http_code}' "${tls[@]}" -H "$auth" "$fhir/Patient?$past")" = 400

echo "Tessera FHIR Vault search bounds, ${duration}s each, 10,000 Patients, server on 1 core (taskset -c 0), 4 connections"
method=GET run_oha search-one-value "$one" "$duration" -c 4 "${tls[@]:2}" -H "$auth"
method=GET run_oha search-32-values "$fhir/Patient?family=$values&_count=10" "$duration" -c 4 "${tls[@]:2}" -H "$auth"
method=GET run_oha search-16x2-params "$fhir/Patient?$params&_count=10" "$duration" -c 4 "${tls[@]:2}" -H "$auth"
method=GET run_oha search-16x2-dates "$fhir/Patient?$dates&_count=10&_sort=birthdate" "$duration" -c 4 "${tls[@]:2}" -H "$auth"
method=GET run_oha search-past-bounds "$fhir/Patient?$past" "$duration" -c 4 "${tls[@]:2}" -H "$auth"
