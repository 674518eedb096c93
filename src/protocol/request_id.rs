//! The gateway's request id: which route and variant answered, readable by any replica.
//!
//! `x-modelgate-request-id: <nonce>~<route>~<variant>`. Names cannot hold `~`, so the id splits
//! without ambiguity; the nonce makes it unique.

/// A decoded gateway request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRequestId {
    /// 16 hex digits, random.
    pub nonce: String,
    /// The route that was addressed (model name or path prefix).
    pub route: String,
    /// The variant that answered.
    pub variant: String,
}

/// The response header that carries it.
pub const HEADER: &str = "x-modelgate-request-id";

impl GatewayRequestId {
    /// A new id for `route` and `variant`.
    pub fn new(route: &str, variant: &str) -> Self {
        Self {
            nonce: format!("{:016x}", rand::random::<u64>()),
            route: route.to_string(),
            variant: variant.to_string(),
        }
    }

    /// The header value.
    pub fn encode(&self) -> String {
        format!("{}~{}~{}", self.nonce, self.route, self.variant)
    }

    /// Reads an id back; `None` when it is not one of ours.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '~');
        let (nonce, route, variant) = (parts.next()?, parts.next()?, parts.next()?);
        let ok = nonce.len() == 16
            && nonce.bytes().all(|b| b.is_ascii_hexdigit())
            && !route.is_empty()
            && !variant.is_empty();
        ok.then(|| Self { nonce: nonce.into(), route: route.into(), variant: variant.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_strangers() {
        let id = GatewayRequestId::new("/remote/", "bc-v2");
        assert_eq!(GatewayRequestId::decode(&id.encode()), Some(id));
        assert_eq!(GatewayRequestId::decode("abc"), None);
        assert_eq!(GatewayRequestId::decode("zzzzzzzzzzzzzzzz~a~b"), None);
    }
}
