//! Checkpoints of the audit trail. The trail is a set of hash chains, one per instance,
//! so that instances sharing a database never wait for each other's appends. Each chain
//! alone proves that none of its events was changed, removed or reordered; a checkpoint
//! records the head of every chain at one moment, is linked to the checkpoint before it
//! and is signed (by an instance's TLS key, outside the database), so that a chain
//! removed whole, or rewritten with recomputed hashes before a checkpoint, is caught.

use std::collections::BTreeMap;

use ring::digest;
use serde::{Deserialize, Serialize};
use tessera_types::UnixTime;

/// A chain's head: how many events it has and the hash of the newest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

/// What a checkpoint signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Counts from 1, without gaps.
    pub n: i64,
    pub at: UnixTime,
    /// [`checkpoint_hash`] of the previous checkpoint's signed text; empty for the first.
    pub previous: String,
    /// Every chain's head, by chain name.
    pub heads: BTreeMap<String, Head>,
}

impl Checkpoint {
    /// The checkpoint after `last` (the signed text and its content), or the first one.
    /// `None` when no chain moved since `last`: a checkpoint would say nothing new.
    pub fn next(
        last: Option<(&str, &Checkpoint)>,
        heads: BTreeMap<String, Head>,
        at: UnixTime,
    ) -> Option<Self> {
        match last {
            Some((_, last)) if last.heads == heads => None,
            Some((text, last)) => Some(Self {
                n: last.n + 1,
                at,
                previous: checkpoint_hash(text),
                heads,
            }),
            None if heads.is_empty() => None,
            None => Some(Self {
                n: 1,
                at,
                previous: String::new(),
                heads,
            }),
        }
    }

    /// Why this checkpoint cannot follow `previous` (its signed text and content), if
    /// it cannot: a gap in the numbers, a broken link, a chain that disappeared or went
    /// backwards (events removed).
    pub fn follows(&self, previous: Option<(&str, &Checkpoint)>) -> Result<(), String> {
        let Some((text, previous)) = previous else {
            return match (self.n, self.previous.as_str()) {
                (1, "") => Ok(()),
                _ => Err(format!(
                    "checkpoint {} is the first one kept: checkpoints before it were removed",
                    self.n
                )),
            };
        };
        if self.n != previous.n + 1 {
            return Err(format!(
                "checkpoint {} follows checkpoint {}: checkpoints between them were removed",
                self.n, previous.n
            ));
        }
        if self.previous != checkpoint_hash(text) {
            return Err(format!(
                "checkpoint {} does not name checkpoint {} as its predecessor: one of them was altered",
                self.n, previous.n
            ));
        }
        for (chain, head) in &previous.heads {
            match self.heads.get(chain) {
                Some(now) if now.seq >= head.seq => {}
                Some(now) => {
                    return Err(format!(
                        "chain {chain} has {} events at checkpoint {} but {} at checkpoint {}",
                        now.seq, self.n, head.seq, previous.n
                    ))
                }
                None => {
                    return Err(format!(
                        "chain {chain} is in checkpoint {} but not in checkpoint {}",
                        previous.n, self.n
                    ))
                }
            }
        }
        Ok(())
    }
}

/// SHA-256 of a checkpoint's signed text, hex: what the next checkpoint names.
pub fn checkpoint_hash(signed: &str) -> String {
    tessera_types::hex(digest::digest(&digest::SHA256, signed.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(of: &[(&str, i64)]) -> BTreeMap<String, Head> {
        of.iter()
            .map(|(chain, seq)| {
                (
                    (*chain).to_owned(),
                    Head {
                        seq: *seq,
                        hash: format!("h{seq}"),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_checkpoint_is_written_only_when_a_chain_moved() {
        assert_eq!(Checkpoint::next(None, heads(&[]), UnixTime(1)), None);
        let first = Checkpoint::next(None, heads(&[("a", 1)]), UnixTime(1)).unwrap();
        assert_eq!((first.n, first.previous.as_str()), (1, ""));
        assert_eq!(
            Checkpoint::next(Some(("t1", &first)), heads(&[("a", 1)]), UnixTime(2)),
            None
        );
        let second =
            Checkpoint::next(Some(("t1", &first)), heads(&[("a", 2)]), UnixTime(2)).unwrap();
        assert_eq!(second.n, 2);
        assert_eq!(second.previous, checkpoint_hash("t1"));
        assert_eq!(second.follows(Some(("t1", &first))), Ok(()));
        assert_eq!(first.follows(None), Ok(()));
    }

    #[test]
    fn gaps_broken_links_and_shrinking_chains_are_named() {
        let first = Checkpoint::next(None, heads(&[("a", 3), ("b", 1)]), UnixTime(1)).unwrap();
        let later = |of: &[(&str, i64)]| {
            Checkpoint::next(Some(("t1", &first)), heads(of), UnixTime(2)).unwrap()
        };
        let shrunk = later(&[("a", 2), ("b", 1)]);
        assert!(shrunk
            .follows(Some(("t1", &first)))
            .unwrap_err()
            .contains("chain a has 2 events at checkpoint 2 but 3 at checkpoint 1"));
        let gone = later(&[("a", 3)]);
        assert!(gone
            .follows(Some(("t1", &first)))
            .unwrap_err()
            .contains("chain b is in checkpoint 1 but not in checkpoint 2"));
        let good = later(&[("a", 3), ("b", 2), ("c", 1)]);
        assert!(good
            .follows(Some(("other text", &first)))
            .unwrap_err()
            .contains("was altered"));
        let mut skipped = good.clone();
        skipped.n = 3;
        assert!(skipped
            .follows(Some(("t1", &first)))
            .unwrap_err()
            .contains("removed"));
        assert!(good.follows(None).unwrap_err().contains("first one kept"));
    }
}
