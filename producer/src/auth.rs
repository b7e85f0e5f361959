//! Bearer tokens: the tokens file, authentication in constant time, and which tasks a token
//! may enqueue.
//!
//! The file holds one token per line, `NAME SHA256_HEX_OF_TOKEN [TASK_PATTERN ...]`; blank
//! lines and lines starting with `#` are ignored. Each NAME and each digest may be on one
//! line only: a file that repeats either is refused, naming both lines. Only digests are
//! stored, so the file holds no secret a reader could replay. A pattern is a task name, `*`
//! (every task), or a prefix ending in `*` (`billing.*`); a line without patterns allows every
//! task. Requests carry the token as `Authorization: Bearer <token>`; logs name the caller by
//! the line's NAME, never the token.

use std::fmt;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::Problem;

/// Who is calling: the NAME of the token's line, and the tasks it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The line's NAME; the only thing about a token that is ever logged.
    pub name: String,
    patterns: Vec<String>,
}

impl Caller {
    /// Whether this caller may enqueue, read or cancel jobs of `task`.
    pub fn allows(&self, task: &str) -> bool {
        self.patterns.is_empty()
            || self.patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => task.starts_with(prefix),
                None => p == task,
            })
    }

    /// The 403 for a task this caller may not use.
    pub fn refuse(&self, task: &str) -> Problem {
        Problem::forbidden(format!(
            "token `{}` may not use task `{task}`; it is allowed {}",
            self.name,
            self.patterns.join(", ")
        ))
    }
}

/// The tokens this service accepts, read from the tokens file.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<(Caller, [u8; 32])>,
}

impl fmt::Debug for Tokens {
    /// Names only: digests stay out of logs too.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(c, _)| &c.name))
            .finish()
    }
}

impl Tokens {
    /// Parses the tokens file's text; `source` names it in errors, which give the line number.
    pub fn parse(text: &str, source: &str) -> Result<Self, String> {
        let mut entries: Vec<(Caller, [u8; 32])> = Vec::new();
        // The line number of each entry, to name both lines of a repeated name or token.
        let mut line_numbers: Vec<usize> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{source} line {}", n + 1);
            let mut words = line.split_whitespace();
            let (Some(name), Some(hex_digest)) = (words.next(), words.next()) else {
                return Err(format!(
                    "{at}: expected `NAME SHA256_HEX_OF_TOKEN [TASK_PATTERN ...]`; \
                     `warren-producer token new NAME` prints such a line"
                ));
            };
            check_name(name).map_err(|e| format!("{at}: {e}"))?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| {
                format!("{at}: the second word must be the token's SHA-256 as 64 hex digits (never the token itself)")
            })?;
            if let Some(first) = entries.iter().position(|(c, _)| c.name == name) {
                return Err(format!(
                    "{at}: the name `{name}` is used twice, here and on line {}; names \
                     identify callers in logs",
                    line_numbers[first]
                ));
            }
            // The same token on two lines would be authenticated as the last of them: its
            // name and patterns would silently replace the first line's, which may widen a
            // restricted token. The digests are compared as bytes, so a digest differing only
            // in the case of its hex digits is the same token.
            if let Some(first) = entries.iter().position(|(_, d)| *d == digest) {
                return Err(format!(
                    "{at}: this token's digest is already on line {} (`{}`); a token must \
                     have one line: merge the two lines' task patterns into one, or mint a \
                     token of its own for `{name}` with `warren-producer token new {name}`",
                    line_numbers[first], entries[first].0.name
                ));
            }
            let patterns: Vec<String> = words.map(str::to_owned).collect();
            if let Some(bad) = patterns
                .iter()
                .find(|p| p.is_empty() || p[..p.len() - 1].contains('*'))
            {
                return Err(format!(
                    "{at}: task pattern `{bad}`: `*` may only end a pattern (`billing.*`) or stand alone"
                ));
            }
            entries.push((
                Caller {
                    name: name.to_owned(),
                    patterns,
                },
                digest,
            ));
            line_numbers.push(n + 1);
        }
        if entries.is_empty() {
            return Err(format!(
                "{source} holds no token; add a line made by `warren-producer token new NAME`"
            ));
        }
        Ok(Self { entries })
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a tokens file with no token is refused when parsed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller whose token the request's `Authorization: Bearer` header carries, or the
    /// 401 to answer. Every configured digest is compared, in constant time each.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Problem::unauthorized(
                "no credentials: send `Authorization: Bearer <token>`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                Problem::unauthorized(
                    "malformed credentials: the Authorization header must be `Bearer <token>`",
                )
            })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (caller, expected) in &self.entries {
            if bool::from(expected.ct_eq(&digest)) {
                found = Some(caller);
            }
        }
        found.cloned().ok_or_else(|| {
            Problem::invalid_token("the bearer token is not one of this service's tokens")
        })
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "token name `{name}` must be 1 to 64 letters, digits, `.`, `_` or `-`"
        ));
    }
    Ok(())
}

/// A fresh token for `name`: the token (shown once) and the tokens-file line with its digest.
pub fn new_token(name: &str, patterns: &[String]) -> Result<(String, String), String> {
    check_name(name)?;
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness from the system: {e}"))?;
    let token = format!("wrn_{}", hex::encode(bytes));
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let mut line = format!("{name} {digest}");
    for p in patterns {
        line.push(' ');
        line.push_str(p);
    }
    // The line must read back as it is meant to.
    Tokens::parse(&line, "the new line")?;
    Ok((token, line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn a_minted_token_authenticates_with_its_patterns() {
        let (token, line) =
            new_token("billing", &["billing.*".into(), "email.send".into()]).unwrap();
        assert!(
            !line.contains(&token),
            "the file holds the digest, not the token"
        );
        let tokens = Tokens::parse(&format!("# comment\n\n{line}\n"), "tokens").unwrap();
        let caller = tokens.authenticate(&bearer(&token)).unwrap();
        assert_eq!(caller.name, "billing");
        assert!(caller.allows("billing.charge") && caller.allows("email.send"));
        assert!(!caller.allows("email.sendx") && !caller.allows("reports.build"));
        assert_eq!(
            tokens.authenticate(&bearer("wrn_nope")).unwrap_err().status,
            401
        );
        assert_eq!(
            tokens.authenticate(&HeaderMap::new()).unwrap_err().status,
            401
        );
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(
            tokens
                .authenticate(&basic)
                .unwrap_err()
                .detail
                .contains("malformed")
        );
        assert!(
            !format!("{tokens:?}").contains(&line[8..20]),
            "no digest in Debug"
        );
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let e = Tokens::parse("ok 00\n", "tokens.txt").unwrap_err();
        assert!(
            e.contains("tokens.txt line 1") && e.contains("64 hex"),
            "{e}"
        );
        let d = "a".repeat(64);
        let e = Tokens::parse(&format!("x {d}\nx {d}\n"), "f").unwrap_err();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
        let e = Tokens::parse(&format!("x {d} a*b\n"), "f").unwrap_err();
        assert!(e.contains("`a*b`"), "{e}");
        assert!(
            Tokens::parse("# nothing\n", "f")
                .unwrap_err()
                .contains("no token")
        );
        let all = Tokens::parse(&format!("x {d}\n"), "f").unwrap();
        assert_eq!(all.len(), 1);
    }
}
