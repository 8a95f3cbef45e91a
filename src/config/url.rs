//! The peer URL parser: `ws://host[:port][/path]` and `wss://…`, nothing else.
//!
//! Written by hand (no `url` crate) because the accepted language is tiny: a scheme, a host (a
//! hostname, an IPv4 literal, or a bracketed IPv6 literal), an optional port, an optional path.
//! Userinfo, queries and fragments are rejected: credentials belong in the mesh secret, and a
//! query would be silently dropped by some WebSocket servers.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Default port of `ws://` URLs.
pub const WS_DEFAULT_PORT: u16 = 80;
/// Default port of `wss://` URLs.
pub const WSS_DEFAULT_PORT: u16 = 443;
/// Maximum length of a hostname, in bytes (RFC 1035).
const HOSTNAME_MAX_LEN: usize = 253;
/// Maximum length of one hostname label, in bytes (RFC 1035).
const LABEL_MAX_LEN: usize = 63;

/// A parsed peer URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerUrl {
    /// `true` for `wss://`.
    pub tls: bool,
    /// The host: a hostname, an IPv4 literal, or an IPv6 literal without its brackets.
    pub host: String,
    /// The port, explicit or the scheme's default (80 / 443).
    pub port: u16,
    /// The path, starting with `/` (`/` when the URL has none).
    pub path: String,
}

impl PeerUrl {
    /// Parses `ws://host[:port][/path]` or `wss://…` (scheme case-insensitive). The error is a
    /// short reason such as `expected ws:// or wss://` or `invalid port "99999"`.
    pub fn parse(s: &str) -> Result<PeerUrl, String> {
        let (tls, rest) = if let Some(rest) = strip_prefix_ignore_case(s, "wss://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(s, "ws://") {
            (false, rest)
        } else {
            return Err("expected ws:// or wss://".to_owned());
        };
        if rest.contains(['?', '#']) {
            return Err("query (?) and fragment (#) are not allowed".to_owned());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err("userinfo (user@host) is not allowed".to_owned());
        }
        if authority.is_empty() {
            return Err("missing host".to_owned());
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None if tls => WSS_DEFAULT_PORT,
            None => WS_DEFAULT_PORT,
            Some(p) => parse_port(p).ok_or_else(|| format!("invalid port {p:?}"))?,
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("invalid character in path".to_owned());
        }
        Ok(PeerUrl {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// Whether the host is an IPv6 literal (printed in brackets).
    pub fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }
}

impl fmt::Display for PeerUrl {
    /// The normalized form, with the port always explicit: `wss://example.com:443/`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        if self.is_ipv6() {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Splits `host[:port]` / `[v6][:port]`; validates the host.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let Some(end) = bracketed.find(']') else {
            return Err("unterminated IPv6 address (missing ])".to_owned());
        };
        let host = &bracketed[..end];
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("invalid IPv6 address {}", quote(host)));
        }
        let after = &bracketed[end + 1..];
        if after.is_empty() {
            return Ok((host, None));
        }
        match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None => Err("unexpected characters after the IPv6 address".to_owned()),
        }
    } else {
        let (host, port) = match authority.rfind(':') {
            Some(i) => (&authority[..i], Some(&authority[i + 1..])),
            None => (authority, None),
        };
        if host.contains(':') {
            return Err("IPv6 addresses must be written in brackets ([::1])".to_owned());
        }
        if host.is_empty() {
            return Err("missing host".to_owned());
        }
        if !is_valid_hostname(host) {
            return Err(format!("invalid host {}", quote(host)));
        }
        Ok((host, port))
    }
}

/// Parses a decimal port 1..=65535 (no sign, no spaces).
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=u32::from(u16::MAX)).contains(&n) => u16::try_from(n).ok(),
        _ => None,
    }
}

/// A DNS hostname (labels of `[A-Za-z0-9_-]`, not starting or ending with `-`) or an IPv4
/// literal. All-numeric dotted names must be valid IPv4 (`999.1.1.1` is rejected).
pub(crate) fn is_valid_hostname(s: &str) -> bool {
    if s.is_empty() || s.len() > HOSTNAME_MAX_LEN {
        return false;
    }
    let labels_ok = s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= LABEL_MAX_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return false;
    }
    let all_numeric = s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    !all_numeric || s.parse::<Ipv4Addr>().is_ok()
}

