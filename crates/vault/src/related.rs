//! Searches that reach resources besides the ones they list: chained parameters and
//! `_has` (criteria on the resources a result points to, or that point to it), and
//! `_include` / `_revinclude` (resources returned beside the results). Every resource
//! reached is one the token may see: its type granted (search for a criterion, read for
//! an include), its query restrictions met, in the same partition. A chain or `_has`
//! becomes a criterion on the searched type's own index: the ids it reached, at most
//! [`MAX_LINKED`] of them.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::authz::{self, Access, Denial, Grant, Interaction};
use crate::index::{values_of, IndexValue};
use crate::registry::Registry;
use crate::search::{
    self, Criterion, Include, Link, Match, SearchError, SearchQuery, MAX_LINK_DEPTH,
};
use crate::{id_criterion, Stored, VaultError, VaultStore};

/// The most resources one chain or `_has` may reach; past it the search is refused
/// (400 `too-costly`) with a hint to narrow it.
pub const MAX_LINKED: usize = 500;
/// The most resources `_include` and `_revinclude` may add to one page.
pub const MAX_INCLUDED: usize = 1000;
/// References asked for in one reverse-include search.
const REVERSE_CHUNK: usize = 32;

/// What a search may see of the types it reaches besides its own.
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    /// Its own type only: the audit repository's AuditEvents.
    Own,
    /// What the token grants in the partition.
    Token(Grant<'a>),
}

/// Where a search runs, and what it may reach.
pub(crate) struct Scope<'a, S> {
    pub registry: &'a Registry,
    pub store: &'a S,
    pub partition: &'a str,
    pub base: &'a str,
    pub reach: Reach<'a>,
}

/// Resources an include added, and the types it left out because the token does not
/// grant reading them.
#[derive(Debug, Default)]
pub struct Included {
    pub resources: Vec<Stored>,
    pub withheld: BTreeSet<String>,
}

pub(crate) fn search_error(error: SearchError) -> VaultError {
    match error {
        SearchError::TooCostly(text) => VaultError::TooCostly(text),
        SearchError::NotSupported(text) => VaultError::NotSupported(text),
        other => VaultError::Invalid(other.to_string()),
    }
}

/// Is `stored` one `access` lets the caller see?
pub(crate) fn visible<S: VaultStore>(
    store: &S,
    partition: &str,
    access: &Access,
    stored: &Stored,
) -> Result<bool, VaultError> {
    match access {
        Access::All => Ok(true),
        Access::Restricted(restrictions) => {
            let (total, _) = store.search(
                partition,
                &stored.resource_type,
                &[id_criterion(&stored.id)],
                Some(restrictions),
                &[],
                0,
                0,
                true,
            )?;
            Ok(total > 0)
        }
    }
}

/// `Type/id` of a local reference to a known type.
fn local_reference<'r>(registry: &Registry, reference: &'r str) -> Option<(&'r str, &'r str)> {
    let (resource_type, id) = reference.split_once('/')?;
    (registry.is_resource_type(resource_type) && !id.is_empty() && !id.contains('/'))
        .then_some((resource_type, id))
}

impl<'a, S: VaultStore> Scope<'a, S> {
    fn access(&self, resource_type: &str, interaction: Interaction) -> Result<Access, VaultError> {
        match self.reach {
            Reach::Own => Err(VaultError::NotSupported(format!(
                "this search reaches no resources but its own type, not {resource_type}"
            ))),
            Reach::Token(grant) => authz::authorize(
                self.registry,
                grant,
                self.partition,
                resource_type,
                interaction,
            )
            .map_err(VaultError::Denied),
        }
    }

