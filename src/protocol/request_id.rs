//! The gateway's request id: which route and variant answered, and what it predicted, readable
//! by any replica without a shared store.
//!
//! `x-modelgate-request-id: <nonce>~<issued>~<route>~<variant>~<unit>~<prediction>~<mac>`
//! - `nonce`: 16 hex digits, random; `issued`: unix seconds;
//! - `unit`: who the answer counts for in an experiment: `p` when the variant was pinned,
//!   `r` when the request had no sticky key (the request is its own unit, its id the nonce),
//!   or the sticky key's unit id in 16 hex digits (a hash of the key, never the key);
//! - `prediction`: the top class of each row, `.`-separated (empty when the answer was not a
//!   classifier's, or had more than [`MAX_ROWS`] rows);
//! - `mac`: the first 16 hex digits of HMAC-SHA256 over the rest with the key shared by the
//!   replicas (`MODELGATE_FEEDBACK_KEY`), or `0` when no key is set (ids are then not
//!   tamper-evident).
//!
//! Names cannot hold `~` (routes.yaml validation refuses it), so the id splits unambiguously.

use super::secret::{constant_time_eq, push_hex};
use crate::telemetry::window::Unit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The response header that carries the id.
pub const HEADER: &str = "x-modelgate-request-id";

/// Predictions of answers with more rows than this are not carried.
pub const MAX_ROWS: usize = 64;

/// A decoded gateway request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRequestId {
    /// Random; written as 16 hex digits.
    pub nonce: u64,
    /// Unix seconds when it was issued.
    pub issued: u64,
    /// The route that was addressed (model name or path prefix).
    pub route: String,
    /// The variant that answered.
    pub variant: String,
    /// Who the answer counts for.
    pub unit: Unit,
    /// The top class of each row the variant answered, when it was a classifier.
    pub prediction: Option<Vec<i64>>,
}

/// Why a request id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not shaped like one of ours.
    #[error("request_id {0:?} is not a modelgate request id (take it from the x-modelgate-request-id answer header)")]
    Malformed(String),
    /// The signature does not match.
    #[error("request_id signature does not match: it was altered, or issued by a gateway with another MODELGATE_FEEDBACK_KEY")]
    BadSignature,
    /// Too old.
    #[error("request_id expired: issued {age}s ago, feedback is accepted for {max}s")]
    Expired {
        /// Seconds since it was issued.
        age: u64,
        /// The limit.
        max: u64,
    },
}

/// Issues and checks request ids with the replicas' shared key.
#[derive(Clone)]
pub struct IdCodec {
    /// HMAC-SHA256 keyed once (its inner and outer pads already hashed): each id then costs
    /// the hash of its own bytes only.
    keyed: Option<Hmac<Sha256>>,
    max_age: Duration,
}

impl std::fmt::Debug for IdCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("IdCodec").field("signed", &self.keyed.is_some()).field("max_age", &self.max_age).finish()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes a mac: 16 hex digits, or `0` for an unsigned id.
fn push_mac(out: &mut String, tag: Option<[u8; 8]>) {
    match tag {
        Some(tag) => push_hex(out, &tag),
        None => out.push('0'),
    }
}

impl IdCodec {
    /// A codec that signs with `key` (if any) and accepts ids up to `max_age` old.
    pub fn new(key: Option<Vec<u8>>, max_age: Duration) -> Self {
        let keyed = key
            .filter(|k| !k.is_empty())
            .map(|k| Hmac::<Sha256>::new_from_slice(&k).expect("HMAC accepts any key length"));
        Self { keyed, max_age }
    }

    /// Reads the key from `MODELGATE_FEEDBACK_KEY`.
    pub fn from_env(max_age: Duration) -> Self {
        Self::new(std::env::var("MODELGATE_FEEDBACK_KEY").ok().map(String::into_bytes), max_age)
    }

    fn mac(&self, body: &str) -> String {
        let mut out = String::with_capacity(16);
        push_mac(&mut out, self.tag(body));
        out
    }

    /// The first 8 bytes of the body's HMAC, when ids are signed.
    fn tag(&self, body: &str) -> Option<[u8; 8]> {
        let keyed = self.keyed.as_ref()?;
        let full = keyed.clone().chain_update(body.as_bytes()).finalize().into_bytes();
        full[..8].try_into().ok()
    }

