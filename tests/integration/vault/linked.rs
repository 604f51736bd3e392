//! Searches that reach other resources (chains, `_has`, `_include`, `_revinclude`) and
//! subsetted results (`_summary`, `_elements`), over HTTPS: each returns exactly what
//! it asks for, and reaches only what the token may see.

use serde_json::{json, Value};

use super::*;

/// A patient "Peter", another "Paula", their Observations, a Practitioner who performed
/// one, and a Provenance that targets one.
struct Linked {
    v: Vault,
    c: Client,
    peter: String,
    paula: String,
    practitioner: String,
    /// Peter's HbA1c, performed by the practitioner.
    hba1c: String,
    /// Paula's heart rate.
    heart: String,
    provenance: String,
}

fn linked() -> Linked {
    let v = vault();
    let c = v.client();
    let writer = v.token("writer", "system/*.cruds", &["pa"]);
    let id = |value: Value| value["id"].as_str().unwrap().to_owned();
    let peter = id(create(
        &c,
        &writer,
        "/fhir/pa/Patient",
        r#"{"resourceType":"Patient","name":[{"family":"Muster","given":["Peter"]}],"gender":"male"}"#,
    ));
    let paula = id(create(
        &c,
        &writer,
        "/fhir/pa/Patient",
        r#"{"resourceType":"Patient","name":[{"family":"Muster","given":["Paula"]}],"gender":"female"}"#,
    ));
    let practitioner = id(create(
        &c,
        &writer,
        "/fhir/pa/Practitioner",
        r#"{"resourceType":"Practitioner","name":[{"family":"Arzt"}]}"#,
    ));
    let mut hba1c: Value =
        serde_json::from_str(&observation("4548-4", "2021-01-10", "laboratory", &peter)).unwrap();
    hba1c["performer"] = json!([{"reference": format!("Practitioner/{practitioner}")}]);
    let hba1c = id(create(
        &c,
        &writer,
        "/fhir/pa/Observation",
        &hba1c.to_string(),
    ));
    let heart = id(create(
        &c,
        &writer,
        "/fhir/pa/Observation",
        &observation("8867-4", "2022-01-01", "vital-signs", &paula),
    ));
    let provenance = id(create(
        &c,
        &writer,
        "/fhir/pa/Provenance",
        &json!({
            "resourceType": "Provenance",
            "target": [{"reference": format!("Observation/{hba1c}")}],
            "recorded": "2021-01-10T10:00:00Z",
            "agent": [{"who": {"reference": format!("Practitioner/{practitioner}")}}],
        })
        .to_string(),
    ));
    Linked {
        v,
        c,
        peter,
        paula,
        practitioner,
        hba1c,
        heart,
        provenance,
    }
}

impl Linked {
    fn search(&self, token: &str, query: &str) -> Reply {
        self.c
            .send("GET", &format!("/fhir/pa/{query}"), Some(token), &[], None)
    }

    fn bundle(&self, token: &str, query: &str) -> Value {
        let reply = self.search(token, query);
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        let bundle = reply.json();
        assert_valid_fhir(&bundle);
        bundle
    }
}

/// `(mode, Type/id)` of each entry.
fn entries(bundle: &Value) -> Vec<(String, String)> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let r = &e["resource"];
            (
                e["search"]["mode"].as_str().unwrap_or_default().to_owned(),
                format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect()
}

fn matched(bundle: &Value) -> Vec<String> {
    entries(bundle)
        .into_iter()
        .filter(|(mode, _)| mode == "match")
        .map(|(_, r)| r)
        .collect()
}

