//! `cluster:` of routes.yaml: fleet mode. Where etcd is, under which key prefix this fleet keeps
//! its status, leader lease and windows, who this replica is, and how long its lease lives.
//! Without the section a gateway is its own leader and keeps status in its state folder.

use super::error::Issues;
use super::raw::RawCluster;
use super::{check_name, duration};
use std::time::Duration;

/// Default lease TTL: a dead leader is replaced within this.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Default interval between two publications of a replica's windows.
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// The environment variable a replica id can come from (a pod name), when the file has none.
pub const REPLICA_ID_ENV: &str = "MODELGATE_REPLICA_ID";

/// `cluster:` after validation: enough to join a fleet.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClusterSettings {
    /// etcd client URLs (`http://host:port`), at least one.
    pub endpoints: Vec<String>,
    /// Key prefix of this fleet in etcd: starts with `/`, no trailing `/`.
    pub prefix: String,
    /// This replica's name in the fleet; `None` until filled from [`REPLICA_ID_ENV`] or the
    /// host name when serving (see [`ClusterSettings::resolve_replica_id`]).
    pub replica_id: Option<String>,
    /// TTL of the replica's lease (whole seconds, 2 s to 5 min): leadership and published
    /// windows live as long as it is kept alive.
    pub lease_ttl: Duration,
    /// How often a replica publishes its windows (shorter than the lease TTL).
    pub publish_interval: Duration,
}

impl ClusterSettings {
    /// The replica id: the file's, else `$MODELGATE_REPLICA_ID`, else `$HOSTNAME` (a pod name).
    pub fn resolve_replica_id(&self) -> Result<String, String> {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let id = self.replica_id.clone().or_else(|| from_env(REPLICA_ID_ENV)).or_else(|| from_env("HOSTNAME"));
        let Some(id) = id else {
            return Err(format!("cluster.replica_id: not set in the file, nor ${REPLICA_ID_ENV} nor $HOSTNAME"));
        };
        let mut issues = Issues::default();
        if check_name(&id, "cluster.replica_id", &mut issues) {
            Ok(id)
        } else {
            Err(issues.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        }
    }
}

/// Validates `cluster:`; every problem goes to `issues` with its place.
pub(super) fn cluster(raw: &Option<RawCluster>, issues: &mut Issues) -> Option<ClusterSettings> {
    let raw = raw.as_ref()?;
    let mut endpoints = Vec::new();
    if raw.etcd.endpoints.is_empty() {
        issues.push("cluster.etcd.endpoints", "list at least one etcd endpoint, like \"http://127.0.0.1:2379\"");
    }
    if raw.etcd.endpoints.len() > 16 {
        issues.push("cluster.etcd.endpoints", format!("at most 16 endpoints, got {}", raw.etcd.endpoints.len()));
    }
    for (i, e) in raw.etcd.endpoints.iter().enumerate().take(16) {
        match endpoint(e) {
            Ok(url) => endpoints.push(url),
            Err(why) => issues.push(format!("cluster.etcd.endpoints[{i}]"), why),
        }
    }
    let prefix = raw.etcd.prefix.clone().unwrap_or_else(|| "/modelgate".to_string());
    let prefix_ok = prefix.len() >= 2
        && prefix.len() <= 128
        && prefix.starts_with('/')
        && !prefix.ends_with('/')
        && !prefix.contains("//")
        && prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
    if !prefix_ok {
        issues.push(
            "cluster.etcd.prefix",
            format!("invalid key prefix {prefix:?}: write it like \"/modelgate/prod\" (starts with '/', no trailing '/', letters, digits, '/', '.', '_', '-', at most 128)"),
        );
    }
    if let Some(id) = &raw.replica_id {
        check_name(id, "cluster.replica_id", issues);
    }
    let lease_ttl = duration(&raw.lease_ttl, DEFAULT_LEASE_TTL, "cluster.lease_ttl", issues);
    if lease_ttl.subsec_nanos() != 0 || !(2..=300).contains(&lease_ttl.as_secs()) {
        issues.push(
            "cluster.lease_ttl",
            format!("must be whole seconds between 2s and 300s (an etcd lease), got {lease_ttl:?}"),
        );
    }
    let publish_interval =
        duration(&raw.publish_interval, DEFAULT_PUBLISH_INTERVAL, "cluster.publish_interval", issues);
    if publish_interval >= lease_ttl {
        issues.push(
            "cluster.publish_interval",
            format!("must be shorter than cluster.lease_ttl ({lease_ttl:?}), got {publish_interval:?}"),
        );
    }
    Some(ClusterSettings { endpoints, prefix, replica_id: raw.replica_id.clone(), lease_ttl, publish_interval })
}

/// An etcd endpoint: `http://host:port` (TLS to etcd is not supported yet) or `host:port`.
fn endpoint(text: &str) -> Result<String, String> {
    let url = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid etcd endpoint {text:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("etcd endpoint {text:?}: only http:// is supported (TLS to etcd is not yet)"));
    }
    if uri.port_u16().is_none() || uri.host().is_none_or(str::is_empty) {
        return Err(format!("etcd endpoint {text:?} needs a host and a port, like \"http://etcd:2379\""));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("etcd endpoint {text:?} takes no path"));
    }
    Ok(format!("http://{}", uri.authority().map(ToString::to_string).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigErrors};
    use std::path::Path;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("/tmp/routes.yaml"))
    }

    #[test]
    fn no_cluster_section_is_no_fleet() {
        assert_eq!(parse("routes: []\n").unwrap().cluster, None);
    }

    #[test]
    fn a_cluster_section_gets_defaults() {
        let c = parse("cluster:\n  etcd: {endpoints: [\"127.0.0.1:2379\"]}\n  replica_id: gw-0\n").unwrap();
        let c = c.cluster.unwrap();
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!(c.prefix, "/modelgate");
        assert_eq!(c.replica_id.as_deref(), Some("gw-0"));
        assert_eq!((c.lease_ttl, c.publish_interval), (Duration::from_secs(10), Duration::from_secs(1)));
    }

    #[test]
    fn every_cluster_problem_is_reported_with_its_place() {
        let e = parse(
            "cluster:\n  etcd: {endpoints: [\"https://e:2379\", \"e\", \"http://e:2379/x\"], prefix: \"p/\"}\n  replica_id: \"no way\"\n  lease_ttl: 1500ms\n  publish_interval: 1m\n",
        )
        .unwrap_err();
        let places: Vec<&str> = e.issues.iter().map(|i| i.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "cluster.etcd.endpoints[0]",
                "cluster.etcd.endpoints[1]",
                "cluster.etcd.endpoints[2]",
                "cluster.etcd.prefix",
                "cluster.replica_id",
                "cluster.lease_ttl",
                "cluster.publish_interval"
            ],
            "{e}"
        );
        let e = parse("cluster:\n  etcd: {endpoints: []}\n  leader: x\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `leader`"), "{e}");
        let e = parse("cluster:\n  etcd: {endpoints: []}\n").unwrap_err();
        assert_eq!(e.issues[0].place, "cluster.etcd.endpoints");
    }
}
