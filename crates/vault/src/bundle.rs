//! Bundles: searchset and history results with paging links, and the batch and
//! transaction interactions (R4 http.html#transaction): a batch runs each entry on its
//! own; a transaction runs all its writes in one store transaction (all or nothing),
//! after resolving `urn:uuid:` full URLs of created resources to the ids assigned, then
//! its reads. Every entry is authorized on its own.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use crate::dates::format_instant;
use crate::related::Included;
use crate::search::{SearchQuery, Summary};
use crate::{
    operation_outcome, Ctx, Interaction, Stored, Vault, VaultError, VaultStore, WriteKind, WriteOp,
    WriteOutcome,
};

fn query_string(pairs: &[(String, String)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z'
                | b'a'..=b'z'
                | b'0'..=b'9'
                | b'-'
                | b'_'
                | b'.'
                | b'~'
                | b':'
                | b','
                | b'|' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn link(relation: &str, url: String) -> Value {
    json!({ "relation": relation, "url": url })
}

/// Links `self`, `first`, `previous`, `next` for a page at `offset` of `count`.
fn page_links(
    url: &str,
    params: &[(String, String)],
    offset: usize,
    count: usize,
    total: u64,
) -> Vec<Value> {
    let page = |offset: usize| {
        let mut all = params.to_vec();
        all.push(("_count".into(), count.to_string()));
        if offset > 0 {
            all.push(("_offset".into(), offset.to_string()));
        }
        format!("{url}?{}", query_string(&all))
    };
    let mut links = vec![link("self", page(offset))];
    if count > 0 {
        links.push(link("first", page(0)));
        if offset > 0 {
            links.push(link("previous", page(offset.saturating_sub(count))));
        }
        if ((offset + count) as u64) < total {
            links.push(link("next", page(offset + count)));
        }
    }
    links
}

/// A searchset Bundle: the page of matches, then what `_include`/`_revinclude` added,
/// then (when the token withheld included types) an OperationOutcome saying so, each
/// resource passed through `subset` (`_summary`, `_elements`).
pub(crate) fn searchset(
    base: &str,
    resource_type: &str,
    query: &SearchQuery,
    total: u64,
    found: &[Stored],
    included: &Included,
    subset: &dyn Fn(&mut Map<String, Value>) -> bool,
) -> Result<Value, VaultError> {
    let params: Vec<(String, String)> = query
        .used
        .iter()
        .filter(|(k, _)| k != "_count" && k != "_offset")
        .cloned()
        .collect();
    let counting = query.summary == Summary::Count;
    let count = if counting { 0 } else { query.count };
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": page_links(&format!("{base}/{resource_type}"), &params, query.offset, count, total),
    });
    if query.total || counting {
        bundle["total"] = json!(total);
    }
    let entry = |s: &Stored, mode: &str| -> Result<Value, VaultError> {
        let mut resource = s.json()?;
        if let Value::Object(map) = &mut resource {
            subset(map);
        }
        Ok(json!({
            "fullUrl": format!("{base}/{}/{}", s.resource_type, s.id),
            "resource": resource,
            "search": { "mode": mode },
        }))
    };
    let mut entries = found
        .iter()
        .map(|s| entry(s, "match"))
        .chain(included.resources.iter().map(|s| entry(s, "include")))
        .collect::<Result<Vec<_>, VaultError>>()?;
    if !included.withheld.is_empty() {
        let types: Vec<&str> = included.withheld.iter().map(String::as_str).collect();
        entries.push(json!({
            "resource": operation_outcome(
                "warning",
                "suppressed",
                &format!(
                    "included resources of types the access token does not grant were left out: {}",
                    types.join(", ")
                ),
            ),
            "search": { "mode": "outcome" },
        }));
    }
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    Ok(bundle)
}

/// A page of `Patient/{id}/$everything` (a searchset), with an OperationOutcome entry
/// when types the token does not grant were left out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn everything(
    base: &str,
    id: &str,
    pairs: &[(String, String)],
    total: u64,
    offset: usize,
    count: usize,
    page: &[Stored],
    withheld: &BTreeSet<String>,
) -> Result<Value, VaultError> {
    let params: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k == "_type" || k == "_since")
        .cloned()
        .collect();
    let url = format!("{base}/Patient/{id}/$everything");
    let mut entries = page
        .iter()
        .map(|s| {
            Ok(json!({
                "fullUrl": format!("{base}/{}/{}", s.resource_type, s.id),
                "resource": s.json()?,
                "search": { "mode": "match" },
            }))
        })
        .collect::<Result<Vec<_>, VaultError>>()?;
    if !withheld.is_empty() {
        entries.push(json!({
            "resource": operation_outcome(
                "information",
                "suppressed",
                "resources of types the access token does not grant are not included",
            ),
            "search": { "mode": "outcome" },
        }));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": page_links(&url, &params, offset, count, total),
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    Ok(bundle)
}

