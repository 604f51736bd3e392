#!/usr/bin/env bash
# Runs the seed 002 Python client end to end against a fresh Tessera: init, serve,
# keygen, registration by the operator, token request, verification, replay refusal.
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

client_id=$(cat /proc/sys/kernel/random/uuid)
"$venv/bin/python" "$root/examples/python/backend_services.py" keygen "$work"
"$bin" client add --client-id "$client_id" --auth private_key_jwt --public-key public.pem --scope "system/Patient.rs system/Observation.rs"
"$venv/bin/python" "$root/examples/python/backend_services.py" token \
  --base-url "https://127.0.0.1:$port" --ca pki/ca.crt --client-id "$client_id" --key private.pem --scope system/Patient.rs
echo "python example: passed"
