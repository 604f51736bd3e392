#!/usr/bin/env python3
"""A SMART Bulk Data client (Bulk Data Access IG 2.0) for a Tessera vault partition.

    bulk_export.py --fhir-base URL/fhir/PARTITION --ca CA.crt --client-id ID --key private.pem
                   [--scope S] [--level system|patient|group:ID] [--type T,T] [--since INSTANT]
                   [--type-filter Q]... [--out DIR]
                   [--expect TYPE=N]... [--expect-withheld TYPE]... [--cancel]

Authenticates as a SMART Backend Services client (private_key_jwt, RS384) at the token
endpoint the partition's .well-known/smart-configuration names, kicks off $export with
`Prefer: respond-async`, polls the status URL as its Retry-After says (printing
X-Progress), reads the manifest, downloads each NDJSON file with the access token
(requiresAccessToken), checks every line is a resource of the file's type and the counts
the manifest gives, and tells the server it is done (DELETE on the status URL). With
--cancel it cancels the export right after the kick-off instead, and checks it is gone.
Prints a JSON summary; the --expect options make it exit non-zero when the export
differs.
"""
import argparse
import json
import os
import sys
import time
import urllib.parse

import requests
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backend_services import client_assertion, generate_kid  # noqa: E402


class Session:
    """Access tokens for the client, renewed when the one held is about to expire."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        discovery = requests.get(f"{args.fhir_base}/.well-known/smart-configuration", verify=args.ca)
        discovery.raise_for_status()
        self.token_endpoint = discovery.json()["token_endpoint"]
        with open(args.key, "rb") as f:
            self.private_pem = f.read()
        public_pem = serialization.load_pem_private_key(self.private_pem, None).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self.kid = generate_kid(public_pem)
        self.token = None
        self.expires = 0.0

    def headers(self, **extra: str) -> dict:
        if self.token is None or time.time() > self.expires - 30:
            form = {
                "grant_type": "client_credentials",
                "scope": self.args.scope,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": client_assertion(
                    self.args.client_id, self.private_pem, self.kid, self.token_endpoint
                ),
            }
            response = requests.post(self.token_endpoint, data=form, verify=self.args.ca)
            if response.status_code != 200:
                raise SystemExit(f"token request failed: {response.status_code} {response.text}")
            body = response.json()
            self.token = body["access_token"]
            self.expires = time.time() + body["expires_in"]
        return {"Authorization": f"Bearer {self.token}", **extra}


def kick_off_url(args: argparse.Namespace) -> str:
    if args.level == "system":
        path = "/$export"
    elif args.level == "patient":
        path = "/Patient/$export"
    elif args.level.startswith("group:"):
        path = f"/Group/{args.level.split(':', 1)[1]}/$export"
    else:
        raise SystemExit(f"--level: system, patient or group:ID, not {args.level}")
    params = [("_outputFormat", "application/fhir+ndjson")]
    if args.type:
        params.append(("_type", args.type))
    if args.since:
        params.append(("_since", args.since))
    params += [("_typeFilter", f) for f in args.type_filter]
    return f"{args.fhir_base}{path}?{urllib.parse.urlencode(params)}"


def poll(session: Session, args: argparse.Namespace, status_url: str) -> dict:
    """Polls until the manifest comes, waiting as Retry-After asks (at most 10 s)."""
    deadline = time.time() + args.timeout
    while True:
        response = requests.get(status_url, headers=session.headers(), verify=args.ca)
        if response.status_code == 200:
            assert response.headers["Content-Type"].startswith("application/json"), response.headers
            return response.json()
        if response.status_code != 202:
            raise SystemExit(f"export failed: {response.status_code} {response.text}")
        print(f"in progress: {response.headers.get('X-Progress', '?')}", file=sys.stderr)
        if time.time() > deadline:
            raise SystemExit("the export did not finish in time")
        time.sleep(min(float(response.headers.get("Retry-After", "1")), 10.0))


def download(session: Session, args: argparse.Namespace, manifest: dict, key: str) -> dict:
    """Downloads the manifest's `key` files; returns resources per type."""
    counts: dict = {}
    for n, entry in enumerate(manifest.get(key, [])):
        response = requests.get(
            entry["url"], headers=session.headers(Accept="application/fhir+ndjson"), verify=args.ca, stream=True
        )
        if response.status_code != 200:
            raise SystemExit(f"download of {entry['url']} failed: {response.status_code} {response.text}")
        assert response.headers["Content-Type"].startswith("application/fhir+ndjson"), response.headers
        lines = 0
        target = None
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            target = open(os.path.join(args.out, f"{entry['type']}-{n + 1}.ndjson"), "wb")
        for line in response.iter_lines():
            if not line:
                continue
            resource = json.loads(line)
            assert resource["resourceType"] == entry["type"], (entry, resource["resourceType"])
            lines += 1
            if target:
                target.write(line + b"\n")
        if target:
            target.close()
        if "count" in entry:
            assert entry["count"] == lines, (entry, lines)
        counts[entry["type"]] = counts.get(entry["type"], 0) + lines
    return counts