    /// The resources of `resource_type` meeting `key=value` that `access` shows, at most
    /// [`MAX_LINKED`].
    fn matching(
        &self,
        resource_type: &str,
        key: &str,
        value: &str,
        access: &Access,
        depth: usize,
    ) -> Result<Vec<Stored>, VaultError> {
        let pairs = [(key.to_owned(), value.to_owned())];
        let mut query = search::parse(self.registry, resource_type, &pairs, true, self.base)
            .map_err(search_error)?;
        if query.criteria.len() + query.links.len() != 1 {
            return Err(VaultError::Invalid(format!(
                "'{key}' is not a search parameter of {resource_type} a chain or _has can end in"
            )));
        }
        self.resolve_links(resource_type, &mut query, depth + 1)?;
        let criteria = query.criteria;
        let restrictions = access.restrictions();
        let (_, found) = self.store.search(
            self.partition,
            resource_type,
            &criteria,
            restrictions,
            &[],
            0,
            MAX_LINKED + 1,
            false,
        )?;
        if found.len() > MAX_LINKED {
            return Err(VaultError::TooCostly(format!(
                "'{key}={value}' reaches more than {MAX_LINKED} {resource_type} resources; narrow it"
            )));
        }
        Ok(found)
    }

    /// Turns the chains and `_has` of a search of `resource_type` into criteria on its
    /// own index.
    pub fn resolve_links(
        &self,
        resource_type: &str,
        query: &mut SearchQuery,
        depth: usize,
    ) -> Result<(), VaultError> {
        for link in std::mem::take(&mut query.links) {
            query
                .criteria
                .push(self.resolve(resource_type, &link, depth)?);
        }
        Ok(())
    }

    /// A chain or `_has` of a search of `resource_type`, as a criterion on its own index.
    fn resolve(
        &self,
        resource_type: &str,
        link: &Link,
        depth: usize,
    ) -> Result<Criterion, VaultError> {
        if depth > MAX_LINK_DEPTH {
            return Err(VaultError::TooCostly(format!(
                "chains and _has nest at most {MAX_LINK_DEPTH} deep"
            )));
        }
        match link {
            Link::Chain {
                param,
                targets,
                key,
                value,
            } => {
                let mut any_of = Vec::new();
                let mut granted = false;
                for target in targets {
                    // A type the token may not search is one whose resources it cannot
                    // see: the chain cannot go through them.
                    let access = match self.access(target, Interaction::Search) {
                        Err(VaultError::Denied(Denial::Scope)) => continue,
                        other => other?,
                    };
                    granted = true;
                    for found in self.matching(target, key, value, &access, depth)? {
                        any_of.push(Match::Reference {
                            reference: Some(format!("{target}/{}", found.id)),
                            id: found.id,
                        });
                    }
                }
                if !granted {
                    return Err(VaultError::Denied(Denial::Scope));
                }
                Ok(Criterion {
                    param: param.clone(),
                    any_of,
                    negate: false,
                    missing: None,
                })
            }
            Link::Has {
                source,
                param,
                key,
                value,
            } => {
                let access = self.access(source, Interaction::Search)?;
                let mut ids = BTreeSet::new();
                for found in self.matching(source, key, value, &access, depth)? {
                    let resource = found.json()?;
                    for value in values_of(self.registry, source, param, &resource, self.base) {
                        if let IndexValue::Reference { reference, .. } = value {
                            if let Some((ty, id)) = local_reference(self.registry, &reference) {
                                if ty == resource_type {
                                    ids.insert(id.to_owned());
                                }
                            }
                        }
                    }
                }
                Ok(Criterion {
                    param: "_id".into(),
                    any_of: ids
                        .into_iter()
                        .map(|id| Match::Token {
                            system: None,
                            code: Some(id),
                        })
                        .collect(),
                    negate: false,
                    missing: None,
                })
            }
        }
    }