pub(crate) fn history(
    base: &str,
    path: &str,
    pairs: &[(String, String)],
    total: u64,
    offset: usize,
    count: usize,
    versions: &[Stored],
) -> Result<Value, VaultError> {
    let params: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k == "_since")
        .cloned()
        .collect();
    let entries = versions
        .iter()
        .map(|s| {
            let mut entry = json!({
                "fullUrl": format!("{base}/{}/{}", s.resource_type, s.id),
                "request": {
                    "method": if s.deleted { "DELETE" } else if s.version == 1 { "POST" } else { "PUT" },
                    "url": if s.version == 1 && !s.deleted { s.resource_type.clone() } else { format!("{}/{}", s.resource_type, s.id) },
                },
                "response": {
                    "status": if s.deleted { "204" } else if s.version == 1 { "201" } else { "200" },
                    "etag": s.etag(),
                    "lastModified": format_instant(s.last_updated),
                },
            });
            if !s.deleted {
                entry["resource"] = s.json()?;
            }
            Ok(entry)
        })
        .collect::<Result<Vec<_>, VaultError>>()?;
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": total,
        "link": page_links(&format!("{base}/{path}"), &params, offset, count, total),
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    Ok(bundle)
}

/// What an entry asked for.
#[derive(Debug, Clone)]
enum EntryRequest {
    Read {
        resource_type: String,
        id: String,
        version: Option<String>,
    },
    Search {
        resource_type: String,
        pairs: Vec<(String, String)>,
    },
    Write(WriteOp),
    /// A conditional create whose condition met a resource: nothing to write.
    Exists(Stored),
    /// A conditional delete whose condition met nothing.
    NothingToDelete,
}

/// The result of one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryResult {
    Read(Stored),
    Searched(Value),
    Written(WriteOutcome),
    Failed(VaultError),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    pub transaction: bool,
    pub entries: Vec<EntryResult>,
    /// What an audit record names of each entry, in the same order.
    pub audits: Vec<EntryAudit>,
}

/// What an audit record names of one entry of a batch or transaction: its FHIR
/// interaction, the resource (`Type/id`, relative) and a search's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryAudit {
    pub interaction: Interaction,
    pub resource: Option<String>,
    pub query: Option<String>,
}

/// Each entry's audit facts, from the posted Bundle's entries (in the same order as the
/// results) and the results (which name what a create created).
fn entry_audits(entries: &[Value], results: &[EntryResult], base: &str) -> Vec<EntryAudit> {
    results
        .iter()
        .enumerate()
        .map(|(i, result)| {
            let request = entries.get(i).and_then(|e| e.get("request"));
            let field = |name: &str| {
                request
                    .and_then(|r| r.get(name))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            };
            let (segments, query) = split_url(field("url"), base);
            let interaction = match (field("method"), segments.as_slice()) {
                ("GET", [_]) => Interaction::Search,
                ("GET", [_, _]) => Interaction::Read,
                ("GET", [_, _, "_history", _]) => Interaction::VRead,
                ("POST", [_]) => Interaction::Create,
                ("PUT", [_] | [_, _]) => Interaction::Update,
                ("DELETE", [_] | [_, _]) => Interaction::Delete,
                _ => Interaction::Operation,
            };
            let resource = match result {
                EntryResult::Written(
                    WriteOutcome::Created(s)
                    | WriteOutcome::Updated(s)
                    | WriteOutcome::Deleted(Some(s)),
                ) => Some(format!("{}/{}", s.resource_type, s.id)),
                _ if segments.len() >= 2 => Some(segments.join("/")),
                _ => None,
            };
            EntryAudit {
                interaction,
                resource,
                query: query.map(str::to_owned).filter(|q| !q.is_empty()),
            }
        })
        .collect()
}

