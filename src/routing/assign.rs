//! Variant assignment: pinned version → override header → sticky bucket → weighted draw.
//!
//! Traffic is cut into [`BUCKETS`] buckets. Variants own cumulative bucket ranges in a fixed
//! order (stable / active first), so raising a canary's weight only moves buckets from stable to
//! canary, and a sticky key (hashed with the route's salt) lands in the same bucket on every
//! replica, with no shared state.

use super::{Route, Variant};
use crate::config::Sticky;
use crate::protocol::ApiError;
use http::HeaderMap;
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64;

/// Number of buckets traffic is divided into.
pub const BUCKETS: u32 = 10_000;

/// The header that pins a variant by name.
pub const OVERRIDE_HEADER: &str = "x-modelgate-variant";

/// Why a variant was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `/versions/{v}/` in the path.
    Version,
    /// The `x-modelgate-variant` request header.
    Override,
    /// The user's sticky key.
    Sticky,
    /// A weighted random draw.
    Random,
}

/// The bucket of `key` on a route salted with `salt`.
pub fn bucket(salt: &str, key: &str) -> u32 {
    let mut buf = Vec::with_capacity(salt.len() + 1 + key.len());
    buf.extend_from_slice(salt.as_bytes());
    buf.push(0);
    buf.extend_from_slice(key.as_bytes());
    (xxh3_64(&buf) % u64::from(BUCKETS)) as u32
}

/// Seed of the unit id hash: independent of the bucket hash, so that sampling units by their
/// id's low bits takes the same share of every arm.
const UNIT_SEED: u64 = 0x6d67_756e_6974_7331;

/// The unit id of a sticky key: who an experiment's numbers are counted for.
pub fn unit_id(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), UNIT_SEED)
}

/// Bucket counts for weights in a fixed order, summing to [`BUCKETS`] (largest remainder, ties
/// to the earlier variant). All-zero weights give everything to the first variant.
pub fn bucket_counts(weights: &[f64]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let mut counts = split(BUCKETS, weights);
    if counts.iter().all(|c| *c == 0) {
        counts[0] = BUCKETS;
    }
    counts
}

/// Bucket counts for a two-way split with `weight` percent on the second variant: the canary's
/// count grows with its weight and the stable range shrinks from the top, never the reverse.
pub fn canary_counts(weight: f64) -> [u32; 2] {
    let canary = (weight.clamp(0.0, 100.0) * f64::from(BUCKETS) / 100.0).round() as u32;
    [BUCKETS - canary, canary]
}

/// A variant's share of a route as the spec and status make it.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// Backend name.
    pub name: String,
    /// Part in the rollout.
    pub role: super::Role,
    /// Percent of unpinned traffic.
    pub weight: f64,
    /// Buckets owned.
    pub buckets: u32,
}

/// How a route's buckets are divided: the variants' shares, and the bucket ranges in order as
/// (exclusive upper end, index into the shares).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// In bucket order (stable / active / control-as-written first).
    pub shares: Vec<Share>,
    /// Ranges covering every bucket.
    pub segments: Vec<(u32, usize)>,
}

impl Layout {
    /// One contiguous range per share, in order.
    pub fn contiguous(shares: Vec<Share>) -> Layout {
        let mut upper = 0;
        let segments = shares
            .iter()
            .enumerate()
            .filter(|(_, s)| s.buckets > 0)
            .map(|(i, s)| {
                upper += s.buckets;
                (upper, i)
            })
            .collect();
        Layout { shares, segments }
    }

    /// An A/B test's layout: every arm keeps the range its file weight gives it; a stopped
    /// arm's range is divided among the live arms by their weights, so stopping an arm moves
    /// only that arm's users and every other user keeps their arm.
    pub fn ab(arms: &[(String, f64)], live: &[bool]) -> Layout {
        let weights: Vec<f64> = arms.iter().map(|(_, w)| *w).collect();
        let base = bucket_counts(&weights);
        let any_live = live.iter().zip(&weights).any(|(l, w)| *l && *w > 0.0);
        let is_live = |i: usize| !any_live || live.get(i).copied().unwrap_or(true);
        let live_weights: Vec<f64> =
            weights.iter().enumerate().map(|(i, w)| if is_live(i) { *w } else { 0.0 }).collect();
        let mut owned = vec![0u32; arms.len()];
        let mut segments = Vec::new();
        let mut upper = 0u32;
        for (i, count) in base.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            if is_live(i) {
                upper += count;
                owned[i] += count;
                segments.push((upper, i));
            } else {
                for (j, part) in split(*count, &live_weights).into_iter().enumerate() {
                    if part > 0 {
                        upper += part;
                        owned[j] += part;
                        segments.push((upper, j));
                    }
                }
            }
        }
        let shares = arms
            .iter()
            .zip(owned)
            .map(|((name, _), buckets)| Share {
                name: name.clone(),
                role: super::Role::Arm,
                weight: f64::from(buckets) * 100.0 / f64::from(BUCKETS),
                buckets,
            })
            .collect();
        Layout { shares, segments }
    }
}

