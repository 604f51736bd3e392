#!/usr/bin/env bash
# Where the server's core goes on each hot path (issue 17): the server (one worker, CPU 0)
# under oha load (32 connections, CPU 1) while `perf record -F 999 -g` samples it for
# the given seconds; the samples grouped into kernel, crypto, allocator and copies,
# routing regexes, the database, JSON, and the rest (Tessera, actix, rustls).
# Needs perf (Debian linux-perf) and the right to sample (root, or perf_event_paranoid <= 1).
# Usage: bench/profile.sh [seconds, default 10] [scenario...]
#   scenarios: token introspect vault-read iti81 catch-up handshake tls-floor (default: the
#   first five). catch-up: the audit repository indexing what `seconds` of token load
#   appended, as the next ITI-81 query does first (sampled for as long as that query
#   takes). handshake: tokens with a new mutual-TLS handshake each; tls-floor: the same
#   load on examples/tls_floor.rs (issue 17's reference for it), sampled the same way, so
#   the two profiles side by side show what a connection costs beyond mutual TLS.
duration=${1:-10}
shift || true
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(token introspect vault-read iti81 catch-up)
source "$(dirname "$0")/lib.sh"
start_server
bench_client p-profile
bench_gateway_and_auditor
token_url="$url/realms/cara/protocol/openid-connect/token"
mtls=(--cert clients/tcu.crt --key clients/tcu.key)
access=${auth#Authorization: Bearer }
auditor=$(auditor_token)
read_url=$(bench_patient Profile)
day=$(date -u +%Y-%m-%d)

load() { # scenario: oha for duration + 2 s in the background
  local common=(--no-tui -z "$((duration + 2))s" -c 32 --cacert pki/ca.crt)
  case $1 in
    token) taskset -c 1 oha "${common[@]}" -m POST -T application/x-www-form-urlencoded "${mtls[@]}" \
      -d "grant_type=client_credentials&client_id=tcu" "$token_url" ;;
    introspect) taskset -c 1 oha "${common[@]}" -m POST -T application/x-www-form-urlencoded \
      --cert clients/gateway.crt --key clients/gateway.key -d "client_id=gateway&token=$access" \
      "$token_url/introspect" ;;
    vault-read) taskset -c 1 oha "${common[@]}" "${mtls[@]}" -H "$auth" "$read_url" ;;
    handshake) taskset -c 1 oha "${common[@]}" -m POST -T application/x-www-form-urlencoded "${mtls[@]}" \
      --disable-keepalive -d "grant_type=client_credentials&client_id=tcu" "$token_url" ;;
    tls-floor) taskset -c 1 oha "${common[@]}" "${mtls[@]}" --disable-keepalive https://127.0.0.1:18444/ ;;
    iti81) taskset -c 1 oha "${common[@]}" --cert clients/auditor.crt --key clients/auditor.key \
      -H "Authorization: Bearer $auditor" "$url/audit/fhir/AuditEvent?date=ge$day&_count=10" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
  esac
}

summarize() { # scenario, rate, perf report
  python3 - "$1" "$2" "$3" <<'PY'
import re, sys
scenario, rate, path = sys.argv[1], sys.argv[2], sys.argv[3]
groups = [
    ("kernel", lambda s: s.startswith("[k]")),
    ("crypto", lambda s: re.search(r"ring|p256|nistz|x25519|sha256|sha512|aes|gcm|chacha|poly1305|bn_mul|ecp_", s)),
    ("alloc+copy", lambda s: re.search(r"malloc|free|realloc|memcpy|memmove|memset|_int_|tcache|alloc::", s)),
    ("regex", lambda s: re.search(r"regex", s)),
    ("database", lambda s: re.search(r"sqlite3|diesel|libpq|pq[A-Z]", s)),
    ("json", lambda s: re.search(r"serde_json", s)),
]
totals = {name: 0.0 for name, _ in groups}
rest, top = 0.0, []
for line in open(path):
    m = re.match(r"\s+([\d.]+)%\s+(.*)$", line)
    if not m:
        continue
    share, sym = float(m.group(1)), m.group(2).strip()
    top.append((share, sym))
    for name, match in groups:
        if match(sym):
            totals[name] += share
            break
    else:
        rest += share
cells = "  ".join(f"{name} {share:4.1f}%" for name, share in totals.items())
print(f"{scenario:11} {rate:>10}/s under perf  {cells}  rest {rest:4.1f}%")
for share, sym in sorted(top, reverse=True)[:8]:
    print(f"    {share:5.2f}%  {sym[:110]}")
PY
}

# The first ITI-81 query, which indexes what the trail gained since the one before.
first_query() {
  curl -fsS --max-time 3600 --cacert pki/ca.crt --cert clients/auditor.crt --key clients/auditor.key \
    -H "Authorization: Bearer $auditor" "$url/audit/fhir/AuditEvent?date=ge$day&_count=1" >/dev/null
}
trail() { "$bin" audit deliveries | sed -n 's/^trail: \([0-9]*\) events.*/\1/p'; }

for scenario in "${scenarios[@]}"; do
  if [ "$scenario" = catch-up ]; then
    first_query
    before=$(trail)
    load token >/dev/null 2>&1
    sleep 1
    added=$(( $(trail) - before ))
    started=$(date +%s%N)
    perf record -q -F 999 -g -p "$server" -o "$out/profile-catch-up.data" -- sleep 3600 2>/dev/null &
    recorder=$!
    first_query
    elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
    kill -INT "$recorder"; wait "$recorder" || true
    perf report -i "$out/profile-catch-up.data" --stdio --no-children --sort sym -g none 2>/dev/null \
      >"$out/profile-catch-up.txt"
    summarize catch-up "$(( added * 1000 / elapsed_ms )) events" "$out/profile-catch-up.txt"
    echo "    ($added events indexed in $elapsed_ms ms)"
    continue
  fi
  if [ "$scenario" = iti81 ]; then
    # Index what the scenarios before left first: the profile is of the query.
    first_query
  fi
  sampled=$server
  if [ "$scenario" = tls-floor ]; then
    start_tls_floor
    sampled=$floor
  fi
  load "$scenario" >"$out/profile-$scenario.oha" 2>&1 &
  loader=$!
  sleep 1
  perf record -q -F 999 -g -p "$sampled" -o "$out/profile-$scenario.data" -- sleep "$duration" 2>/dev/null
  wait "$loader"
  if [ "$sampled" != "$server" ]; then
    kill "$sampled"; wait "$sampled" 2>/dev/null || true
  fi
  rate=$(awk '/Requests\/sec/ { print $2 }' "$out/profile-$scenario.oha")
  perf report -i "$out/profile-$scenario.data" --stdio --no-children --sort sym -g none 2>/dev/null \
    >"$out/profile-$scenario.txt"
  summarize "$scenario" "$rate" "$out/profile-$scenario.txt"
done