impl BatchOutcome {
    /// The `batch-response` or `transaction-response` Bundle; `status` gives an entry's
    /// HTTP status (chosen by the HTTP layer).
    pub fn to_bundle(
        &self,
        base: &str,
        status: &dyn Fn(&EntryResult) -> u16,
    ) -> Result<Value, VaultError> {
        let entries = self
            .entries
            .iter()
            .map(|result| {
                let code = status(result).to_string();
                Ok(match result {
                    EntryResult::Read(stored) => json!({
                        "fullUrl": format!("{base}/{}/{}", stored.resource_type, stored.id),
                        "resource": stored.json()?,
                        "response": { "status": code, "etag": stored.etag(), "lastModified": format_instant(stored.last_updated) },
                    }),
                    EntryResult::Searched(bundle) => json!({ "resource": bundle, "response": { "status": code } }),
                    EntryResult::Written(WriteOutcome::Created(s) | WriteOutcome::Updated(s)) => json!({
                        "fullUrl": format!("{base}/{}/{}", s.resource_type, s.id),
                        "response": {
                            "status": code,
                            "location": format!("{}/{}/_history/{}", s.resource_type, s.id, s.version),
                            "etag": s.etag(),
                            "lastModified": format_instant(s.last_updated),
                        },
                    }),
                    EntryResult::Written(WriteOutcome::Deleted(_)) => json!({ "response": { "status": code } }),
                    EntryResult::Failed(error) => json!({
                        "response": {
                            "status": code,
                            "outcome": crate::operation_outcome("error", "processing", &error.to_string()),
                        },
                    }),
                })
            })
            .collect::<Result<Vec<_>, VaultError>>()?;
        Ok(json!({
            "resourceType": "Bundle",
            "type": if self.transaction { "transaction-response" } else { "batch-response" },
            "entry": entries,
        }))
    }
}

/// Splits `Patient/1/_history/2?x=y` (relative, or absolute under `base`).
fn split_url<'a>(url: &'a str, base: &str) -> (Vec<&'a str>, Option<&'a str>) {
    let url = url
        .strip_prefix(base)
        .map(|u| u.trim_start_matches('/'))
        .unwrap_or(url);
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    (path.split('/').filter(|s| !s.is_empty()).collect(), query)
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let decode = |s: &str| crate::search::percent_decode(&s.replace('+', " "));
            match p.split_once('=') {
                Some((k, v)) => (decode(k), decode(v)),
                None => (decode(p), String::new()),
            }
        })
        .collect()
}

/// An entry's request; a conditional one (`ifNoneExist`, `Type?criteria`) is resolved
/// here, before anything is written.
fn parse_entry<S: VaultStore>(
    vault: &Vault,
    store: &S,
    ctx: &Ctx<'_>,
    entry: &Value,
    new_id: &mut dyn FnMut() -> String,
) -> Result<(EntryRequest, Option<String>), VaultError> {
    let base = ctx.base;
    let request = entry
        .get("request")
        .ok_or_else(|| VaultError::Invalid("an entry needs a request".into()))?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| VaultError::Invalid("an entry's request needs a url".into()))?;
    let (segments, query) = split_url(url, base);
    let resource = || -> Result<Map<String, Value>, VaultError> {
        match entry.get("resource") {
            Some(Value::Object(map)) => {
                crate::resource::check(vault.registry(), map.clone(), segments.first().copied())
                    .and_then(|resource| vault.conformant(resource))
            }
            _ => Err(VaultError::Invalid(format!(
                "the {method} entry for '{url}' has no resource"
            ))),
        }
    };
    let if_match = || crate::parse_if_match(request.get("ifMatch").and_then(Value::as_str));
    let full_url = entry
        .get("fullUrl")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let write =
        |resource_type: &str, id: String, kind: WriteKind, resource: Option<Map<String, Value>>| {
            EntryRequest::Write(WriteOp {
                resource_type: resource_type.to_owned(),
                id,
                kind,
                resource,
                restrictions: None,
            })
        };
    let parsed = match (method, segments.as_slice()) {
        ("GET", [ty]) => EntryRequest::Search {
            resource_type: (*ty).to_owned(),
            pairs: query_pairs(query),
        },
        ("GET", [ty, id]) => EntryRequest::Read {
            resource_type: (*ty).to_owned(),
            id: (*id).to_owned(),
            version: None,
        },
        ("GET", [ty, id, "_history", v]) => EntryRequest::Read {
            resource_type: (*ty).to_owned(),
            id: (*id).to_owned(),
            version: Some((*v).to_owned()),
        },
        ("POST", [ty]) => {
            let resource = resource()?;
            let condition = request.get("ifNoneExist").and_then(Value::as_str);
            let existing = match condition {
                Some(condition) => {
                    vault.authorize(store, ctx, ty, Interaction::Create)?;
                    vault.find_one(store, ctx, ty, &query_pairs(Some(condition)))?
                }
                None => None,
            };
            match existing {
                Some(existing) => EntryRequest::Exists(existing),
                None => write(ty, new_id(), WriteKind::Create, Some(resource)),
            }
        }
        ("PUT", [ty]) if query.is_some() => {
            let mut resource = resource()?;
            let body_id = resource.get("id").and_then(Value::as_str);
            let id = vault.conditional_id(store, ctx, ty, &query_pairs(query), body_id, new_id)?;
            resource.insert("id".into(), Value::String(id.clone()));
            write(
                ty,
                id,
                WriteKind::Update {
                    if_match: if_match()?,
                    may_create: false,
                },
                Some(resource),
            )
        }
        ("DELETE", [ty]) if query.is_some() => {
            vault.authorize(store, ctx, ty, Interaction::Delete)?;
            match vault.find_one(store, ctx, ty, &query_pairs(query))? {
                Some(found) => write(
                    ty,
                    found.id,
                    WriteKind::Delete {
                        if_match: if_match()?,
                    },
                    None,
                ),
                None => EntryRequest::NothingToDelete,
            }
        }
        ("PUT", [ty, id]) => {
            let resource = resource()?;
            if resource.get("id").and_then(Value::as_str) != Some(*id) {
                return Err(VaultError::Invalid(format!(
                    "the resource's id is not the one of '{url}'"
                )));
            }
            write(
                ty,
                (*id).to_owned(),
                WriteKind::Update {
                    if_match: if_match()?,
                    may_create: false,
                },
                Some(resource),
            )
        }
        ("DELETE", [ty, id]) => write(
            ty,
            (*id).to_owned(),
            WriteKind::Delete {
                if_match: if_match()?,
            },
            None,
        ),
        _ => {
            return Err(VaultError::NotSupported(format!(
                "'{method} {url}' is not an interaction this vault supports in a Bundle"
            )))
        }
    };
    Ok((parsed, full_url))
}