/// `count` buckets split by `weights` (largest remainder, ties to the earlier one); weights
/// that are not finite and positive get none, and all-zero weights give all zeros.
fn split(count: u32, weights: &[f64]) -> Vec<u32> {
    let usable = |w: f64| w.is_finite() && w > 0.0;
    let total: f64 = weights.iter().copied().filter(|w| usable(*w)).sum();
    if total <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|&w| if usable(w) { w / total * f64::from(count) } else { 0.0 }).collect();
    let mut parts: Vec<u32> = exact.iter().map(|e| e.floor() as u32).collect();
    let left = count.saturating_sub(parts.iter().sum::<u32>());
    let mut order: Vec<usize> = (0..weights.len()).filter(|&i| usable(weights[i])).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    for i in order.into_iter().cycle().take(left as usize) {
        parts[i] += 1;
    }
    parts
}

/// Where the sticky key of a request comes from, and whether the gateway had to make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyKey {
    /// The key.
    pub key: String,
    /// A cookie to set: the request had none, so the gateway drew this key.
    pub set_cookie: Option<String>,
}

/// Every `name=value` pair of a request's `Cookie` headers, in order (pairs without `=` are
/// skipped).
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
}

/// Reads the sticky key of a request; with cookie stickiness and no cookie, draws a new key.
pub fn sticky_key(sticky: &Sticky, headers: &HeaderMap, query: Option<&str>) -> Option<StickyKey> {
    let found = match sticky {
        Sticky::Header(name) => headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string),
        Sticky::Query(name) => query.and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then(|| v.to_string())
            })
        }),
        Sticky::Cookie(name) => cookies(headers).find(|(k, _)| k == name).map(|(_, v)| v.to_string()),
    };
    match (found.filter(|k| !k.is_empty()), sticky) {
        (Some(key), _) => Some(StickyKey { key, set_cookie: None }),
        (None, Sticky::Cookie(name)) => {
            let key = format!("{:032x}", rand::random::<u128>());
            let cookie = format!("{name}={key}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax");
            Some(StickyKey { key, set_cookie: Some(cookie) })
        }
        (None, _) => None,
    }
}

