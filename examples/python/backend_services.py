#!/usr/bin/env python3
"""A SMART Backend Services client for Tessera, following seed 002.

    backend_services.py keygen DIR
        Writes DIR/private.pem and DIR/public.pem (RSA 2048) and prints the JWK with the
        seed's kid rule. Give public.pem to the Tessera operator, who registers it with
        `tessera client add --auth private_key_jwt --public-key public.pem ...`.

    backend_services.py token --base-url URL --ca CA.crt --client-id ID --key DIR/private.pem [--scope S]
                              [--fhir-base URL/fhir/PARTITION --expect-observations N]
        Signs an RS384 client assertion, requests a token, verifies it against the realm's
        JWKS, prints its claims, and checks that the assertion cannot be replayed. With
        --fhir-base, then makes seed 002's FHIR call with the token:
        GET [base]/Observation?code=4548-4&_sort:desc=date&_count=10
"""
import argparse
import base64
import hashlib
import json
import sys
import time
import uuid

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def generate_kid(pem_public_key: str) -> str:
    """Seed 002: the first 16 characters of base64url(SHA-256(SPKI PEM))."""
    public_key = serialization.load_pem_public_key(pem_public_key.encode())
    digest = hashlib.sha256(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).digest()
    return base64.urlsafe_b64encode(digest)[:16].decode()


def keygen(directory: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    with open(f"{directory}/private.pem", "wb") as f:
        f.write(private_pem)
    with open(f"{directory}/public.pem", "w") as f:
        f.write(public_pem)
    print(json.dumps({"kid": generate_kid(public_pem), "public_key": f"{directory}/public.pem"}))


def client_assertion(client_id: str, private_pem: bytes, kid: str, token_endpoint: str) -> str:
    now = int(time.time())
    payload = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "iat": now,
        "exp": now + 300,  # SMART: at most five minutes ahead
        "jti": str(uuid.uuid4()),  # SMART requires a jti; Tessera refuses a second use
    }
    return jwt.encode(payload, private_pem, algorithm="RS384", headers={"kid": kid})


def token(args: argparse.Namespace) -> int:
    realm = f"{args.base_url}/realms/{args.realm}"
    metadata = requests.get(f"{args.base_url}/.well-known/oauth-authorization-server/realms/{args.realm}", verify=args.ca).json()
    token_endpoint = metadata["token_endpoint"]
    with open(args.key, "rb") as f:
        private_pem = f.read()
    public_pem = serialization.load_pem_private_key(private_pem, None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    assertion = client_assertion(args.client_id, private_pem, generate_kid(public_pem), token_endpoint)
    form = {
        "grant_type": "client_credentials",
        "scope": args.scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    response = requests.post(token_endpoint, data=form, headers={"Accept": "application/json"}, verify=args.ca)
    if response.status_code != 200:
        print(f"Error: {response.status_code} - {response.text}", file=sys.stderr)
        return 1
    body = response.json()
    assert body["token_type"] == "Bearer" and set(body["scope"].split()) == set(args.scope.split()), body

    # Verify the access token as a resource server would: the realm's JWKS, by kid.
    jwks = requests.get(metadata["jwks_uri"], verify=args.ca).json()
    kid = jwt.get_unverified_header(body["access_token"])["kid"]
    key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid)
    claims = jwt.decode(
        body["access_token"], key.key, algorithms=[key.algorithm_name], audience=f"{args.base_url}/fhir", issuer=realm
    )
    assert claims["sub"] == args.client_id, claims
    print(json.dumps({"expires_in": body["expires_in"], "scope": body["scope"], "claims": claims}, indent=2))

    replay = requests.post(token_endpoint, data=form, verify=args.ca)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client", replay.text
    print("replayed assertion refused: invalid_client")
    if args.fhir_base:
        return fhir_query(args, body["access_token"])
    return 0


def fhir_query(args: argparse.Namespace, access_token: str) -> int:
    """Seed 002's resource call, verbatim but for the base URL."""
    response = requests.get(
        f"{args.fhir_base}/Observation?code=4548-4&_sort%3Adesc=date&_count=10",
        headers={"accept": "application/json", "authorization": f"Bearer {access_token}"},
        verify=args.ca,
    )
    if response.status_code != 200:
        print(f"Error: {response.status_code} - {response.text}", file=sys.stderr)
        return 1
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset", bundle
    dates = [e["resource"]["effectiveDateTime"] for e in bundle.get("entry", [])]
    assert bundle["total"] == args.expect_observations, bundle
    assert dates == sorted(dates, reverse=True), dates
    print(json.dumps({"fhir_total": bundle["total"], "effective_dates_newest_first": dates}))
    # Without the token the vault answers 401 with a Bearer challenge.
    anonymous = requests.get(f"{args.fhir_base}/Observation", verify=args.ca)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer"), anonymous.text
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen")
    k.add_argument("dir")
    t = sub.add_parser("token")
    t.add_argument("--base-url", required=True)
    t.add_argument("--realm", default="cara")
    t.add_argument("--ca", required=True, help="the CA that signed the server certificate (pki/ca.crt)")
    t.add_argument("--client-id", required=True)
    t.add_argument("--key", required=True)
    t.add_argument("--scope", default="system/Patient.rs")
    t.add_argument("--fhir-base", help="a FHIR Vault partition base, e.g. https://host/fhir/p-1")
    t.add_argument("--expect-observations", type=int, default=0)
    args = parser.parse_args()
    if args.command == "keygen":
        keygen(args.dir)
        return 0
    return token(args)


if __name__ == "__main__":
    sys.exit(main())
