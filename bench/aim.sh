#!/usr/bin/env bash
# AIM benchmark (release build, oha): resolutions of an MPI-ID to its Account URN over
# mutual TLS with a certificate-bound access token, as CARA's external systems call it.
# Each request verifies the token (cached), reads its revocation row and looks the
# MPI-ID up. Server on CPU 0 with one worker, load on CPU 1.
# Usage: bench/aim.sh [seconds, default 10]
duration=${1:-10}
source "$(dirname "$0")/lib.sh"
start_server

mpi="urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1"
"$bin" account add --mpi-id "$mpi" >/dev/null
"$bin" pki issue-client tcu --out clients >/dev/null
"$bin" client add --client-id tcu --auth tls_client_auth --cert clients/tcu.crt --scope aim/resolve >/dev/null
access=$(curl -fsS --cacert pki/ca.crt --cert clients/tcu.crt --key clients/tcu.key \
  -d grant_type=client_credentials -d client_id=tcu "$url/realms/cara/protocol/openid-connect/token" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
resolve="$url/aim/api/v1/query/get-account-urn-from-mpi-id-urn"
body="{\"mpiIdUrn\":\"$mpi\"}"
curl -fsS --cacert pki/ca.crt --cert clients/tcu.crt --key clients/tcu.key -H "Authorization: Bearer $access" \
  -H 'Content-Type: application/json' -d "$body" "$resolve" | grep -q accountUrn

echo "Tessera AIM resolution, ${duration}s, server on 1 core (taskset -c 0), load on the other"
content_type=application/json run_oha aim-resolve "$resolve" "$duration" -c 32 \
  --cert clients/tcu.crt --key clients/tcu.key -H "Authorization: Bearer $access" -d "$body"
