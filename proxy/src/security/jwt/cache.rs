//! Verified tokens, so that a client that sends the same token on every request pays for its
//! signature once. Keyed by SHA-256 of (provider, token): a collision would let a token skip
//! verification, so the key is a cryptographic hash, not the map's own. Bounded: when full,
//! expired entries go, and if that frees nothing, everything (tokens are re-verified).

use std::sync::{Arc, Mutex};

use http::HeaderValue;
use ring::digest;

use crate::FastMap;
use crate::security::authz::RequestAuth;

pub(super) const CAPACITY: usize = 1024;

pub(super) type CacheKey = [u8; 32];

pub(super) struct Verified {
    pub auth: RequestAuth,
    /// `exp`, if the token has one: the entry is not used past it (plus the clock skew).
    pub exp: Option<i64>,
    /// `output_claim_to_headers`' values, in its order (None: the claim is absent or not a
    /// string, number or boolean).
    pub claim_headers: Vec<Option<HeaderValue>>,
}

#[derive(Default)]
pub(super) struct TokenCache {
    entries: Mutex<FastMap<CacheKey, Arc<Verified>>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").field("len", &self.len()).finish()
    }
}

pub(super) fn key(provider: usize, token: &str) -> CacheKey {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&(provider as u64).to_le_bytes());
    ctx.update(token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

fn live(entry: &Verified, now: i64, skew: i64) -> bool {
    entry.exp.is_none_or(|exp| now <= exp.saturating_add(skew))
}

impl TokenCache {
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
