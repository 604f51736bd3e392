#!/usr/bin/env bash
# Issue 17's ratios, both sides in one run: each endpoint against the floor it cannot beat
# on the same core, so the figure says how much of the server's time is Tessera's own
# work and stays comparable across machines and runs.
#   keep-alive (32 connections, mutual TLS):  the JWKS document (Tessera's own HTTP
#     floor: routing, TLS records, no database) against the token endpoint (audited),
#     introspection of an active token, and a vault read (token check and one row);
#   the audited ITI-81 query (an auditor's newest 10 events of the day, each query itself
#     audited and indexing what was appended since the one before), same floor;
#   a person's grants (examples/grant_load.rs, as bench/apps.sh: authorization with a
#     session, code exchange with PKCE, refresh with rotation) against the same JWKS floor;
#   new handshake per request (--disable-keepalive, a client certificate each time):
#     examples/tls_floor.rs (the same TLS configuration, a fixed answer, one thread)
#     against the token endpoint.
# Every pair runs back to back, ROUNDS times (default 2) alternating, and each ratio is
# printed per round, so the machine's drift shows.
# A ratio counts the answers that were 200 (the status of every run is printed).
# Under each keep-alive scenario, the core's microseconds a 200 by server thread (the
# scheduler's accounting); from them, each ratio again as if the audit's threads ran on
# a core of their own (the worker's microseconds against JWKS's): what durability on the
# same core costs the ratio. And the token's ceiling: a token costs at least JWKS's core
# a 200 plus one ES256 signature's (examples/sign_floor.rs, on the same core), so its
# ratio to JWKS is at most JWKS / (JWKS + signature).
# Server on CPU 0 with one worker, load on CPU 1.
# Usage: bench/floors.sh [seconds per scenario, default 10]
duration=${1:-10}
rounds=${ROUNDS:-2}
source "$(dirname "$0")/lib.sh"
(cd "$root" && cargo build --release --locked --quiet --example grant_load --example sign_floor)
# No background indexing of the audit repository: it would index the events of each
# round's last scenarios during the next round's JWKS (0.88 us of the core a JWKS answer,
# 9%, seen in the accounts by thread), lowering the floor. The first ITI-81 query of a
# round indexes them all instead, and is timed ("iti81 catch-up").
sed -i 's/^index_events_per_second = .*/index_events_per_second = 0/' config/tessera.toml
start_server
bench_client p-floor
bench_gateway_and_auditor
day=$(date -u +%Y-%m-%d)
iti81_url="$url/audit/fhir/AuditEvent?date=ge$day&_count=10"
access=${auth#Authorization: Bearer }
token_url="$url/realms/cara/protocol/openid-connect/token"
introspect="$token_url/introspect"
read_url=$(bench_patient Floor)
start_tls_floor

# A person's grants (as bench/apps.sh): a patient, their account, a public app.
person_account=$("$bin" account add --mpi-id "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/$(cat /proc/sys/kernel/random/uuid)" \
  --partition-name p-person | sed -n 's/^account    //p')
printf 'correct horse battery staple\n' > pw
"$bin" user add floor-patient --role patient --account "$person_account" --password-file pw >/dev/null
"$bin" client add --client-id floor-app --auth none --redirect-uri https://app.example/cb \
  --scope "launch/patient offline_access patient/*.rs" >/dev/null

mtls=(--cert clients/tcu.crt --key clients/tcu.key)
# Answers a second that were 200: a refusal (an expired token, say) is not served work.
rate() {
  if [ -f "$out/$1.json" ]; then
    python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get('statusCodeDistribution', {})
print(d['summary']['requestsPerSec'] * codes.get('200', 0) / max(1, sum(codes.values())))" "$out/$1.json"
  else
    cat "$out/$1.rate"
  fi
}
# JWKS's core a 200 against the endpoint's actix worker's alone (bench/lib.sh, NAME.cpu).
worker_ratio() {
  python3 -c "import sys; print(f'{float(sys.argv[2]) / float(sys.argv[1]) * 100:5.1f}%')" \
    "$(cut -d' ' -f2 "$out/$1.cpu")" "$(cut -d' ' -f1 "$out/jwks.cpu")"
}
# The token's ratio to JWKS were a token JWKS's work and one signature, nothing else; and
# how near the token endpoint's worker comes to that least cost (the least / its own).
token_ceiling() {
  python3 -c "
import sys
jwks, worker, sign = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f'{jwks / (jwks + sign) * 100:5.1f}% (JWKS {jwks:.1f} us + one signature {sign:.1f} us of the core);' +
      f' the worker\'s {worker:.1f} us a token is {(jwks + sign) / worker * 100:.1f}% efficient against it')" \
    "$(cut -d' ' -f1 "$out/jwks.cpu")" "$(cut -d' ' -f2 "$out/token.cpu")" \
    "$(sed -n 's/^es256 signature: \([0-9.]*\) us.*/\1/p' "$out/sign.txt")"
}
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]) * 100:5.1f}%')" "$(rate "$1")" "$(rate "$2")"; }

