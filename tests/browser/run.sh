#!/usr/bin/env bash
# A real headless Chromium (Debian's package; nothing downloaded) through Tessera's
# login and consent pages against a fresh `tessera serve`: see flow.mjs.
# Then openid-client (a real OIDC client library) does a standalone launch: library.mjs.
# Then the audit console, as an auditor and as a patient: console.mjs.
# Screenshots land in target/browser/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
cargo build --locked --quiet
bin="$root/target/debug/tessera"
npm ci --prefix tests/browser --no-audit --no-fund --silent
shots="$root/target/browser"
mkdir -p "$shots"

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" init --dir "$work" >/dev/null
cd "$work"
TESSERA_SERVER_LISTEN="127.0.0.1:$port" "$bin" serve >serve.log 2>&1 &
server=$!
for _ in $(seq 1 50); do
  curl -fsS --cacert pki/ca.crt "https://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
base="https://127.0.0.1:$port"

accounts=()
for p in pa pb; do
  accounts+=("$("$bin" account add --mpi-id "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/$(cat /proc/sys/kernel/random/uuid)" --partition-name "$p" | sed -n 's/^account    //p')")
done
printf 'correct horse battery staple\n' > pw
"$bin" user add rita --role representative --account "${accounts[0]}" --account "${accounts[1]}" --password-file pw >/dev/null
"$bin" user add audrey --role auditor --password-file pw >/dev/null
"$bin" user add anna --role patient --account "${accounts[0]}" --fhir-user Patient/anna --password-file pw >/dev/null
"$bin" client add --client-id browser-app --auth none --redirect-uri https://app.example/cb \
  --scope "openid launch/patient patient/*.rs" >/dev/null
"$bin" client add --client-id library-app --auth none --redirect-uri https://app.example/cb \
  --scope "openid fhirUser launch/patient offline_access patient/*.rs" >/dev/null
secret=$("$bin" client add --client-id loader --auth client_secret_post --scope "system/*.cruds" --partition pa --partition pb | sed -n 's/^client_secret: //p')
loader=$(curl -fsS --cacert pki/ca.crt -d grant_type=client_credentials -d client_id=loader -d "client_secret=$secret" \
  "$base/realms/cara/protocol/openid-connect/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
for p in pa pb; do
  curl -fsS --cacert pki/ca.crt -H "Authorization: Bearer $loader" -H 'Content-Type: application/fhir+json' \
    -d '{"resourceType":"Patient","name":[{"family":"Muster"}]}' "$base/fhir/$p/Patient" >/dev/null
  for c in laboratory vital-signs; do
    curl -fsS --cacert pki/ca.crt -H "Authorization: Bearer $loader" -H 'Content-Type: application/fhir+json' \
      -d '{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"'$c'"}]}],"code":{"text":"'$c'"}}' \
      "$base/fhir/$p/Observation" >/dev/null
  done
done
node "$root/tests/browser/flow.mjs" "$base" pki/ca.crt "$shots"
NODE_EXTRA_CA_CERTS="$PWD/pki/ca.crt" node "$root/tests/browser/library.mjs" "$base"
node "$root/tests/browser/console.mjs" "$base" "${accounts[1]}" "$shots"
