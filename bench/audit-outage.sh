#!/usr/bin/env bash
# The audit trail's database away under load. The token endpoint (mTLS, kept-alive, 32
# connections) for N seconds while the drainer cannot append (SQLite; its chain table
# renamed away, so every append fails as with a database that is down), then the table
# back. Prints the server's memory before and at the end of the outage (VmRSS, and
# VmHWM, its peak), what the journal held, how long the drainer took to move it all, and
# `tessera audit verify` over the result. CRASH=1: the server is killed (kill -9) halfway
# through the catch-up and started again, timed: its drainer replays the journal.
# Usage: bench/audit-outage.sh [seconds of outage, default 30]   (BENCH_BIN: another build)
duration=${1:-30}
source "$(dirname "$0")/lib.sh"
start_server

bench_token_client

sql() { # statement; prints the first column of the first row, if any
  python3 - "$1" <<'PY'
import sqlite3, sys
db = sqlite3.connect("data/tessera.db", timeout=30)
row = db.execute(sys.argv[1]).fetchone()
db.commit()
if row: print(row[0])
PY
}
memory() { awk '/^VmRSS|^VmHWM/ { printf "%s %d MB  ", $1, $2 / 1024 }' "/proc/$server/status"; echo; }
journaled() { curl -fsS --cacert pki/ca.crt "$url/metrics" | awk '$1 == "tessera_audit_journal_records_total" { print $2 }'; }
journal_mb() { du -sm data/audit-journal | cut -f1; }
# The core the drainer thread ran since a snapshot of threads_cpu, in ms.
drainer_ms_since() {
  { echo "$1" | sed 's/^/before /'; threads_cpu | sed 's/^/after /'; } |
    awk '$2 == "audit-drainer" { ns[$1] += $4 } END { printf "%d", (ns["after"] - ns["before"]) / 1e6 }'
}
# When the drainer's next try was due as the database came back (ms since the epoch):
# its last failure's time plus the wait it logged (backoff of 50 ms doubling to 5 s).
retry_due_ms() {
  grep 'not yet in the database' "$out/server.log" | tail -n 1 | sed 's/\x1b\[[0-9;]*m//g' |
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^retry_in_ms=/) { split($i, kv, "="); print $1, kv[2] } }' |
    { read -r at wait && echo $(($(date -d "$at" +%s%3N) + wait)); }
}

sleep 1 # the start's own events reach the database
echo "before: $(memory)"
stored=$(sql "SELECT count(*) FROM audit_events")
before=$(journaled)
sql "ALTER TABLE audit_chains RENAME TO audit_chains_away"
echo "the database away for the drainer, ${duration}s of tokens meanwhile:"
run_oha outage "$token" "$duration" -c 32 --cert clients/bench.crt --key clients/bench.key -d "grant_type=client_credentials&client_id=bench-tcu"
echo "end of the outage: $(memory)journal $(journal_mb) MB on disk"
sql "ALTER TABLE audit_chains_away RENAME TO audit_chains"
wanted=$((stored + $(journaled) - before))
count() { sql "SELECT count(*) FROM audit_events"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
started=$(now_ms)
drainer_before=$(threads_cpu)
retry_due=$(retry_due_ms)
retry_due=${retry_due:-0}
if [ -n "${CRASH:-}" ]; then
  # Killed halfway through the catch-up: the next start replays the journal's segments,
  # skipping what the database already holds.
  while [ "$(count)" -lt $((stored + (wanted - stored) / 2)) ]; do sleep 0.05; done
  kill -9 "$server"
  wait "$server" 2>/dev/null || true
  echo "killed (kill -9) $(($(now_ms) - started)) ms into the catch-up, $(($(count) - stored)) events of the outage in the database"
  grep -c 'not yet in the database' "$out/server.log" | sed 's/^/append failures logged: /'
  restarted=$(now_ms)
  start_server 600
  drainer_before="" # a new process: its drainer from its start
  echo "answering again $(($(now_ms) - restarted)) ms after the start (its drainer replays the journal meanwhile): $(memory)"
fi
while [ "$(count)" -lt "$wanted" ]; do
  if [ $(($(now_ms) - started)) -gt 600000 ]; then
    echo "the database did not get all $wanted events in 10 minutes" >&2
    exit 1
  fi
  sleep 0.2
done
echo "the database back: all $((wanted - stored)) events of the outage moved in $(($(now_ms) - started)) ms; $(memory)"
# The wall time above begins inside the drainer's backoff: from its next try on is the
# catch-up itself, and the drainer's own core its cost.
drainer_ms=$(drainer_ms_since "$drainer_before")
waited=$((retry_due > started ? retry_due - started : 0))
if [ -n "${CRASH:-}" ]; then
  echo "  of which waiting for the first drainer's next try $waited ms; the core of the restarted one's drainer $drainer_ms ms"
else
  echo "  of which waiting for the drainer's next try $waited ms; its core in the catch-up $drainer_ms ms ($((drainer_ms * 1000000 / (wanted - stored))) ns an event)"
fi
[ -n "${CRASH:-}" ] || grep -c 'not yet in the database' "$out/server.log" | sed 's/^/append failures logged: /'
kill "$server"
wait "$server" 2>/dev/null || true
server=""
echo "events in the database: $(count); since the outage began $(($(count) - stored)), of which $((wanted - stored)) journaled in it (a restart adds its own start)"
"$bin" audit verify | tail -n 2