#[test]
fn chains_and_has_match_through_the_resources_they_name() {
    let l = linked();
    let all = l.v.token("reader", "system/*.rs", &["pa"]);
    let hba1c = format!("Observation/{}", l.hba1c);
    let heart = format!("Observation/{}", l.heart);
    assert_eq!(
        matched(&l.bundle(&all, "Observation?subject.name=peter")),
        [hba1c.as_str()]
    );
    assert_eq!(
        matched(&l.bundle(&all, "Observation?subject:Patient.given=paula")),
        [heart.as_str()]
    );
    assert_eq!(
        matched(&l.bundle(&all, "Observation?patient.gender=male,female&_sort=date")),
        [hba1c.clone(), heart.clone()]
    );
    assert_eq!(
        matched(&l.bundle(&all, "Observation?subject.name=nobody")).len(),
        0
    );
    // Two links deep: Provenances targeting an Observation of Peter's.
    assert_eq!(
        matched(&l.bundle(
            &all,
            "Provenance?target:Observation.subject:Patient.name=peter"
        )),
        [format!("Provenance/{}", l.provenance)]
    );
    // _has: Patients with an HbA1c; Patients with no heart-rate: _has does not negate.
    assert_eq!(
        matched(&l.bundle(&all, "Patient?_has:Observation:patient:code=4548-4")),
        [format!("Patient/{}", l.peter)]
    );
    assert_eq!(
        matched(&l.bundle(&all, "Patient?_has:Observation:subject:code=1234-5")).len(),
        0
    );
    // Nested: Practitioners who performed an Observation a Provenance targets.
    assert_eq!(
        matched(&l.bundle(
            &all,
            &format!(
                "Practitioner?_has:Observation:performer:_has:Provenance:target:agent=Practitioner/{}",
                l.practitioner
            )
        )),
        [format!("Practitioner/{}", l.practitioner)]
    );
    // The total and the self link keep the chain.
    let bundle = l.bundle(&all, "Observation?subject.name=peter");
    assert_eq!(bundle["total"], 1);
    assert!(bundle["link"][0]["url"]
        .as_str()
        .unwrap()
        .contains("subject.name=peter"));

    // A chain reaches only what the token may search: with no Patient scope, 403; with
    // a restricted one, only through the Patients it grants.
    let observations_only = l.v.token("obs", "system/Observation.rs", &["pa"]);
    let refused = l.search(&observations_only, "Observation?subject.name=peter");
    outcome(&refused, 403, "forbidden");
    let refused = l.search(
        &observations_only,
        "Observation?_has:Provenance:target:agent=x",
    );
    outcome(&refused, 403, "forbidden");
    let males = l.v.token(
        "males",
        "system/Observation.rs system/Patient.rs?gender=male",
        &["pa"],
    );
    assert_eq!(
        matched(&l.bundle(&males, "Observation?subject.name=muster")),
        [hba1c]
    );
    // Malformed chains are 400s, not wider answers.
    for query in [
        "Observation?subject.nonsense=x",
        "Observation?subject:Medication.code=x",
        "Observation?_has:Observation:code:status=final",
        "Patient?_has:Observation:patient:_count=1",
    ] {
        outcome(&l.search(&all, query), 400, "invalid");
    }
    let deep = "Observation?subject.organization.partof.partof.name=x";
    outcome(&l.search(&all, deep), 400, "too-costly");
    assert!(!heart.is_empty() && !l.paula.is_empty());
}

