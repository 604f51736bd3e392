#!/usr/bin/env python3
"""Regenerates crates/vault/data/search-parameters.json from the FHIR R4 specification's
own data: the SearchParameter definitions in Bundle-searchParams.json, the resource
types of the examples and the Patient compartment (CompartmentDefinition-patient.json:
which parameters of which types make a resource part of a patient's record, as Bulk Data's
Patient- and Group-level `$export` needs), all in the npm package hl7.fhir.r4.examples
4.0.1 (CC0).

    scripts/fhir-search-parameters.py        # needs npm and network access to the registry

Only what the vault evaluates is kept: code, type, base types, FHIRPath expression,
reference targets and a composite's components. Every parameter is listed, composite and special ones too (the vault
searches none of those, but refuses them by name instead of ignoring them); the vault
decides at start-up which it supports.
"""
import json, pathlib, subprocess, tarfile, tempfile

PACKAGE = "hl7.fhir.r4.examples@4.0.1"
KINDS = {"string", "token", "date", "reference", "uri", "number", "quantity", "composite", "special"}
out = pathlib.Path(__file__).resolve().parent.parent / "crates/vault/data/search-parameters.json"

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    archive = next(pathlib.Path(tmp).glob("*.tgz"))
    types, params, compartment = set(), [], {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".json"):
                continue
            try:
                resource = json.load(tar.extractfile(member))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(resource, dict):
                continue
            if member.name.endswith("CompartmentDefinition-patient.json"):
                compartment = {r["code"]: r["param"] for r in resource["resource"] if r.get("param")}
            if "resourceType" in resource and not member.name.endswith("Bundle-searchParams.json"):
                types.add(resource["resourceType"])
            if member.name.endswith("Bundle-searchParams.json"):
                by_url = {e["resource"]["url"]: e["resource"] for e in resource["entry"]}
                for entry in resource["entry"]:
                    sp = entry["resource"]
                    if sp.get("type") not in KINDS:
                        continue
                    # A composite's components: the code of each component's own
                    # parameter and its expression, relative to the composite's.
                    components = [
                        {"code": by_url[c["definition"]]["code"], "expression": c["expression"]}
                        for c in sp.get("component", []) if c["definition"] in by_url
                    ]
                    params.append({
                        "code": sp["code"],
                        "type": sp["type"],
                        "base": sp["base"],
                        "expression": sp.get("expression", ""),
                        **({"target": sp["target"]} if sp.get("target") else {}),
                        **({"component": components} if components else {}),
                    })
    bases = {b for p in params for b in p["base"]} - {"Resource", "DomainResource"}
    data = {
        "source": f"{PACKAGE} (package/Bundle-searchParams.json, the examples' resource types, CompartmentDefinition-patient.json)",
        "resourceTypes": sorted(types | bases),
        "parameters": sorted(params, key=lambda p: (p["base"][0], p["code"])),
        "patientCompartment": dict(sorted(compartment.items())),
    }
    # One parameter a line: small, and diffs stay readable when the data is regenerated.
    lines = [json.dumps(p, separators=(",", ":")) for p in data["parameters"]]
    out.write_text(
        "{\"source\":" + json.dumps(data["source"]) + ",\n"
        + "\"resourceTypes\":" + json.dumps(data["resourceTypes"], separators=(",", ":")) + ",\n"
        + "\"patientCompartment\":" + json.dumps(data["patientCompartment"], separators=(",", ":")) + ",\n"
        + "\"parameters\":[\n" + ",\n".join(lines) + "\n]}\n"
    )
    print(f"{out}: {len(data['resourceTypes'])} resource types, {len(params)} search parameters, "
          f"{len(compartment)} types in the Patient compartment")
