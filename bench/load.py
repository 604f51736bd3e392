"""Loads the data set of bench/search-scale.sh and bench/export.sh into a running Tessera,
over one kept-alive mutual-TLS connection (clients/tcu.crt, in the installation's
directory), by transaction Bundles of 1,000 entries:
  - partition "big": one Patient and BIG Observations, 1 in 100 of them code 4548-4
    (the first 999 name the Patient, the others a Patient/x that is not there);
  - PARTITIONS partitions small-1.., each one Patient and 10 Observations.
Usage: load.py URL TOKEN BIG PARTITIONS
"""
import http.client, json, ssl, sys, time
url, token, big, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.create_default_context(cafile="pki/ca.crt")
ctx.load_cert_chain("clients/tcu.crt", "clients/tcu.key")
conn = http.client.HTTPSConnection(url.split("//")[1], context=ctx)
codes = ["8867-4", "8480-6", "29463-7", "2339-0"]
issued = time.monotonic()

def fresh_token():
    # Tokens live 5 minutes; a long load asks for another after 4.
    global token, issued
    if time.monotonic() - issued < 240:
        return token
    conn.request("POST", "/realms/cara/protocol/openid-connect/token",
                 "grant_type=client_credentials&client_id=tcu",
                 {"Content-Type": "application/x-www-form-urlencoded"})
    token, issued = json.loads(conn.getresponse().read())["access_token"], time.monotonic()
    return token

def post(partition, entries):
    body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    conn.request("POST", f"/fhir/{partition}", body, {
        "Authorization": f"Bearer {fresh_token()}", "Content-Type": "application/fhir+json"})
    reply = conn.getresponse()
    text = reply.read()
    if reply.status != 200:
        sys.exit(f"{partition}: {reply.status} {text[:300]!r}")

def observation(i, subject):
    return {"resource": {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4" if i % 100 == 0 else codes[i % 4]}]},
        "subject": {"reference": subject},
        "effectiveDateTime": f"20{10 + i % 15}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "valueQuantity": {"value": 5 + i % 3, "unit": "%"}},
        "request": {"method": "POST", "url": "Observation"}}

patient = {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000000",
           "resource": {"resourceType": "Patient", "name": [{"family": "Scale"}]},
           "request": {"method": "POST", "url": "Patient"}}
subject = patient["fullUrl"]
post("big", [patient] + [observation(i, subject) for i in range(min(999, big))])
for start in range(999, big, 1000):
    post("big", [observation(i, "Patient/x") for i in range(start, min(start + 1000, big))])
for n in range(1, partitions + 1):
    post(f"small-{n}", [patient] + [observation(i, subject) for i in range(10)])
