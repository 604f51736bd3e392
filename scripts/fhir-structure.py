#!/usr/bin/env python3
"""Regenerates crates/vault/data/structure.json from the FHIR R4 specification's own
definitions in the npm package hl7.fhir.r4.examples 4.0.1 (CC0): the StructureDefinitions
of every resource and data type (their snapshots), the regular expressions of the
primitive types, and the codes of every value set a required binding names, expanded from
the package's ValueSets and CodeSystems. The vault validates resources with it
(crates/vault/src/validate.rs).

    scripts/fhir-structure.py        # needs npm and network access to the registry

A value set that cannot be expanded from the package alone (a code system defined
elsewhere, such as BCP-13 mime types or UCUM) is left out: its bindings are not checked.
A filter in a value set (is-a, descendent-of) takes every code of its system: the check
may accept a code the filter would not, never refuse one it would accept.
"""
import json, pathlib, subprocess, tarfile, tempfile

PACKAGE = "hl7.fhir.r4.examples@4.0.1"
out = pathlib.Path(__file__).resolve().parent.parent / "crates/vault/data/structure.json"
FHIR_TYPE = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX = "http://hl7.org/fhir/StructureDefinition/regex"


def element_type(t):
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext["url"] == FHIR_TYPE:
                return ext.get("valueUrl") or ext.get("valueUri")
        return "string"
    return code


with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    archive = next(pathlib.Path(tmp).glob("*.tgz"))
    definitions, value_sets, code_systems = [], {}, {}
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
            found = [resource]
            if resource.get("resourceType") == "Bundle":
                found = [e.get("resource", {}) for e in resource.get("entry", [])]
            for r in found:
                kind = r.get("resourceType")
                if kind == "StructureDefinition":
                    definitions.append(r)
                elif kind == "ValueSet" and "url" in r:
                    value_sets[r["url"]] = r
                elif kind == "CodeSystem" and "url" in r:
                    code_systems[r["url"]] = r

    def all_codes(concepts):
        for c in concepts or []:
            yield c["code"]
            yield from all_codes(c.get("concept"))

    def expand(url, seen=()):
        vs = value_sets.get(url)
        if vs is None or url in seen:
            return None
        systems, codes = set(), set()
        for include in vs.get("compose", {}).get("include", []):
            for imported in include.get("valueSet", []):
                sub = expand(imported.split("|")[0], seen + (url,))
                if sub is None:
                    return None
                systems |= set(sub["systems"])
                codes |= set(sub["codes"])
            system = include.get("system")
            if system is None:
                continue
            systems.add(system)
            if "concept" in include:
                codes |= {c["code"] for c in include["concept"]}
            else:
                cs = code_systems.get(system)
                if cs is None or cs.get("content") not in (None, "complete"):
                    return None
                codes |= set(all_codes(cs.get("concept")))
        if not systems:
            return None
        return {"systems": sorted(systems), "codes": sorted(codes)}

    types, primitives, needed = {}, {}, set()
    seen_types = set()
    for sd in sorted(definitions, key=lambda d: d["url"]):
        if sd.get("derivation") != "specialization" or sd.get("kind") not in ("resource", "complex-type", "primitive-type"):
            continue
        if sd["type"] in seen_types:
            continue
        seen_types.add(sd["type"])
        if sd["kind"] == "primitive-type":
            for e in sd["snapshot"]["element"]:
                if e["path"] == sd["type"] + ".value":
                    rx = [x.get("valueString") for x in e["type"][0].get("extension", []) if x["url"] == REGEX]
                    primitives[sd["type"]] = rx[0] if rx else None
            continue
        elements = []
        for e in sd["snapshot"]["element"][1:]:
            path = e["path"].split(".", 1)[1]
            binding = None
            b = e.get("binding")
            if b and b.get("strength") == "required" and b.get("valueSet"):
                binding = b["valueSet"].split("|")[0]
                needed.add(binding)
            item = [path, e.get("min", 0), e.get("max", "*"),
                    [element_type(t) for t in e.get("type", [])]]
            if binding or e.get("contentReference"):
                item.append(binding)
            if e.get("contentReference"):
                item.append(e["contentReference"].split(".", 1)[1])
            elements.append(item)
        types[sd["type"]] = {"kind": sd["kind"], "abstract": bool(sd.get("abstract")), "elements": elements}
    expansions = {}
    for url in sorted(needed):
        expanded = expand(url)
        if expanded is not None:
            expansions[url] = expanded
    lines = [json.dumps(t) + ":" + json.dumps(types[t], separators=(",", ":")) for t in sorted(types)]
    vs_lines = [json.dumps(u) + ":" + json.dumps(expansions[u], separators=(",", ":")) for u in sorted(expansions)]
    out.write_text(
        "{\"source\":" + json.dumps(f"{PACKAGE} (StructureDefinitions, ValueSets, CodeSystems)") + ",\n"
        + "\"primitives\":" + json.dumps(primitives, sort_keys=True) + ",\n"
        + "\"types\":{\n" + ",\n".join(lines) + "\n},\n"
        + "\"valueSets\":{\n" + ",\n".join(vs_lines) + "\n}}\n"
    )
    print(f"{out}: {len(types)} types, {len(primitives)} primitives, "
          f"{len(expansions)} of {len(needed)} required value sets expanded")
