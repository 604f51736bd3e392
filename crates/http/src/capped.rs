//! A map keyed by bytes (a certificate's DER, a chain's) that is emptied when it reaches
//! its capacity: for what a client presents on every connection and is costly to work
//! out each time. A client set larger than the capacity makes it start afresh, never
//! grow.

use std::collections::HashMap;
use std::sync::Mutex;

pub(crate) struct Capped<V> {
    map: Mutex<HashMap<Box<[u8]>, V>>,
    capacity: usize,
}

impl<V: Clone> Capped<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::default(),
            capacity,
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<V> {
        self.map.lock().ok()?.get(key).cloned()
    }

    /// Adds the entry, first emptying the map if it is full.
    pub(crate) fn insert(&self, key: Box<[u8]>, value: V) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(key, value);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl<V> std::fmt::Debug for Capped<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capped")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}
