#!/usr/bin/env bash
# Introspection benchmark (release build, oha): a resource server (mTLS gateway with the
# introspection scope) asks about access tokens, as an API gateway does per request.
# Server on CPU 0 with one worker, load on CPU 1. Scenarios:
#   introspect-active    one valid token, asked about repeatedly (the gateway's case)
#   introspect-garbage   a malformed token (answered inactive without a signature check)
# Every answer checks the database for a revocation (one primary-key read).
# Usage: bench/introspect.sh [seconds per scenario, default 10]
duration=${1:-10}
source "$(dirname "$0")/lib.sh"
start_server

"$bin" pki issue-client tcu --out clients >/dev/null
"$bin" pki issue-client gateway --out clients >/dev/null
"$bin" client add --client-id tcu --auth tls_client_auth --cert clients/tcu.crt --scope "system/*.rs" >/dev/null
"$bin" client add --client-id gateway --auth tls_client_auth --cert clients/gateway.crt --scope introspection --resource-server "$url/fhir" >/dev/null
access=$(curl -fsS --cacert pki/ca.crt --cert clients/tcu.crt --key clients/tcu.key \
  -d grant_type=client_credentials -d client_id=tcu "$url/realms/cara/protocol/openid-connect/token" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
introspect="$url/realms/cara/protocol/openid-connect/token/introspect"
active=$(curl -fsS --cacert pki/ca.crt --cert clients/gateway.crt --key clients/gateway.key -d client_id=gateway -d "token=$access" "$introspect")
echo "$active" | grep -q '"active":true' || { echo "the token is not active: $active" >&2; exit 1; }

echo "Tessera introspection, ${duration}s per scenario, server on 1 core (taskset -c 0), load on the other"
run_oha introspect-active "$introspect" "$duration" -c 32 --cert clients/gateway.crt --key clients/gateway.key -d "client_id=gateway&token=$access"
run_oha introspect-garbage "$introspect" "$duration" -c 32 --cert clients/gateway.crt --key clients/gateway.key -d "client_id=gateway&token=not-a-token"