    /// The resources `includes` add to a page of `found` (each once, none of the page).
    pub fn include(&self, includes: &[Include], found: &[Stored]) -> Result<Included, VaultError> {
        let mut seen: HashSet<(String, String)> = found
            .iter()
            .map(|s| (s.resource_type.clone(), s.id.clone()))
            .collect();
        let mut out = Included::default();
        let mut access: HashMap<(String, bool), Option<Access>> = HashMap::new();
        let mut frontier: Vec<Stored> = found.to_vec();
        let mut first = true;
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for include in includes.iter().filter(|i| first || i.iterate) {
                let reached = if include.reverse {
                    self.reverse(include, &frontier, &mut access, &mut out.withheld)?
                } else {
                    self.forward(include, &frontier, &mut access, &mut out.withheld)?
                };
                for stored in reached {
                    if seen.insert((stored.resource_type.clone(), stored.id.clone())) {
                        next.push(stored);
                    }
                }
                if out.resources.len() + next.len() > MAX_INCLUDED {
                    return Err(VaultError::TooCostly(format!(
                        "_include and _revinclude add more than {MAX_INCLUDED} resources to this page; ask for a smaller _count"
                    )));
                }
            }
            out.resources.extend(next.iter().cloned());
            frontier = next;
            first = false;
        }
        Ok(out)
    }

    /// The access the token gives to `resource_type` (to read it, or with `search`, to
    /// list it), once per type; `None` when it gives none.
    fn cached<'c>(
        &self,
        cache: &'c mut HashMap<(String, bool), Option<Access>>,
        resource_type: &str,
        search: bool,
    ) -> Result<&'c Option<Access>, VaultError> {
        let key = (resource_type.to_owned(), search);
        if !cache.contains_key(&key) {
            let interaction = if search {
                Interaction::Search
            } else {
                Interaction::Read
            };
            let access = match self.access(resource_type, interaction) {
                Ok(access) => Some(access),
                Err(VaultError::Denied(Denial::Scope)) => None,
                Err(other) => return Err(other),
            };
            cache.insert(key.clone(), access);
        }
        Ok(&cache[&key])
    }

    /// `_include`: what the frontier's `source` resources point to.
    fn forward(
        &self,
        include: &Include,
        frontier: &[Stored],
        cache: &mut HashMap<(String, bool), Option<Access>>,
        withheld: &mut BTreeSet<String>,
    ) -> Result<Vec<Stored>, VaultError> {
        let mut references = BTreeSet::new();
        for stored in frontier
            .iter()
            .filter(|s| s.resource_type == include.source)
        {
            let resource = stored.json()?;
            for value in values_of(
                self.registry,
                &include.source,
                &include.param,
                &resource,
                self.base,
            ) {
                if let IndexValue::Reference { reference, .. } = value {
                    if let Some((ty, id)) = local_reference(self.registry, &reference) {
                        if include.target.as_deref().is_none_or(|t| t == ty) {
                            references.insert((ty.to_owned(), id.to_owned()));
                        }
                    }
                }
            }
        }
        let mut reached = Vec::new();
        for (resource_type, id) in references {
            let Some(access) = self.cached(cache, &resource_type, false)?.clone() else {
                withheld.insert(resource_type);
                continue;
            };
            let Some(stored) = self.store.current(self.partition, &resource_type, &id)? else {
                continue;
            };
            if !stored.deleted && visible(self.store, self.partition, &access, &stored)? {
                reached.push(stored);
            }
        }
        Ok(reached)
    }

    /// `_revinclude`: the `source` resources pointing to the frontier.
    fn reverse(
        &self,
        include: &Include,
        frontier: &[Stored],
        cache: &mut HashMap<(String, bool), Option<Access>>,
        withheld: &mut BTreeSet<String>,
    ) -> Result<Vec<Stored>, VaultError> {
        let targets: Vec<Match> = frontier
            .iter()
            .filter(|s| {
                include
                    .target
                    .as_deref()
                    .is_none_or(|t| t == s.resource_type)
            })
            .map(|s| Match::Reference {
                reference: Some(format!("{}/{}", s.resource_type, s.id)),
                id: s.id.clone(),
            })
            .collect();
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let Some(access) = self.cached(cache, &include.source, true)?.clone() else {
            withheld.insert(include.source.clone());
            return Ok(Vec::new());
        };
        let restrictions = access.restrictions();
        let mut reached = Vec::new();
        for chunk in targets.chunks(REVERSE_CHUNK) {
            let criterion = Criterion {
                param: include.param.clone(),
                any_of: chunk.to_vec(),
                negate: false,
                missing: None,
            };
            let (_, found) = self.store.search(
                self.partition,
                &include.source,
                &[criterion],
                restrictions,
                &[],
                0,
                MAX_INCLUDED + 1,
                false,
            )?;
            reached.extend(found);
            if reached.len() > MAX_INCLUDED {
                break;
            }
        }
        Ok(reached)
    }
}
