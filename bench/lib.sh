# Shared by the bench/ scripts: a fresh installation of the release build, its server
# pinned to CPU 0 with one worker, oha pinned to CPU 1, and a one-line report per run.
# Source it; it defines $bin, $work, $url, $out and the functions below.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="$root/bench/out"
mkdir -p "$out"
: >"$out/server.log" # the servers this script starts append to it

if ! command -v oha >/dev/null; then
  if [ ! -x /opt/oha/bin/oha ]; then
    echo "installing oha (cargo install oha --locked --root /opt/oha)"
    cargo install oha --locked --root /opt/oha
  fi
  export PATH="/opt/oha/bin:$PATH"
fi
(cd "$root" && cargo build --release --locked --quiet --bin tessera --example jwt_load)
# BENCH_BIN=PATH measures another build of tessera (an A/B against a scratch build).
bin="${BENCH_BIN:-$root/target/release/tessera}"

# BENCH_REUSE=DIR measures an installation a BENCH_KEEP run left (its data kept).
if [ -n "${BENCH_REUSE:-}" ]; then work=$BENCH_REUSE; export BENCH_KEEP=1; else work=$(mktemp -d); fi
server=""
# BENCH_KEEP=1 keeps the installation (its database) for a look afterwards.
cleanup() {
  # A server already stopped is fine (kill failing here would be the script's exit status).
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  if [ -n "${BENCH_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
if [ -z "${BENCH_REUSE:-}" ]; then
  "$bin" init --dir "$work" >/dev/null
  sed -i 's/^workers = 0/workers = 1/' "$work/config/tessera.toml"
fi
cd "$work"
url=https://127.0.0.1:18443

start_server() { # [seconds to wait for it, default 10]
  # Logs at warn: per-request info lines would measure the terminal, not the server.
  RUST_LOG=warn taskset -c 0 "$bin" serve --listen 127.0.0.1:18443 >>"$out/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 $((${1:-10} * 10))); do curl -fsS --cacert pki/ca.crt "$url/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "the server did not start; see $out/server.log" >&2
  return 1
}

# A partition and an mTLS client with system/*.cruds on it; sets $tls (curl's
# certificate arguments), $auth (its Bearer header) and $fhir (the partition's base).
bench_client() { # partition
  local partition=$1
  local mpi="urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/$(cat /proc/sys/kernel/random/uuid)"
  "$bin" account add --mpi-id "$mpi" --partition-name "$partition" >/dev/null
  "$bin" pki issue-client tcu --out clients >/dev/null
  "$bin" client add --client-id tcu --auth tls_client_auth --cert clients/tcu.crt \
    --scope "system/*.cruds" --partition "$partition" >/dev/null
  tls=(--cacert pki/ca.crt --cert clients/tcu.crt --key clients/tcu.key)
  local access
  access=$(curl -fsS "${tls[@]}" -d grant_type=client_credentials -d client_id=tcu \
    "$url/realms/cara/protocol/openid-connect/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  auth="Authorization: Bearer $access"
  fhir="$url/fhir/$partition"
}

# The mTLS token client bench-tcu (clients/bench.crt, .key) with system/*.rs; sets $token,
# the token endpoint's URL.
bench_token_client() {
  "$bin" pki issue-client bench --out clients >/dev/null
  "$bin" client add --client-id bench-tcu --auth tls_client_auth --cert clients/bench.crt --scope "system/*.rs" >/dev/null
  token="$url/realms/cara/protocol/openid-connect/token"
}

# The URL of a new Patient (family name $1) in bench_client's partition: the vault read's target.
bench_patient() {
  echo "$fhir/Patient/$(curl -fsS "${tls[@]}" -H "$auth" -H 'Content-Type: application/fhir+json' \
    -d "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"$1\"}]}" "$fhir/Patient" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
}

# Two more mTLS clients: `gateway` (introspection for the vault's audience) and `auditor`
# (system/AuditEvent.rs, ITI-81).
bench_gateway_and_auditor() {
  "$bin" pki issue-client gateway --out clients >/dev/null
  "$bin" client add --client-id gateway --auth tls_client_auth --cert clients/gateway.crt \
    --scope introspection --resource-server "$url/fhir" >/dev/null
  "$bin" pki issue-client auditor --out clients >/dev/null
  "$bin" client add --client-id auditor --auth tls_client_auth --cert clients/auditor.crt \
    --scope "system/AuditEvent.rs" >/dev/null
}

# A new access token of the auditor (five minutes).
auditor_token() {
  curl -fsS --cacert pki/ca.crt --cert clients/auditor.crt --key clients/auditor.key \
    -d grant_type=client_credentials -d client_id=auditor "$url/realms/cara/protocol/openid-connect/token" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

# examples/tls_floor.rs, the reference of new-handshake requests (issue 17), on CPU 0 at
# https://127.0.0.1:18444 (it idles while a server runs); sets $floor, stopped on exit.
start_tls_floor() {
  (cd "$root" && cargo build --release --locked --quiet --example tls_floor)
  taskset -c 0 "$root/target/release/examples/tls_floor" 127.0.0.1:18444 2>"$out/tls_floor.log" &
  floor=$!
  trap 'kill $floor 2>/dev/null || true; cleanup' EXIT
  sleep 0.5
}

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

# Each of the server's threads: its name and the nanoseconds it has run (the scheduler's
# own accounting, /proc/PID/task/TID/schedstat), one line each; threads_cpu_since
# prints what each ran since such a snapshot, in microseconds a 200 of the oha report
# given, and keeps the total and the actix workers' part beside the report (NAME.cpu).
threads_cpu() {
  local task
  for task in /proc/"$server"/task/*; do
    printf '%s %s %s\n' "$(tr ' ' _ <"$task/comm")" "${task##*/}" "$(cut -d' ' -f1 "$task/schedstat")"
  done 2>/dev/null
}

threads_cpu_since() { # snapshot, oha json
  python3 - "$1" "$(threads_cpu)" "$2" <<'PY'
import json, sys
def parse(text):  # thread id -> (name, ns)
    threads = {}
    for line in text.splitlines():
        name, tid, ns = line.rsplit(None, 2)
        threads[tid] = (name, int(ns))
    return threads
# By thread id: a thread that ended meanwhile (an idle blocking-pool thread) is left out,
# one that started is counted from zero.
before, after = parse(sys.argv[1]), parse(sys.argv[2])
answered = json.load(open(sys.argv[3])).get("statusCodeDistribution", {}).get("200", 0)
if answered:
    spent = {}
    for tid, (name, ns) in after.items():
        spent[name] = spent.get(name, 0) + ns - before.get(tid, (name, 0))[1]
    shown = [f"{name} {ns / answered / 1000:.2f}" for name, ns in sorted(spent.items(), key=lambda kv: -kv[1]) if ns / answered >= 50]
    total = sum(spent.values()) / answered / 1000
    workers = sum(ns for name, ns in spent.items() if name.startswith("actix-rt")) / answered / 1000
    print(f"   core a 200: {total:.2f} us = " + " + ".join(shown))
    with open(sys.argv[3][: -len(".json")] + ".cpu", "w") as kept:
        kept.write(f"{total} {workers}\n")
PY
}

run_oha() { # name, url, duration, extra oha args... ($content_type overrides the form type)
  local name=$1 target=$2 seconds=$3; shift 3
  taskset -c 1 oha --no-tui --output-format json -z "${seconds}s" -m "${method:-POST}" \
    -T "${content_type:-application/x-www-form-urlencoded}" --cacert pki/ca.crt "$@" "$target" >"$out/$name.json"
  report "$name" "$out/$name.json"
}
