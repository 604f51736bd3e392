#!/usr/bin/env bash
# What a unique index on the trail's event ids would cost now that the ids are
# time-ordered (UUIDv7): audited mTLS token requests on one server, alternately without
# the index and with it created, so both see the same process and a trail of about the
# same size (README: Benchmarks). Usage: bench/audit-index.sh [seconds per run, default 15] [rounds, default 3]
duration=${1:-15}
rounds=${2:-3}
source "$(dirname "$0")/lib.sh"
start_server
bench_token_client
index() { python3 -c 'import sqlite3,sys; c=sqlite3.connect("data/tessera.db"); c.execute(sys.argv[1]); c.commit()' "$1"; }

echo "audited mTLS tokens, ${duration}s a run, server on 1 core (taskset -c 0), 32 connections"
for round in $(seq 1 "$rounds"); do
  index "DROP INDEX IF EXISTS audit_events_id"
  run_oha "without-index-$round" "$token" "$duration" -c 32 --cert clients/bench.crt --key clients/bench.key -d "grant_type=client_credentials&client_id=bench-tcu"
  index "CREATE UNIQUE INDEX IF NOT EXISTS audit_events_id ON audit_events (id)"
  run_oha "with-index-$round" "$token" "$duration" -c 32 --cert clients/bench.crt --key clients/bench.key -d "grant_type=client_credentials&client_id=bench-tcu"
done
echo "trail: $(python3 -c 'import sqlite3; print(sqlite3.connect("data/tessera.db").execute("SELECT COUNT(*) FROM audit_events").fetchone()[0])') events"