/// Replaces references to `urn:uuid:` full URLs with the ids they were given.
fn rewrite_references(value: &mut Value, ids: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if key == "reference" {
                    if let Some(target) = item.as_str().and_then(|r| ids.get(r)) {
                        *item = Value::String(target.clone());
                        continue;
                    }
                }
                rewrite_references(item, ids);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite_references(i, ids)),
        _ => {}
    }
}

fn read_entry<S: VaultStore>(
    vault: &Vault,
    store: &S,
    ctx: &Ctx<'_>,
    request: &EntryRequest,
) -> EntryResult {
    let result = match request {
        EntryRequest::Read {
            resource_type,
            id,
            version: None,
        } => vault
            .read(store, ctx, resource_type, id)
            .map(EntryResult::Read),
        EntryRequest::Read {
            resource_type,
            id,
            version: Some(v),
        } => vault
            .vread(store, ctx, resource_type, id, v)
            .map(EntryResult::Read),
        EntryRequest::Search {
            resource_type,
            pairs,
        } => vault
            .search(store, ctx, resource_type, pairs, false)
            .map(EntryResult::Searched),
        EntryRequest::Exists(stored) => {
            Ok(EntryResult::Written(WriteOutcome::Updated(stored.clone())))
        }
        EntryRequest::NothingToDelete => Ok(EntryResult::Written(WriteOutcome::Deleted(None))),
        EntryRequest::Write(_) => Err(VaultError::Store("a write is not a read".into())),
    };
    result.unwrap_or_else(EntryResult::Failed)
}

/// Runs a posted batch or transaction Bundle (`body`): each entry as the interaction
/// it is, a transaction all or nothing.
pub(crate) fn run<S: VaultStore>(
    vault: &Vault,
    store: &S,
    ctx: &Ctx<'_>,
    body: &[u8],
    new_id: &mut dyn FnMut() -> String,
) -> Result<BatchOutcome, VaultError> {
    let bundle = crate::resource::parse(vault.registry(), body, Some("Bundle"))?;
    let transaction = match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => true,
        Some("batch") => false,
        other => {
            return Err(VaultError::Invalid(format!(
                "only batch and transaction Bundles can be posted to the base, not {}",
                other.unwrap_or("a Bundle without type")
            )))
        }
    };
    let entries: Vec<Value> = bundle
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let results = if transaction {
        run_transaction(vault, store, ctx, &entries, new_id)?
    } else {
        run_batch(vault, store, ctx, &entries, new_id)
    };
    Ok(BatchOutcome {
        transaction,
        audits: entry_audits(&entries, &results, ctx.base),
        entries: results,
    })
}

