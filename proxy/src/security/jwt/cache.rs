//! Verified tokens, so that a client that sends the same token on every request pays for its
//! signature once. A collision of keys would let a token skip verification, so the key cannot
//! be an ordinary hash an attacker can aim at: it is 128 bits of SipHash (a pseudo-random
//! function) under two secret random keys of this process, over (provider, token). That costs
//! a few hundred instructions for a 1 KiB token where SHA-256 cost several thousand, and unlike
//! keeping the tokens themselves it holds 16 bytes per entry instead of up to 8 KiB. Bounded:
//! when full, expired entries go, and if that frees nothing, everything (tokens are
//! re-verified).

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use crate::FastMap;
use crate::security::authz::RequestAuth;

pub(super) const CAPACITY: usize = 1024;

pub(super) type CacheKey = u128;

pub(super) struct Verified {
    /// Shared with every request that presents the token.
    pub auth: Arc<RequestAuth>,
    /// `exp`, if the token has one: the entry is not used past it (plus the clock skew).
    pub exp: Option<i64>,
    /// `output_claim_to_headers`' values, in its order (None: the claim is absent or not a
    /// string, number or boolean).
    pub claim_headers: Vec<Option<HeaderValue>>,
}

#[derive(Default)]
pub(super) struct TokenCache {
    entries: Mutex<FastMap<CacheKey, Arc<Verified>>>,
    /// std's `RandomState` is SipHash-1-3 with keys drawn at random for each instance.
    secret: (RandomState, RandomState),
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").field("len", &self.len()).finish()
    }
}

fn live(entry: &Verified, now: i64, skew: i64) -> bool {
    entry.exp.is_none_or(|exp| now <= exp.saturating_add(skew))
}

impl TokenCache {
    pub fn key(&self, provider: usize, token: &str) -> CacheKey {
        let half = |state: &RandomState| state.hash_one((provider, token));
        (u128::from(half(&self.secret.0)) << 64) | u128::from(half(&self.secret.1))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<CacheKey, Arc<Verified>>> {
        // A panic while holding the lock leaves the map whole (no invariant spans entries).
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &CacheKey, now: i64, skew: i64) -> Option<Arc<Verified>> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(entry) if live(entry, now, skew) => Some(Arc::clone(entry)),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: CacheKey, entry: Arc<Verified>, now: i64, skew: i64) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, e| live(e, now, skew));
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, entry);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
