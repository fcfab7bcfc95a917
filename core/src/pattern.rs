//! HTTP destination patterns for the outgoing-HTTP grant.
//!
//! Forms: `https://api.github.com`, `api.github.com` (https only),
//! `http://127.0.0.1:8080`, `https://*.example.com` (any subdomain, not the
//! apex). A pattern without a port matches the scheme's default port only.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// A pattern that could not be parsed; names the input and the problem.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "{input:?} is not an HTTP host pattern: {problem} (expected e.g. https://api.github.com or http://127.0.0.1:8080)"
)]
pub struct PatternError {
    input: String,
    problem: &'static str,
}

/// One allowed HTTP destination: scheme, host (exact or `*.` suffix) and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    scheme: String,
    host: String,
    port: u16,
}

impl HostPattern {
    /// Parses a pattern (see the module docs for the forms).
    pub fn parse(input: &str) -> Result<Self, PatternError> {
        let err = |problem| PatternError { input: input.to_owned(), problem };
        let (scheme, rest) = match input.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("https".to_owned(), input),
        };
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err(err("the scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err("a pattern names a host, not a path, query or user"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(']') || h.ends_with(']') => {
                (h, p.parse::<u16>().map_err(|_| err("the port must be a number from 1 to 65535"))?)
            }
            _ => (rest, default_port),
        };
        if port == 0 {
            return Err(err("the port must be a number from 1 to 65535"));
        }
        let host = host.to_ascii_lowercase();
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        if bare.is_empty() || bare.contains('*') {
            return Err(err("the host must be a name or address; `*.` is allowed only as a prefix"));
        }
        if !bare.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':')) {
            return Err(err("the host contains characters not allowed in a host name"));
        }
        Ok(Self { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` is covered by this pattern.
    /// `port` None means the scheme's default port.
    pub fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme = scheme.to_ascii_lowercase();
        let port = port.unwrap_or(if scheme == "http" { 80 } else { 443 });
        if scheme != self.scheme || port != self.port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match self.host.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == self.host,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

impl TryFrom<String> for HostPattern {
    type Error = PatternError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<HostPattern> for String {
    fn from(p: HostPattern) -> Self {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_host_matches_only_its_scheme_and_port() {
        let p = HostPattern::parse("https://api.github.com").unwrap();
        assert!(p.matches("https", "api.github.com", None));
        assert!(p.matches("https", "API.GitHub.com", Some(443)));
        assert!(!p.matches("http", "api.github.com", None));
        assert!(!p.matches("https", "api.github.com", Some(8443)));
        assert!(!p.matches("https", "evil-api.github.com", None));
        assert!(!p.matches("https", "api.github.com.evil.com", None));
    }

    #[test]
    fn wildcard_covers_subdomains_not_the_apex() {
        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.matches("https", "a.example.com", None));
        assert!(p.matches("https", "a.b.example.com", None));
        assert!(!p.matches("https", "example.com", None));
        assert!(!p.matches("https", "badexample.com", None));
    }

    #[test]
    fn loopback_with_port() {
        let p = HostPattern::parse("http://127.0.0.1:8080").unwrap();
        assert!(p.matches("http", "127.0.0.1", Some(8080)));
        assert!(!p.matches("http", "127.0.0.1", Some(8081)));
        assert_eq!(p.to_string(), "http://127.0.0.1:8080");
    }

    #[test]
    fn bad_patterns_name_the_problem() {
        for (input, problem) in [
            ("ftp://x.org", "scheme"),
            ("https://x.org/path", "path"),
            ("x.org:99999", "port"),
            ("*", "host"),
            ("a.*.org", "prefix"),
            ("https://user@x.org", "user"),
        ] {
            let e = HostPattern::parse(input).unwrap_err().to_string();
            assert!(e.contains(problem), "{input}: {e}");
        }
    }
}
