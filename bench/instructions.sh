#!/usr/bin/env bash
# Instructions per request of two or more builds, counted by valgrind's callgrind: the
# same count on every run of the same binary and load, whatever else the machine does,
# where requests per second on a shared VM move by 10-40% between runs (bench/ab.sh).
# It counts user-space instructions only: the kernel's share (network, task switches,
# the disk's syncs) is not in it, so it shows what a change does to the work, and
# bench/ab.sh what that work is worth in time. Nor does it see the CPU's crypto
# extensions as the hardware runs them (valgrind offers ring fewer: no SHA-NI), so a
# change to TLS or signing is measured with bench/ab.sh.
# Each build serves on one installation under callgrind; after a warm-up, the counters
# are reset and `count` requests are sent by one client, one at a time (a connection each
# for handshake; one kept-alive connection otherwise, whose handshake, about 17,000
# instructions a request at 200, is counted in), then the counters are dumped and
# divided by `count`, per thread (numbered as callgrind met them: at stop 30 the actix
# worker is the largest, t5 the audit drainer, t6 the journal) and in all.
# Usage: bench/instructions.sh COUNT BINARY BINARY... ; SCENARIOS picks from
#   handshake token introspect vault-read jwks (default: handshake token).
count=$1
shift
binaries=("$@")
[ ${#binaries[@]} -ge 2 ] || { echo "usage: bench/instructions.sh COUNT BINARY BINARY..." >&2; exit 2; }
command -v valgrind >/dev/null || { echo "needs valgrind (Debian: valgrind)" >&2; exit 2; }
BENCH_BIN=${binaries[0]}
source "$(dirname "$0")/lib.sh"

start_server
bench_client p-instructions
bench_gateway_and_auditor
token_url="$url/realms/cara/protocol/openid-connect/token"
read_url=$(bench_patient Count)
access=${auth#Authorization: Bearer }
kill "$server"; wait "$server" 2>/dev/null || true
server=""
# The repository's background indexer keeps up with a load this slow and would count
# each event's indexing (about a million instructions) into whichever request it follows.
sed -i 's/^index_events_per_second = .*/index_events_per_second = 0/' config/tessera.toml
mtls=(--cert clients/tcu.crt --key clients/tcu.key)

load() { # scenario, requests: one connection, one request at a time
  local common=(--no-tui --output-format json -n "$2" -c 1 --cacert pki/ca.crt)
  case $1 in
    handshake) oha "${common[@]}" --disable-keepalive -m POST -T application/x-www-form-urlencoded \
      "${mtls[@]}" -d "grant_type=client_credentials&client_id=tcu" "$token_url" ;;
    token) oha "${common[@]}" -m POST -T application/x-www-form-urlencoded "${mtls[@]}" \
      -d "grant_type=client_credentials&client_id=tcu" "$token_url" ;;
    introspect) oha "${common[@]}" -m POST -T application/x-www-form-urlencoded \
      --cert clients/gateway.crt --key clients/gateway.key -d "client_id=gateway&token=$access" \
      "$token_url/introspect" ;;
    vault-read) oha "${common[@]}" "${mtls[@]}" -H "$auth" "$read_url" ;;
    jwks) oha "${common[@]}" "${mtls[@]}" "$url/realms/cara/protocol/openid-connect/certs" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
  esac >"$out/instructions.json"
  python3 - "$out/instructions.json" "$2" <<'PY'
import json, sys
codes = json.load(open(sys.argv[1])).get("statusCodeDistribution", {})
if codes != {"200": int(sys.argv[2])}:
    sys.exit(f"not every request was answered 200: {codes}")
PY
}

for binary in "${binaries[@]}"; do
  name=$(basename "$binary")
  rm -f "$out"/callgrind.*
  RUST_LOG=warn valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$out/callgrind.%p" "$binary" serve --listen 127.0.0.1:18443 \
    >"$out/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 600); do curl -fsS --cacert pki/ca.crt "$url/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
  for scenario in ${SCENARIOS:-handshake token}; do
    load "$scenario" 20
    sleep 1
    callgrind_control --zero "$server" >/dev/null 2>&1
    load "$scenario" "$count"
    sleep 1
    rm -f "$out"/callgrind.*.*-*
    callgrind_control --dump="$scenario" "$server" >/dev/null 2>&1
    for _ in $(seq 1 100); do ls "$out"/callgrind.*.*-* >/dev/null 2>&1 && break; sleep 0.2; done
    sleep 1
    python3 - "$name" "$scenario" "$count" "$out" <<'PY'
import glob, re, sys
name, scenario, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
threads = {}
for path in glob.glob(f"{out}/callgrind.*.*-*"):
    text = open(path, errors="replace").read()
    if f"desc: Trigger: dump {scenario}" not in text:
        continue
    m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    thread = re.search(r"^thread:\s*(\d+)", text, re.M)
    threads[int(thread.group(1)) if thread else 0] = int(m.group(1)) if m else 0
total = sum(threads.values())
parts = "  ".join(f"t{t} {n / count:,.0f}" for t, n in sorted(threads.items()) if n / count >= 1000)
print(f"{name:14} {scenario:11} {total / count:12,.0f} instructions a request  ({parts})")
PY
  done
  kill "$server"; wait "$server" 2>/dev/null || true
  server=""
done
