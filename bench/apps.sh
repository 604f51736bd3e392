#!/usr/bin/env bash
# A person's grants (SMART App Launch), release build: server on CPU 0 with one worker,
# load on CPU 1 (examples/grant_load.rs: every code and refresh token is used once, which
# oha cannot do). A patient logs in and consents once; then, for N seconds each:
#   authorize  the authorization endpoint with the session, consent remembered: a code each
#   exchange   those codes exchanged with PKCE (authorization_code grant, public client)
#   refresh    refresh_token grant, 32 chains rotating (each answer carries the next token)
# Every one is audited durably, as in production.
# Usage: bench/apps.sh [seconds per phase, default 10]
duration=${1:-10}
source "$(dirname "$0")/lib.sh"
(cd "$root" && cargo build --release --locked --quiet --example grant_load)
start_server

account=$("$bin" account add --mpi-id "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/$(cat /proc/sys/kernel/random/uuid)" --partition-name p-bench | sed -n 's/^account    //p')
printf 'correct horse battery staple\n' > pw
"$bin" user add bench-patient --role patient --account "$account" --password-file pw >/dev/null
"$bin" client add --client-id bench-app --auth none --redirect-uri https://app.example/cb \
  --scope "launch/patient offline_access patient/*.rs" >/dev/null

echo "Tessera person grants, ${duration}s per phase, server on 1 core (taskset -c 0), load on the other"
taskset -c 1 "$root/target/release/examples/grant_load" --base "$url" --ca pki/ca.crt \
  --client-id bench-app --user bench-patient --password-file pw --seconds "$duration" --connections 32
