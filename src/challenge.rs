//! Parsing `WWW-Authenticate: Bearer ...` challenges (RFC 6750 section 3, RFC 9728 section 5.1).
//!
//! The sidecar reads them to tell an expired token (`invalid_token`: refresh and retry) from a
//! refusal that a new token cannot fix, and to give the operator the server's own explanation.

/// The parameters of a Bearer challenge that the sidecar acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub scope: Option<String>,
    pub resource_metadata: Option<String>,
}

impl BearerChallenge {
    /// Finds the Bearer challenge among all `WWW-Authenticate` header values.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse)
    }

    pub fn is_invalid_token(&self) -> bool {
        self.error.as_deref() == Some("invalid_token")
    }

    /// A one-line, secret-free explanation for errors and `/ready`.
    pub fn explain(&self) -> String {
        match (&self.error, &self.error_description) {
            (Some(e), Some(d)) => format!("{e}: {d}"),
            (Some(e), None) => e.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => String::new(),
        }
    }
}

/// Parses one header value; returns the Bearer challenge in it, if any.
pub fn parse(value: &str) -> Option<BearerChallenge> {
    let mut rest = value.trim_start();
    loop {
        let (scheme, after) = take_token(rest);
        if scheme.is_empty() {
            return None;
        }
        let (params, after) = parse_params(after);
        if scheme.eq_ignore_ascii_case("bearer") {
            let mut challenge = BearerChallenge::default();
            for (name, value) in params {
                match name.to_ascii_lowercase().as_str() {
                    "error" => challenge.error = Some(value),
                    "error_description" => challenge.error_description = Some(value),
                    "scope" => challenge.scope = Some(value),
                    "resource_metadata" => challenge.resource_metadata = Some(value),
                    _ => {}
                }
            }
            return Some(challenge);
        }
        rest = after.trim_start_matches([',', ' ', '\t']);
    }
}

fn take_token(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// Reads `name=value` pairs (token or quoted string) until the next scheme starts.
fn parse_params(mut s: &str) -> (Vec<(String, String)>, &str) {
    let mut params = Vec::new();
    loop {
        let trimmed = s.trim_start_matches([' ', '\t', ',']);
        let (name, after) = take_token(trimmed);
        let after_ws = after.trim_start();
        if name.is_empty() || !after_ws.starts_with('=') {
            // Not a parameter: either the end or the next challenge's scheme.
            return (params, trimmed);
        }
        let value_start = after_ws[1..].trim_start();
        let (value, remaining) = if let Some(quoted) = value_start.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let (token, remaining) = take_token(value_start);
            (token.to_string(), remaining)
        };
        params.push((name.to_string(), value));
        s = remaining;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc6750_example() {
        let c = parse(r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#).unwrap();
        assert!(c.is_invalid_token());
        assert_eq!(
            c.error_description.as_deref(),
            Some("The access token expired")
        );
        assert_eq!(c.explain(), "invalid_token: The access token expired");
    }

    #[test]
    fn parses_resource_metadata_and_scope() {
        let c = parse(r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource", scope="files:read files:write""#).unwrap();
        assert_eq!(
            c.resource_metadata.as_deref(),
            Some("https://mcp.example.com/.well-known/oauth-protected-resource")
        );
        assert_eq!(c.scope.as_deref(), Some("files:read files:write"));
    }

    #[test]
    fn finds_bearer_after_another_scheme_and_handles_escapes() {
        let c = parse(
            r#"Basic realm="x", Bearer error=insufficient_scope, error_description="say \"hi\"""#,
        )
        .unwrap();
        assert_eq!(c.error.as_deref(), Some("insufficient_scope"));
        assert_eq!(c.error_description.as_deref(), Some(r#"say "hi""#));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let c = parse(&format!(
                r#"Basic realm="x", {scheme} error="invalid_token""#
            ))
            .unwrap();
            assert!(c.is_invalid_token(), "{scheme}");
        }
    }

    #[test]
    fn bare_scheme_and_garbage() {
        assert_eq!(parse("Bearer"), Some(BearerChallenge::default()));
        assert_eq!(parse("Basic realm=\"x\""), None);
        assert_eq!(parse(""), None);
        assert_eq!(
            parse("Bearer error=\"unterminated"),
            Some(BearerChallenge {
                error: Some("unterminated".into()),
                ..Default::default()
            })
        );
    }
}
