#!/usr/bin/env bash
# Bulk Data export at scale (issue 15): how long a partition of $BIG Observations (default
# 100,000, loaded as bench/search-scale.sh loads partition "big") takes to export, and to
# download, as a Bulk Data client sees it: kick-off, polling the status URL every 0.2 s,
# then every NDJSON file of the manifest one after another over one mutual-TLS
# connection. Three exports: the system level (Observation and Patient), the Patient
# level (the one Patient's compartment: the 999 Observations that name it, found by
# reference among the $BIG), and the system level again while 32 connections read one
# Observation (oha) for as long as the first export took, to see what an export costs
# the readers and what they cost it.
# Server on CPU 0 with one worker, client and load on CPU 1.
# Usage: bench/export.sh [database URL, default the embedded SQLite]
#        BIG=100000 bench/export.sh postgres://postgres@127.0.0.1:5432/export
database=${1:-}
big=${BIG:-100000}
source "$(dirname "$0")/lib.sh"
if [ -n "$database" ]; then export TESSERA_DATABASE_URL="$database"; "$bin" init --dir "$work" >/dev/null; fi
start_server
bench_client big
access=${auth#Authorization: Bearer }
started=$(date +%s)
taskset -c 1 python3 "$root/bench/load.py" "$url" "$access" "$big" 0
echo "resources: $((big + 1)) in $(( $(date +%s) - started )) s"
if [ -n "$database" ]; then psql -q "$database" -c ANALYZE; fi
access=$(curl -fsS "${tls[@]}" -d grant_type=client_credentials -d client_id=tcu \
  "$url/realms/cara/protocol/openid-connect/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

export_once() { # label, kick-off path and query
  taskset -c 1 python3 - "$url" "$access" "$1" "$2" <<'PY'
import http.client, json, ssl, sys, time
url, token, label, path = sys.argv[1:5]
ctx = ssl.create_default_context(cafile="pki/ca.crt")
ctx.load_cert_chain("clients/tcu.crt", "clients/tcu.key")
conn = http.client.HTTPSConnection(url.split("//")[1], context=ctx)
auth = {"Authorization": f"Bearer {token}"}
started = time.monotonic()
conn.request("GET", path, headers={**auth, "Accept": "application/fhir+json", "Prefer": "respond-async"})
reply = conn.getresponse(); reply.read()
assert reply.status == 202, reply.status
status = reply.getheader("Content-Location").split("//", 1)[1].split("/", 1)[1]
while True:
    conn.request("GET", "/" + status, headers=auth)
    reply = conn.getresponse(); body = reply.read()
    if reply.status == 200:
        break
    assert reply.status == 202, (reply.status, body[:200])
    time.sleep(0.2)
exported = time.monotonic() - started
manifest = json.loads(body)
resources = sum(f["count"] for f in manifest["output"])
started = time.monotonic()
size = 0
for f in manifest["output"]:
    conn.request("GET", "/" + f["url"].split("//", 1)[1].split("/", 1)[1], headers=auth)
    reply = conn.getresponse(); data = reply.read()
    assert reply.status == 200 and data.count(b"\n") == f["count"], reply.status
    size += len(data)
downloaded = time.monotonic() - started
conn.request("DELETE", "/" + status, headers=auth); conn.getresponse().read()
open("export-seconds", "w").write(f"{exported:.0f}")
print(f"{label:26} {resources:7} resources in {len(manifest['output']):3} files: "
      f"export {exported:6.2f} s ({resources / exported:7.0f}/s), "
      f"download {size / 1e6:6.1f} MB in {downloaded:5.2f} s ({resources / downloaded:7.0f}/s)")
PY
}

backend=${database%%:*}
echo "Tessera Bulk Data export, ${backend:-sqlite}: partition 'big' with $big Observations and 1 Patient; server on 1 core (taskset -c 0), client on the other"
export_once system "/fhir/big/\$export?_type=Observation,Patient"
export_once patient "/fhir/big/Patient/\$export?_type=Observation,Patient"
read_url=$(curl -fsS "${tls[@]}" -H "Authorization: Bearer $access" "$url/fhir/big/Observation?_count=1&_total=none" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["entry"][0]["fullUrl"])')
method=GET run_oha reads-alone "$read_url" 10 -c 32 --cert clients/tcu.crt --key clients/tcu.key -H "Authorization: Bearer $access"
# Readers for as long as the first export took (at least 2 s), starting with the export.
seconds=$(( $(cat export-seconds) > 2 ? $(cat export-seconds) : 2 ))
taskset -c 1 oha --no-tui --output-format json -z "${seconds}s" -m GET --cacert pki/ca.crt -c 32 \
  --cert clients/tcu.crt --key clients/tcu.key -H "Authorization: Bearer $access" "$read_url" >"$out/reads-during-export.json" &
reads=$!
export_once "system, under 32 readers" "/fhir/big/\$export?_type=Observation,Patient"
wait "$reads"
report reads-during-export "$out/reads-during-export.json"