echo "Tessera against its floors, ${duration}s per scenario, server on 1 core (taskset -c 0), load on the other, $rounds rounds"
for round in $(seq 1 "$rounds"); do
  echo "-- round $round"
  # A fresh vault token each round: tokens live five minutes, a round about two.
  access=$(curl -fsS "${tls[@]}" -d grant_type=client_credentials -d client_id=tcu "$token_url" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  auth="Authorization: Bearer $access"
  before=$(threads_cpu)
  method=GET run_oha jwks "$url/realms/cara/protocol/openid-connect/certs" "$duration" -c 32 "${mtls[@]}"
  threads_cpu_since "$before" "$out/jwks.json"
  # One ES256 signature on the server's core (examples/sign_floor.rs): the token's floor
  # is JWKS's answer and this.
  taskset -c 0 "$root/target/release/examples/sign_floor" | tee "$out/sign.txt"
  # The person's grants first, before the audited scenarios leave records to drain:
  # authorization (302 with a code), code exchange, refresh.
  taskset -c 1 "$root/target/release/examples/grant_load" --base "$url" --ca pki/ca.crt \
    --client-id floor-app --user floor-patient --password-file pw --seconds "$duration" --connections 32 \
    | tee "$out/grants.txt"
  for phase in authorize exchange refresh; do
    rm -f "$out/$phase.json"
    awk -v p="$phase" '$1 == p { print $2 }' "$out/grants.txt" > "$out/$phase.rate"
  done
  before=$(threads_cpu)
  run_oha token "$token_url" "$duration" -c 32 "${mtls[@]}" -d "grant_type=client_credentials&client_id=tcu"
  threads_cpu_since "$before" "$out/token.json"
  before=$(threads_cpu)
  run_oha introspect "$introspect" "$duration" -c 32 --cert clients/gateway.crt --key clients/gateway.key \
    -d "client_id=gateway&token=$access"
  threads_cpu_since "$before" "$out/introspect.json"
  before=$(threads_cpu)
  method=GET run_oha vault-read "$read_url" "$duration" -c 32 "${mtls[@]}" -H "$auth"
  threads_cpu_since "$before" "$out/vault-read.json"
  # The repository indexes what the trail gained since the last query when it is next
  # queried: the first query after the load above pays for all of it, the measured ones
  # for the events of the queries before them (each query is audited too).
  started=$(date +%s.%N)
  auditor=$(auditor_token)
  curl -fsS --max-time 3600 --cacert pki/ca.crt --cert clients/auditor.crt --key clients/auditor.key \
    -H "Authorization: Bearer $auditor" "$iti81_url" >/dev/null
  python3 -c "import sys; print(f'{\"iti81 catch-up\":18} {float(sys.argv[2]) - float(sys.argv[1]):9.1f} s for the events of this round so far')" \
    "$started" "$(date +%s.%N)"
  # The catch-up can outlast a token (five minutes): a fresh one for the measured queries.
  auditor=$(auditor_token)
  method=GET run_oha iti81 "$iti81_url" "$duration" -c 32 --cert clients/auditor.crt \
    --key clients/auditor.key -H "Authorization: Bearer $auditor"
  # The same without the exact total (FHIR `_total=none`): the newest page alone.
  method=GET run_oha iti81-no-total "$iti81_url&_total=none" "$duration" -c 32 --cert clients/auditor.crt \
    --key clients/auditor.key -H "Authorization: Bearer $auditor"
  method=GET run_oha tls-floor "https://127.0.0.1:18444/" "$duration" -c 32 --disable-keepalive "${mtls[@]}"
  run_oha token-handshake "$token_url" "$duration" -c 32 --disable-keepalive "${mtls[@]}" \
    -d "grant_type=client_credentials&client_id=tcu"
  echo "   token / jwks $(ratio token jwks) (goal 60%)   introspection / jwks $(ratio introspect jwks) (goal 70%)   vault read / jwks $(ratio vault-read jwks) (goal 70%)"
  echo "   the same from the actix worker's core a 200 alone (JWKS's whole core a 200 / the endpoint's worker's;" \
    "the audit journal and drainer left out, as if on a core of their own):" \
    "token $(worker_ratio token) introspection $(worker_ratio introspect) vault read $(worker_ratio vault-read)"
  echo "   the token's ceiling on this core: $(token_ceiling)"
  echo "   ITI-81 query / jwks $(ratio iti81 jwks)   without its total / jwks $(ratio iti81-no-total jwks)"
  echo "   authorize / jwks $(ratio authorize jwks)   code exchange / jwks $(ratio exchange jwks)   refresh / jwks $(ratio refresh jwks)"
  echo "   new-handshake token / TLS floor $(ratio token-handshake tls-floor) (goal 80%)"
done
