//! `WWW-Authenticate` challenges (RFC 7235) as registries send them: `Basic realm="…"` or
//! `Bearer realm="https://auth/token",service="registry",scope="repository:a:pull"`.

use std::collections::HashMap;

/// One authentication scheme a registry asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP Basic: send the credentials with every request.
    Basic,
    /// A token from `realm`, for `service`, with `scope` if the challenge names one.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// The `service` parameter to pass back.
        service: Option<String>,
        /// The scope the registry asked for on this request.
        scope: Option<String>,
    },
}

/// The first challenge of a `WWW-Authenticate` value that strata can answer (Bearer preferred
/// over Basic when a registry offers both).
pub fn parse(header: &str) -> Option<Challenge> {
    let mut found = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        let (scheme, after) = match rest.split_once(char::is_whitespace) {
            Some((s, a)) => (s, a.trim_start()),
            None => (rest, ""),
        };
        let (params, next) = params(after);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => found.push(Challenge::Basic),
            "bearer" => {
                if let Some(realm) = params.get("realm") {
                    found.push(Challenge::Bearer {
                        realm: realm.clone(),
                        service: params.get("service").cloned(),
                        scope: params.get("scope").cloned(),
                    });
                }
            }
            _ => {}
        }
        rest = next.trim_start_matches([',', ' ']);
    }
    found
        .iter()
        .find(|c| matches!(c, Challenge::Bearer { .. }))
        .or(found.first())
        .cloned()
}

/// `k=v` or `k="v"` pairs separated by commas, up to the next scheme; returns them and the
/// rest of the header.
fn params(mut s: &str) -> (HashMap<String, String>, &str) {
    let mut out = HashMap::new();
    loop {
        s = s.trim_start_matches([',', ' ', '\t']);
        let Some(eq) = s.find('=') else {
            return (out, s);
        };
        let key = &s[..eq];
        if key.is_empty() || key.contains(char::is_whitespace) {
            // The next scheme starts here.
            return (out, s);
        }
        let after = &s[eq + 1..];
        let (value, rest) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, c2)) = chars.next() {
                            v.push(c2);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key.to_ascii_lowercase(), value);
        s = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic() {
        assert_eq!(
            parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse(r#"Basic realm="x", Bearer realm="http://127.0.0.1:5101/t",service=s"#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:5101/t".into(),
                service: Some("s".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse(r#"Bearer realm="a\"b",scope="repository:x:pull,push""#),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: Some("repository:x:pull,push".into()),
            })
        );
        assert_eq!(parse("Negotiate"), None);
        assert_eq!(parse("Bearer"), None);
        assert_eq!(parse(""), None);
    }
}