def withheld_types(session: Session, args: argparse.Namespace, manifest: dict) -> list:
    """The types the error file's OperationOutcomes say were left out."""
    named = []
    for entry in manifest.get("error", []):
        response = requests.get(entry["url"], headers=session.headers(), verify=args.ca)
        for line in response.text.splitlines():
            outcome = json.loads(line)
            assert outcome["resourceType"] == "OperationOutcome", outcome
            for issue in outcome["issue"]:
                text = issue.get("diagnostics", "")
                named += [t.strip() for t in text.rsplit(":", 1)[-1].split(",")]
    return named


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fhir-base", required=True, help="a vault partition, e.g. https://host/fhir/p-1")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--scope", default="system/*.rs")
    parser.add_argument("--level", default="system")
    parser.add_argument("--type")
    parser.add_argument("--since")
    parser.add_argument("--type-filter", action="append", default=[])
    parser.add_argument("--out")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--expect", action="append", default=[], help="TYPE=N: that many resources of TYPE")
    parser.add_argument("--expect-withheld", action="append", default=[])
    parser.add_argument("--cancel", action="store_true")
    args = parser.parse_args()

    session = Session(args)
    url = kick_off_url(args)
    kick_off = requests.get(
        url, headers=session.headers(Accept="application/fhir+json", Prefer="respond-async"), verify=args.ca
    )
    if kick_off.status_code != 202:
        print(f"kick-off refused: {kick_off.status_code} {kick_off.text}", file=sys.stderr)
        return 1
    status_url = kick_off.headers["Content-Location"]

    if args.cancel:
        cancelled = requests.delete(status_url, headers=session.headers(), verify=args.ca)
        assert cancelled.status_code == 202, cancelled.text
        gone = requests.get(status_url, headers=session.headers(), verify=args.ca)
        assert gone.status_code == 404, gone.text
        print(json.dumps({"cancelled": status_url}))
        return 0

    manifest = poll(session, args, status_url)
    assert manifest["requiresAccessToken"] is True, manifest
    assert manifest["request"] == url, (manifest["request"], url)
    counts = download(session, args, manifest, "output")
    withheld = withheld_types(session, args, manifest)
    # Without the token, no file.
    if manifest["output"]:
        anonymous = requests.get(manifest["output"][0]["url"], verify=args.ca)
        assert anonymous.status_code == 401, anonymous.text
    done = requests.delete(status_url, headers=session.headers(), verify=args.ca)
    assert done.status_code == 202, done.text
    print(json.dumps({"transactionTime": manifest["transactionTime"], "resources": counts, "withheld": withheld}))

    failed = False
    for expectation in args.expect:
        ty, n = expectation.split("=")
        if counts.get(ty, 0) != int(n):
            print(f"expected {n} {ty}, got {counts.get(ty, 0)}", file=sys.stderr)
            failed = True
    if sorted(withheld) != sorted(args.expect_withheld):
        print(f"expected withheld {args.expect_withheld}, got {withheld}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
