#!/usr/bin/env bash
# Token endpoint benchmark on a release build, with oha.
#
# The server runs pinned to CPU 0 with one worker; the load generator runs on CPU 1, so
# the figures are per core of server. Scenarios:
#   mtls-keepalive   tls_client_auth over kept-alive mutual-TLS connections
#   mtls-handshake   tls_client_auth with a new TLS handshake (and client certificate) per request
#   secret-keepalive client_secret_basic over kept-alive connections
#   jwt-keepalive    private_key_jwt, a fresh signed assertion per request (bench/jwt_load)
#
# Usage: bench/token.sh [seconds per scenario, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
duration=${1:-10}
out="$root/bench/out"
mkdir -p "$out"

if ! command -v oha >/dev/null; then
  if [ -x /opt/oha/bin/oha ]; then export PATH="/opt/oha/bin:$PATH"; else
    echo "installing oha (cargo install oha --locked --root /opt/oha)"; cargo install oha --locked --root /opt/oha; export PATH="/opt/oha/bin:$PATH"
  fi
fi
cargo build --release --locked --quiet --bin tessera --example jwt_load
bin="$root/target/release/tessera"

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
"$bin" init --dir "$work" >/dev/null
cd "$work"
sed -i 's/^workers = 0/workers = 1/' config/tessera.toml
# Server: one worker on CPU 0. Logs at warn: per-request info lines would measure the terminal.
RUST_LOG=warn taskset -c 0 "$bin" serve --listen 127.0.0.1:18443 >"$out/server.log" 2>&1 &
server=$!
url=https://127.0.0.1:18443
for _ in $(seq 1 100); do curl -fsS --cacert pki/ca.crt "$url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

"$bin" pki issue-client bench --out clients >/dev/null
"$bin" client add --client-id bench-tcu --auth tls_client_auth --cert clients/bench.crt --scope "system/*.rs" >/dev/null
secret=$("$bin" client add --client-id bench-secret --auth client_secret_basic --scope "system/*.rs" | sed -n 's/^client_secret: //p')
token="$url/realms/cara/protocol/openid-connect/token"

report() { # name, oha json
  python3 - "$1" "$2" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
print(f"{name:18} {s['requestsPerSec']:9.0f} req/s  p50 {p['p50']*1000:6.2f} ms  p99 {p['p99']*1000:6.2f} ms  status {codes}")
PY
}

run_oha() { # name, extra oha args...
  local name=$1; shift
  taskset -c 1 oha --no-tui --output-format json -z "${duration}s" -m POST \
    -T application/x-www-form-urlencoded --cacert pki/ca.crt "$@" "$token" >"$out/$name.json"
  report "$name" "$out/$name.json"
}

echo "Tessera token endpoint, ${duration}s per scenario, server on 1 core (taskset -c 0), oha on the other"
run_oha mtls-keepalive -c 32 --cert clients/bench.crt --key clients/bench.key -d "grant_type=client_credentials&client_id=bench-tcu"
run_oha mtls-handshake -c 32 --disable-keepalive --cert clients/bench.crt --key clients/bench.key -d "grant_type=client_credentials&client_id=bench-tcu"
run_oha secret-keepalive -c 32 -a "bench-secret:$secret" -d "grant_type=client_credentials"
"$bin" client add --client-id bench-jwt --auth private_key_jwt --public-key "$("$root/target/release/examples/jwt_load" keygen "$work/jwt.key")" --scope "system/*.rs" >/dev/null
taskset -c 1 "$root/target/release/examples/jwt_load" load --key "$work/jwt.key" --client-id bench-jwt --token-url "$token" --ca pki/ca.crt --seconds "$duration" --connections 32
