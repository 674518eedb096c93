//! Request path normalization before routing.

use crate::protocol::ApiError;

/// Removes `.` and `..` segments (RFC 3986 §5.2.4) so that a path cannot climb out of the prefix
/// it was routed by, and refuses percent-encoded dots, slashes and backslashes, which upstreams
/// may decode into the same climb. `..` at the root stays at the root.
pub fn normalize_path(path: &str) -> Result<std::borrow::Cow<'_, str>, ApiError> {
    // `%2e`, `%2f`, `%5c` in any case, without copying the path.
    let encoded = path
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && matches!((w[1], w[2].to_ascii_lowercase()), (b'2', b'e' | b'f') | (b'5', b'c')));
    if encoded {
        return Err(ApiError::bad_request(format!(
            "path {path:?} holds a percent-encoded '.', '/' or '\\'; send them unencoded"
        )));
    }
    if !path.split('/').any(|s| s == "." || s == "..") {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Ok(std::borrow::Cow::Owned(format!("/{}", out.join("/"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_and_encoded_ones_refused() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/a/b").unwrap(), "/a/b");
        assert_eq!(n("/keep/../status/418").unwrap(), "/status/418");
        assert_eq!(n("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(n("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert!(n("/keep/%2E%2E/x").is_err());
        assert!(n("/keep/a%2fb").is_err());
    }
}
