#!/usr/bin/env bash
# Token endpoint benchmark (release build, oha). Server on CPU 0 with one worker, load on
# CPU 1, so the figures are per core of server. Scenarios:
#   mtls-keepalive   tls_client_auth over kept-alive mutual-TLS connections
#   mtls-handshake   tls_client_auth with a new TLS handshake (and client certificate) per request
#   secret-keepalive client_secret_basic over kept-alive connections
#   jwt-keepalive    private_key_jwt, a fresh signed assertion per request (examples/jwt_load.rs)
# Usage: bench/token.sh [seconds per scenario, default 10]
duration=${1:-10}
source "$(dirname "$0")/lib.sh"
start_server

bench_token_client
secret=$("$bin" client add --client-id bench-secret --auth client_secret_basic --scope "system/*.rs" | sed -n 's/^client_secret: //p')

echo "Tessera token endpoint, ${duration}s per scenario, server on 1 core (taskset -c 0), load on the other"
run_oha mtls-keepalive "$token" "$duration" -c 32 --cert clients/bench.crt --key clients/bench.key -d "grant_type=client_credentials&client_id=bench-tcu"
run_oha mtls-handshake "$token" "$duration" -c 32 --disable-keepalive --cert clients/bench.crt --key clients/bench.key -d "grant_type=client_credentials&client_id=bench-tcu"
run_oha secret-keepalive "$token" "$duration" -c 32 -a "bench-secret:$secret" -d "grant_type=client_credentials"
"$bin" client add --client-id bench-jwt --auth private_key_jwt --public-key "$("$root/target/release/examples/jwt_load" keygen "$work/jwt.key")" --scope "system/*.rs" >/dev/null
taskset -c 1 "$root/target/release/examples/jwt_load" load --key "$work/jwt.key" --client-id bench-jwt --token-url "$token" --ca pki/ca.crt --seconds "$duration" --connections 32