/// Quotes a user-supplied string for a reason, truncated so one huge value cannot flood logs.
pub(crate) fn quote(s: &str) -> String {
    const QUOTE_MAX_CHARS: usize = 64;
    if s.chars().count() > QUOTE_MAX_CHARS {
        let head: String = s.chars().take(QUOTE_MAX_CHARS).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> PeerUrl {
        match PeerUrl::parse(s) {
            Ok(u) => u,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn err(s: &str) -> String {
        match PeerUrl::parse(s) {
            Ok(u) => panic!("{s} parsed as {u:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn wss_without_port_defaults_to_443_and_root_path() {
        let u = ok("wss://cloud-01.example.com");
        assert_eq!(
            u,
            PeerUrl {
                tls: true,
                host: "cloud-01.example.com".into(),
                port: 443,
                path: "/".into()
            }
        );
        assert_eq!(u.to_string(), "wss://cloud-01.example.com:443/");
    }

    #[test]
    fn ws_with_port_and_path_keeps_both() {
        let u = ok("ws://10.0.0.5:19000/mesh/v1");
        assert!(!u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("10.0.0.5", 19000, "/mesh/v1")
        );
        assert_eq!(ok("ws://h").port, 80);
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert!(ok("WSS://h:1").tls);
        assert!(!ok("Ws://h:1").tls);
    }

    #[test]
    fn bracketed_ipv6_parses_and_prints_back_in_brackets() {
        let u = ok("wss://[::1]:19000");
        assert_eq!(u.host, "::1");
        assert_eq!(u.to_string(), "wss://[::1]:19000/");
        assert_eq!(ok("ws://[fe80::1]").port, 80);
    }

    #[test]
    fn bad_urls_are_rejected_with_a_reason() {
        let rows: &[(&str, &str)] = &[
            ("http://h:1", "expected ws:// or wss://"),
            ("h:1", "expected ws:// or wss://"),
            ("", "expected ws:// or wss://"),
            ("wss://", "missing host"),
            ("wss://:19000", "missing host"),
            ("wss:///path", "missing host"),
            ("wss://h:99999", "invalid port \"99999\""),
            ("wss://h:0", "invalid port \"0\""),
            ("wss://h:", "invalid port \"\""),
            ("wss://h:-1", "invalid port \"-1\""),
            ("wss://h:+80", "invalid port \"+80\""),
            ("wss://h:123456789012345678901", "invalid port"),
            ("wss://user:pw@h:1", "userinfo"),
            ("wss://h:1/?x=1", "query"),
            ("wss://h:1#frag", "fragment"),
            ("wss://::1:19000", "brackets"),
            ("wss://[::1", "unterminated"),
            ("wss://[zz::1]:1", "invalid IPv6 address"),
            ("wss://[::1]x", "after the IPv6"),
            ("wss://bad host:1", "invalid host"),
            ("wss://-bad.example:1", "invalid host"),
            ("wss://999.1.1.1:1", "invalid host"),
            ("wss://h:1/a b", "invalid character in path"),
            ("wss://é.example:1", "invalid host"),
        ];
        for (input, want) in rows {
            let got = err(input);
            assert!(got.contains(want), "{input:?}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn hostnames_and_ipv4_literals_are_valid_hosts() {
        for h in ["localhost", "a.b-c.d_e", "127.0.0.1", "0.0.0.0", "x1"] {
            assert!(is_valid_hostname(h), "{h}");
        }
        for h in ["", "a..b", "a.", "-a", "a-", "a b", "1.2.3", "300.0.0.1"] {
            assert!(!is_valid_hostname(h), "{h}");
        }
    }

    #[test]
    fn quote_truncates_long_values() {
        assert_eq!(quote("ab"), "\"ab\"");
        let q = quote(&"x".repeat(500));
        assert!(q.len() < 80 && q.ends_with('…'), "{q}");
    }
}

/// A parsed upstream base URL (`models[].upstream.baseUrl`, or an OpenClaw provider's
/// `baseUrl`): `http://host[:port][/path]` or `https://…`, the same grammar as [`PeerUrl`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl {
    /// `true` for `https://`.
    pub tls: bool,
    pub host: String,
    /// The port, explicit or the scheme's default (80 / 443).
    pub port: u16,
    /// The path prefix without a trailing `/` (`""` for none), e.g. `/v1`.
    pub path: String,
}

impl UpstreamUrl {
    /// Parses `http://host[:port][/path]` or `https://…`; the error is a short reason.
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let s = s.trim();
        let as_ws = if let Some(rest) = strip_prefix_ignore_case(s, "https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = strip_prefix_ignore_case(s, "http://") {
            format!("ws://{rest}")
        } else {
            return Err("expected http:// or https://".to_owned());
        };
        let p = PeerUrl::parse(&as_ws)?;
        Ok(UpstreamUrl {
            tls: p.tls,
            host: p.host,
            port: p.port,
            path: p.path.trim_end_matches('/').to_owned(),
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls {
            WSS_DEFAULT_PORT
        } else {
            WS_DEFAULT_PORT
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[cfg(test)]
mod upstream_tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("http://127.0.0.1:8080/v1/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 8080, "/v1")
        );
        assert_eq!(u.authority(), "127.0.0.1:8080");
        let u = UpstreamUrl::parse("HTTPS://api.example.com").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, ""));
        assert_eq!(u.authority(), "api.example.com");
        assert_eq!(
            UpstreamUrl::parse("ftp://x").unwrap_err(),
            "expected http:// or https://"
        );
        assert!(UpstreamUrl::parse("http://u:p@host/")
            .unwrap_err()
            .contains("userinfo"));
        assert!(UpstreamUrl::parse("http://host/v1?x=1")
            .unwrap_err()
            .contains("query"));
        assert!(UpstreamUrl::parse("http://[::1]:9/v1").unwrap().authority() == "[::1]:9");
    }
}