/// A batch: each entry on its own, its failure its own.
fn run_batch<S: VaultStore>(
    vault: &Vault,
    store: &S,
    ctx: &Ctx<'_>,
    entries: &[Value],
    new_id: &mut dyn FnMut() -> String,
) -> Vec<EntryResult> {
    entries
        .iter()
        .map(
            |entry| match parse_entry(vault, store, ctx, entry, new_id) {
                Err(e) => EntryResult::Failed(e),
                Ok((EntryRequest::Write(op), _)) => match vault.write_op(store, ctx, op) {
                    Ok(op) => match vault.apply(store, ctx, std::slice::from_ref(&op)) {
                        Ok(mut outcomes) => {
                            outcomes.pop().map(EntryResult::Written).unwrap_or_else(|| {
                                EntryResult::Failed(VaultError::Store("no outcome".into()))
                            })
                        }
                        Err((_, e)) => EntryResult::Failed(e),
                    },
                    Err(e) => EntryResult::Failed(e),
                },
                Ok((read, _)) => read_entry(vault, store, ctx, &read),
            },
        )
        .collect()
}

/// A transaction: every entry parsed and authorized before anything is written, the
/// writes in one store transaction in R4's order, the reads after the commit.
fn run_transaction<S: VaultStore>(
    vault: &Vault,
    store: &S,
    ctx: &Ctx<'_>,
    entries: &[Value],
    new_id: &mut dyn FnMut() -> String,
) -> Result<Vec<EntryResult>, VaultError> {
    let mut parsed = Vec::with_capacity(entries.len());
    let mut ids = HashMap::new();
    for entry in entries {
        let (request, full_url) = parse_entry(vault, store, ctx, entry, new_id)?;
        // A created resource (or the one a conditional create found) is referred to by
        // its `urn:uuid:` full URL in the other entries.
        let named = match &request {
            EntryRequest::Write(op) if matches!(op.kind, WriteKind::Create) => {
                Some(format!("{}/{}", op.resource_type, op.id))
            }
            EntryRequest::Exists(stored) => Some(format!("{}/{}", stored.resource_type, stored.id)),
            _ => None,
        };
        if let (Some(local), Some(full_url)) = (named, &full_url) {
            if full_url.starts_with("urn:uuid:") && ids.insert(full_url.clone(), local).is_some() {
                return Err(VaultError::Invalid(format!(
                    "fullUrl {full_url} appears twice"
                )));
            }
        }
        parsed.push(request);
    }
    let mut writes = Vec::new();
    let mut positions = Vec::new();
    for (position, request) in parsed.iter_mut().enumerate() {
        match request {
            EntryRequest::Write(op) => {
                if let Some(resource) = op.resource.take() {
                    let mut value = Value::Object(resource);
                    rewrite_references(&mut value, &ids);
                    if let Value::Object(map) = value {
                        op.resource = Some(map);
                    }
                }
                writes.push(vault.write_op(store, ctx, op.clone())?);
                positions.push(position);
            }
            EntryRequest::Read { resource_type, .. } => {
                vault.authorize(store, ctx, resource_type, Interaction::Read)?;
            }
            EntryRequest::Search { resource_type, .. } => {
                vault.authorize(store, ctx, resource_type, Interaction::Search)?;
            }
            EntryRequest::Exists(_) | EntryRequest::NothingToDelete => {}
        }
    }
    // R4 processing order: DELETE, then POST, then PUT (then GET, after the commit).
    let rank = |op: &WriteOp| match op.kind {
        WriteKind::Delete { .. } => 0,
        WriteKind::Create => 1,
        WriteKind::Update { .. } => 2,
    };
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by_key(|&i| rank(&writes[i]));
    let ordered: Vec<WriteOp> = order.iter().map(|&i| writes[i].clone()).collect();
    let outcomes = vault.apply(store, ctx, &ordered).map_err(|(_, e)| e)?;
    let mut results: Vec<Option<EntryResult>> = vec![None; parsed.len()];
    for (outcome, &i) in outcomes.into_iter().zip(&order) {
        results[positions[i]] = Some(EntryResult::Written(outcome));
    }
    for (position, request) in parsed.iter().enumerate() {
        if results[position].is_none() {
            results[position] = Some(read_entry(vault, store, ctx, request));
        }
    }
    Ok(results.into_iter().flatten().collect())
}
