//! Which server names are Snowflake's: the hosts the proxy terminates TLS for.

/// Domains whose every subdomain is a Snowflake endpoint (account URLs, regional and privatelink
/// forms: `<account>[.<region>[.<cloud>]][.privatelink].snowflakecomputing.com`, and the China
/// domain).
pub const SNOWFLAKE_DOMAINS: &[&str] = &["snowflakecomputing.com", "snowflakecomputing.cn"];

/// Decides from a server name whether a connection is intercepted.
#[derive(Debug, Clone, Default)]
pub struct HostMatcher {
    exact: Vec<String>,
    suffixes: Vec<String>,
}

impl HostMatcher {
    /// A matcher for Snowflake's domains plus `extra` hosts: exact names, or `*.domain` for every
    /// subdomain of `domain`.
    pub fn new(extra: &[String]) -> HostMatcher {
        let mut m = HostMatcher::default();
        for d in SNOWFLAKE_DOMAINS {
            m.suffixes.push(format!(".{d}"));
        }
        for h in extra {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(domain) => m.suffixes.push(format!(".{domain}")),
                None if !h.is_empty() => m.exact.push(h),
                None => {}
            }
        }
        m
    }

    /// Whether `name` (an SNI, any case) is to be intercepted.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact.contains(&name)
            || self
                .suffixes
                .iter()
                .any(|s| name.len() > s.len() && name.ends_with(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflake_forms_and_extra_hosts() {
        let m = HostMatcher::new(&["files.example.net".into(), "*.blob.core.windows.net".into()]);
        for yes in [
            "xy12345.snowflakecomputing.com",
            "XY12345.us-east-1.SnowflakeComputing.com",
            "xy12345.east-us-2.azure.privatelink.snowflakecomputing.com",
            "myorg-acct.snowflakecomputing.com.",
            "xy12345.cn-north-1.snowflakecomputing.cn",
            "files.example.net",
            "acct.blob.core.windows.net",
        ] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in [
            "snowflakecomputing.com",
            "evilsnowflakecomputing.com",
            "example.com",
            "sub.files.example.net",
            "blob.core.windows.net",
        ] {
            assert!(!m.matches(no), "{no}");
        }
    }
}
