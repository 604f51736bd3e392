#!/usr/bin/env python3
"""Regenerates crates/vault/data/elements.json from the FHIR R4 specification's own
StructureDefinitions (package/StructureDefinition-*.json of the npm package
hl7.fhir.r4.examples 4.0.1, CC0): for each resource type, its top-level elements that
the specification marks as summary (isSummary) and those that are mandatory (min >= 1).
`_summary` and `_elements` subset resources with them (crates/vault/src/subset.rs).

    scripts/fhir-elements.py        # needs npm and network access to the registry
"""
import json, pathlib, subprocess, tarfile, tempfile

PACKAGE = "hl7.fhir.r4.examples@4.0.1"
out = pathlib.Path(__file__).resolve().parent.parent / "crates/vault/data/elements.json"

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    archive = next(pathlib.Path(tmp).glob("*.tgz"))
    types = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not (name.startswith("StructureDefinition-") and name.endswith(".json")):
                continue
            sd = json.load(tar.extractfile(member))
            if sd.get("kind") != "resource" or sd.get("derivation") != "specialization" or sd.get("abstract"):
                continue
            summary, mandatory = [], []
            for element in sd["snapshot"]["element"]:
                parts = element["path"].split(".")
                if len(parts) != 2:
                    continue
                if element.get("isSummary"):
                    summary.append(parts[1])
                if element.get("min", 0) >= 1:
                    mandatory.append(parts[1])
            types[sd["type"]] = {"summary": summary, "mandatory": mandatory}
    lines = [json.dumps(t) + ":" + json.dumps(types[t], separators=(",", ":")) for t in sorted(types)]
    out.write_text(
        "{\"source\":" + json.dumps(f"{PACKAGE} (package/StructureDefinition-*.json)") + ",\n"
        + "\"types\":{\n" + ",\n".join(lines) + "\n}}\n"
    )
    print(f"{out}: {len(types)} resource types")