    /// A new id for an answer of `variant` on `route` given to `unit` (an unkeyed request's
    /// unit id becomes the nonce).
    pub fn issue(&self, route: &str, variant: &str, unit: Unit, prediction: Option<&[i64]>) -> String {
        // Written into one string (a request id is made for every answer).
        let mut id = String::with_capacity(80 + route.len() + variant.len());
        let nonce = match unit {
            Unit::Request(id) => id,
            Unit::Pinned | Unit::Key(_) => rand::random::<u64>(),
        };
        let _ = write!(id, "{nonce:016x}~{}~{route}~{variant}~", now());
        let _ = match unit {
            Unit::Pinned => id.write_char('p'),
            Unit::Request(_) => id.write_char('r'),
            Unit::Key(key) => write!(id, "{key:016x}"),
        };
        id.push('~');
        if let Some(p) = prediction.filter(|p| !p.is_empty() && p.len() <= MAX_ROWS) {
            for (i, class) in p.iter().enumerate() {
                let _ = if i == 0 { write!(id, "{class}") } else { write!(id, ".{class}") };
            }
        }
        let tag = self.tag(&id);
        id.push('~');
        push_mac(&mut id, tag);
        id
    }

    /// Reads an id back, checking its shape, signature and age.
    pub fn decode(&self, text: &str) -> Result<GatewayRequestId, IdError> {
        let malformed = || IdError::Malformed(text.chars().take(200).collect());
        let parts: Vec<&str> = text.split('~').collect();
        let [nonce, issued, route, variant, unit, pred, mac] = parts[..] else { return Err(malformed()) };
        if nonce.len() != 16 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) || route.is_empty() || variant.is_empty()
        {
            return Err(malformed());
        }
        let nonce = u64::from_str_radix(nonce, 16).map_err(|_| malformed())?;
        let issued: u64 = issued.parse().map_err(|_| malformed())?;
        let unit = match unit {
            "p" => Unit::Pinned,
            "r" => Unit::Request(nonce),
            hex16 if hex16.len() == 16 && hex16.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Unit::Key(u64::from_str_radix(hex16, 16).map_err(|_| malformed())?)
            }
            _ => return Err(malformed()),
        };
        let prediction = if pred.is_empty() {
            None
        } else {
            Some(pred.split('.').map(str::parse).collect::<Result<Vec<i64>, _>>().map_err(|_| malformed())?)
        };
        let body = &text[..text.len() - mac.len() - 1];
        let expected = self.mac(body);
        // Compare in constant time: the mac must not leak through timing.
        if !constant_time_eq(expected.as_bytes(), mac.as_bytes()) {
            return Err(IdError::BadSignature);
        }
        let age = now().saturating_sub(issued);
        if age > self.max_age.as_secs() {
            return Err(IdError::Expired { age, max: self.max_age.as_secs() });
        }
        Ok(GatewayRequestId { nonce, issued, route: route.to_string(), variant: variant.to_string(), unit, prediction })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_strangers_forgeries_and_old_ones() {
        let day = Duration::from_secs(86_400);
        let a = IdCodec::new(Some(b"secret".to_vec()), day);
        let id = a.issue("/remote/", "bc-v2", Unit::Key(0xabc), Some(&[1, 0, -3]));
        let got = a.decode(&id).unwrap();
        assert_eq!((got.route.as_str(), got.variant.as_str()), ("/remote/", "bc-v2"));
        assert_eq!(got.prediction, Some(vec![1, 0, -3]));
        assert_eq!(got.unit, Unit::Key(0xabc));
        let pinned = a.decode(&a.issue("r", "v", Unit::Pinned, None)).unwrap();
        assert_eq!(pinned.unit, Unit::Pinned);
        let unkeyed = a.decode(&a.issue("r", "v", Unit::Request(77), None)).unwrap();
        assert_eq!((unkeyed.unit, unkeyed.nonce), (Unit::Request(77), 77));
        assert_eq!(a.decode(&a.issue("r", "v", Unit::Request(1), None)).unwrap().prediction, None);

        assert!(matches!(a.decode("abc"), Err(IdError::Malformed(_))));
        // The key's pads are hashed once: the mac is still HMAC-SHA256 of the body.
        let body = &id[..id.rfind('~').unwrap()];
        let fresh = crate::protocol::secret::hmac_sha256(b"secret", body.as_bytes());
        assert_eq!(id.rsplit('~').next().unwrap(), crate::protocol::secret::hex(&fresh[..8]));
        let forged = id.replace("bc-v2", "bc-v1");
        assert_eq!(a.decode(&forged), Err(IdError::BadSignature));
        let other_key = IdCodec::new(Some(b"other".to_vec()), day);
        assert_eq!(other_key.decode(&id), Err(IdError::BadSignature));
        let unsigned = IdCodec::new(None, day);
        assert!(unsigned.decode(&unsigned.issue("r", "v", Unit::Request(1), None)).is_ok());

        let parts: Vec<&str> = id.split('~').collect();
        let old_body = format!("{}~{}~{}~{}~{}~{}", parts[0], now() - 90_000, parts[2], parts[3], parts[4], parts[5]);
        let old = format!("{old_body}~{}", a.mac(&old_body));
        assert!(matches!(a.decode(&old), Err(IdError::Expired { max: 86_400, .. })));
    }
}