#[test]
fn includes_add_what_the_page_points_to_and_only_what_the_token_may_read() {
    let l = linked();
    let all = l.v.token("reader", "system/*.rs", &["pa"]);
    let hba1c = format!("Observation/{}", l.hba1c);
    let peter = format!("Patient/{}", l.peter);
    let practitioner = format!("Practitioner/{}", l.practitioner);
    let provenance = format!("Provenance/{}", l.provenance);
    let m = |r: &str| ("match".to_owned(), r.to_owned());
    let i = |r: &str| ("include".to_owned(), r.to_owned());

    let bundle = l.bundle(
        &all,
        "Observation?code=4548-4&_include=Observation:subject&_include=Observation:performer",
    );
    assert_eq!(entries(&bundle), [m(&hba1c), i(&peter), i(&practitioner)]);
    assert_eq!(bundle["total"], 1, "includes are not counted");
    // A target type narrows the include.
    let bundle = l.bundle(
        &all,
        "Observation?code=4548-4&_include=Observation:subject:Group",
    );
    assert_eq!(entries(&bundle), [m(&hba1c)]);
    // Reverse, and iterate: the Patient, its Observations, their Provenances.
    let bundle = l.bundle(
        &all,
        &format!(
            "Patient?_id={}&_revinclude=Observation:subject&_revinclude:iterate=Provenance:target",
            l.peter
        ),
    );
    assert_eq!(entries(&bundle), [m(&peter), i(&hba1c), i(&provenance)]);
    // Without :iterate, the Provenance (which targets the Observation) is not reached.
    let bundle = l.bundle(
        &all,
        &format!(
            "Patient?_id={}&_revinclude=Observation:subject&_revinclude=Provenance:target",
            l.peter
        ),
    );
    assert_eq!(entries(&bundle), [m(&peter), i(&hba1c)]);
    // _include:iterate follows an included resource's references as well.
    let bundle = l.bundle(
        &all,
        &format!(
            "Provenance?_id={}&_include=Provenance:target&_include:iterate=Observation:subject",
            l.provenance
        ),
    );
    assert_eq!(entries(&bundle), [m(&provenance), i(&hba1c), i(&peter)]);

    // A type the token does not grant is left out, and the Bundle says so.
    let no_practitioners =
        l.v.token("np", "system/Observation.rs system/Patient.rs", &["pa"]);
    let bundle = l.bundle(
        &no_practitioners,
        "Observation?code=4548-4&_include=Observation:performer&_include=Observation:subject",
    );
    let got = entries(&bundle);
    assert_eq!(got[..2], [m(&hba1c), i(&peter)]);
    let warning = &bundle["entry"][2];
    assert_eq!(warning["search"]["mode"], "outcome");
    assert_eq!(warning["resource"]["resourceType"], "OperationOutcome");
    assert!(warning["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("Practitioner"));
    // A restricted scope includes only what it grants.
    let females = l.v.token(
        "females",
        "system/Observation.rs system/Patient.rs?gender=female",
        &["pa"],
    );
    let bundle = l.bundle(
        &females,
        "Observation?_include=Observation:subject&_sort=date",
    );
    assert_eq!(
        entries(&bundle),
        [
            m(&hba1c),
            m(&format!("Observation/{}", l.heart)),
            i(&format!("Patient/{}", l.paula))
        ]
    );
    // Another partition's token reaches nothing here, whatever it includes.
    let other = l.v.token("other", "system/*.rs", &["pb"]);
    outcome(
        &l.search(&other, "Observation?_include=Observation:subject"),
        403,
        "forbidden",
    );
    outcome(
        &l.search(&all, "Observation?_include=Observation:status"),
        400,
        "invalid",
    );
    outcome(
        &l.search(&all, "Observation?_include=Observation:*"),
        400,
        "not-supported",
    );
}

fn subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
}

#[test]
fn summaries_and_elements_return_part_of_each_resource_tagged_subsetted() {
    let l = linked();
    let all = l.v.token("reader", "system/*.rs", &["pa"]);
    let members = |resource: &Value| -> Vec<String> {
        let mut keys: Vec<String> = resource.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let first = |query: &str| l.bundle(&all, query)["entry"][0]["resource"].clone();

    let whole = first("Observation?code=4548-4");
    assert!(!subsetted(&whole) && whole.get("category").is_some());
    let summary = first("Observation?code=4548-4&_summary=true");
    assert!(subsetted(&summary));
    // category is not a summary element of Observation; code, subject, value are.
    assert_eq!(
        members(&summary),
        [
            "code",
            "effectiveDateTime",
            "id",
            "meta",
            "performer",
            "resourceType",
            "status",
            "subject",
            "valueQuantity"
        ]
    );
    let elements = first("Observation?code=4548-4&_elements=category,value");
    assert!(subsetted(&elements));
    assert_eq!(
        members(&elements),
        [
            "category",
            "code",
            "id",
            "meta",
            "resourceType",
            "status",
            "valueQuantity"
        ]
    );
    let data = first("Observation?code=4548-4&_summary=data");
    assert!(subsetted(&data) && data.get("category").is_some());
    let count = l.bundle(&all, "Observation?_summary=count");
    assert_eq!(count["total"], 2);
    assert!(count.get("entry").is_none());
    // Included resources are subsetted alike.
    let bundle = l.bundle(
        &all,
        "Observation?code=4548-4&_include=Observation:subject&_elements=status",
    );
    assert!(subsetted(&bundle["entry"][1]["resource"]));
    assert!(bundle["entry"][1]["resource"].get("name").is_none());
    outcome(
        &l.search(&all, "Observation?_summary=true&_elements=status"),
        400,
        "invalid",
    );
    // A read still returns the whole resource.
    let read =
        l.c.send(
            "GET",
            &format!("/fhir/pa/Observation/{}", l.hba1c),
            Some(&all),
            &[],
            None,
        )
        .json();
    assert!(!subsetted(&read));
}

#[test]
fn everything_pages_through_the_record_the_token_may_see() {
    let l = linked();
    let all = l.v.token("reader", "system/*.rs", &["pa"]);
    let everything = format!("Patient/{}/$everything", l.peter);
    let bundle = l.bundle(&all, &everything);
    assert_eq!(bundle["total"], 6);
    let mut got: Vec<String> = matched(&bundle);
    got.sort();
    let mut expected = vec![
        format!("Observation/{}", l.hba1c),
        format!("Observation/{}", l.heart),
        format!("Patient/{}", l.peter),
        format!("Patient/{}", l.paula),
        format!("Practitioner/{}", l.practitioner),
        format!("Provenance/{}", l.provenance),
    ];
    expected.sort();
    assert_eq!(got, expected);
    // Pages of 4 meet every resource once.
    let pages = every_page(l.bundle(&all, &format!("{everything}?_count=4")), |path| {
        l.bundle(&all, path)
    });
    assert_eq!(pages.len(), 2);
    let mut paged: Vec<String> = pages.iter().flat_map(matched).collect();
    paged.sort();
    assert_eq!(paged, expected);
    let typed = l.bundle(
        &all,
        &format!("{everything}?_type=Observation,Practitioner"),
    );
    assert_eq!(typed["total"], 3);
    let since = l.bundle(&all, &format!("{everything}?_since=2999-01-01"));
    assert_eq!(since["total"], 0);

    // A restricted token: its own grants, and a note that other types are left out.
    let males = l.v.token(
        "males",
        "system/Observation.rs system/Patient.rs?gender=male",
        &["pa"],
    );
    let bundle = l.bundle(&males, &everything);
    assert_eq!(bundle["total"], 3);
    let last = bundle["entry"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["search"]["mode"], "outcome");
    outcome(
        &l.search(&males, &format!("Patient/{}/$everything", l.paula)),
        404,
        "not-found",
    );
    outcome(
        &l.search(&all, &format!("{everything}?_type=Nonsense")),
        400,
        "invalid",
    );
    outcome(
        &l.search(&all, &format!("{everything}?start=2020")),
        400,
        "not-supported",
    );
    outcome(
        &l.search(&all, &format!("Observation/{}/$everything", l.hba1c)),
        400,
        "not-supported",
    );
}