/// Picks the variant that answers, in the order: pinned version, override header, sticky key,
/// weighted random draw. Pins may name any variant, even one with no share of traffic.
pub fn assign<'r>(
    route: &'r Route,
    version: Option<&str>,
    override_header: Option<&str>,
    key: Option<&str>,
) -> Result<(&'r Variant, Reason), ApiError> {
    if let Some(why) = &route.unavailable {
        return Err(ApiError::unavailable(
            format!("route {:?} is unavailable: {why}", route.name),
            Duration::from_secs(1),
        ));
    }
    let names = || route.variants.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ");
    if let Some(v) = version {
        return route.variants.iter().find(|x| x.name == v).map(|x| (x, Reason::Version)).ok_or_else(|| {
            ApiError::not_found(format!("model {:?} has no version {v:?}; versions: {}", route.name, names()))
        });
    }
    if let Some(v) = override_header {
        return route.variants.iter().find(|x| x.name == v).map(|x| (x, Reason::Override)).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{OVERRIDE_HEADER}: route {:?} has no variant {v:?}; variants: {}",
                route.name,
                names()
            ))
        });
    }
    let (b, reason) = match key {
        Some(k) => (bucket(&route.salt, k), Reason::Sticky),
        None => (rand::random_range(0..BUCKETS), Reason::Random),
    };
    route
        .segments
        .iter()
        .find(|(upper, _)| b < *upper)
        .and_then(|(_, i)| route.variants.get(*i))
        .map(|v| (v, reason))
        .ok_or_else(|| ApiError::internal(format!("route {:?} has no variant for bucket {b}", route.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_counts_sum_and_follow_weights() {
        assert_eq!(bucket_counts(&[1.0, 1.0, 1.0]), vec![3334, 3333, 3333]);
        assert_eq!(bucket_counts(&[90.0, 10.0]), vec![9000, 1000]);
        assert_eq!(bucket_counts(&[0.0, 5.0]), vec![0, 10000]);
        assert_eq!(bucket_counts(&[0.0, 0.0]), vec![10000, 0]);
        assert_eq!(canary_counts(12.34), [8766, 1234]);
        assert_eq!(canary_counts(100.0), [0, 10000]);
    }

    fn arm_of(layout: &Layout, b: u32) -> usize {
        layout.segments.iter().find(|(upper, _)| b < *upper).map(|(_, i)| *i).unwrap()
    }

    #[test]
    fn stopping_one_of_three_arms_moves_only_its_users() {
        let arms: Vec<(String, f64)> = [("a", 50.0), ("b", 30.0), ("c", 20.0)].map(|(n, w)| (n.into(), w)).to_vec();
        let before = Layout::ab(&arms, &[true, true, true]);
        assert_eq!(before.shares.iter().map(|s| s.buckets).collect::<Vec<_>>(), vec![5000, 3000, 2000]);
        for stopped in 0..3 {
            let mut live = [true; 3];
            live[stopped] = false;
            let after = Layout::ab(&arms, &live);
            assert_eq!(after.shares.iter().map(|s| s.buckets).sum::<u32>(), BUCKETS);
            assert_eq!(after.shares[stopped].buckets, 0);
            let (mut kept, mut moved) = (0, 0);
            for k in 0..10_000 {
                let b = bucket("ab-route", &format!("user-{k}"));
                let (was, now) = (arm_of(&before, b), arm_of(&after, b));
                if was == stopped {
                    assert_ne!(now, stopped);
                    moved += 1;
                } else {
                    assert_eq!(was, now, "user-{k} of a live arm kept their arm");
                    kept += 1;
                }
            }
            assert!(kept > 0 && moved > 0);
            // The stopped arm's users are divided by the live arms' weights.
            let others: Vec<usize> = (0..3).filter(|i| *i != stopped).collect();
            let total: f64 = others.iter().map(|i| arms[*i].1).sum();
            for i in others {
                let expected = 10_000.0 * arms[i].1 / 100.0 + 10_000.0 * arms[stopped].1 / 100.0 * arms[i].1 / total;
                assert!((f64::from(after.shares[i].buckets) - expected).abs() <= 1.0, "{after:?}");
            }
        }
        // Every arm stopped: nobody is left without an answer (the file's layout holds).
        assert_eq!(Layout::ab(&arms, &[false; 3]), before);
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("risk", "user-1"), bucket("risk", "user-1"));
        assert_ne!(bucket("risk", "user-1"), bucket("other", "user-1"), "the salt changes the bucket");
        let mut hist = [0u32; 10];
        for i in 0..100_000 {
            hist[(bucket("r", &format!("u{i}")) / 1000) as usize] += 1;
        }
        for h in hist {
            assert!((9_400..10_600).contains(&h), "{hist:?}");
        }
    }

    #[test]
    fn sticky_keys_come_from_header_query_or_cookie() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.insert("cookie", "a=1; mg_user=bob; c=3".parse().unwrap());
        let key = |s: &Sticky, q: Option<&str>| sticky_key(s, &h, q);
        assert_eq!(key(&Sticky::Header("x-user".into()), None).unwrap().key, "alice");
        assert_eq!(key(&Sticky::Query("user".into()), Some("x=1&user=carol")).unwrap().key, "carol");
        assert_eq!(key(&Sticky::Query("user".into()), Some("x=1")), None);
        assert_eq!(key(&Sticky::Cookie("mg_user".into()), None).unwrap().key, "bob");
        let made = sticky_key(&Sticky::Cookie("other".into()), &h, None).unwrap();
        assert_eq!(made.key.len(), 32);
        assert!(made.set_cookie.unwrap().starts_with(&format!("other={}; Path=/", made.key)));
    }
}
