//! Connection URLs made safe to show: every secret a Postgres or AMQP URL can carry is
//! replaced by `***`, whether or not the URL parses.
//!
//! One function serves the broker, the store, the CLI and the worker, so a secret form handled
//! for one is handled for all. It is string logic on purpose: a URL that a parser refuses is
//! exactly the one most likely to be printed in an error, so it must be redacted without
//! being understood.

/// Query parameters whose values are hidden, matched on the percent-decoded, lower-cased key
/// containing any of these: `password`, `sslpassword`, `passfile`, `sslkey`, AMQP's `keyfile`
/// and `password` forms, tokens and secrets. Hiding a file path too is a small price for
/// never missing a secret under a new name.
const SECRET_KEY_PARTS: &[&str] = &["pass", "pwd", "secret", "token", "key", "auth"];

/// What is printed in place of a value that is not a `scheme://…` URL at all: a value that
/// cannot be read as a URL may be a password pasted into the wrong place.
pub const NOT_A_URL: &str = "(value hidden: not a scheme://… URL)";

/// `url` with the password of its user info and the values of secret query parameters
/// replaced by `***`: `postgres://u:***@h/db?sslmode=require&password=***`. A comma-separated
/// list of URLs (several brokers) is redacted URL by URL. A value without `://` is not shown
/// at all ([`NOT_A_URL`]).
pub fn redact_url(url: &str) -> String {
    let parts: Vec<&str> = url.split(',').collect();
    if parts.len() > 1 && parts.iter().all(|p| p.contains("://")) {
        return parts
            .iter()
            .map(|p| redact_one(p))
            .collect::<Vec<_>>()
            .join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return NOT_A_URL.to_owned();
    };
    // The user info ends at the last `@`, wherever it is: a password may hold an unencoded
    // `/`, `?`, `#` or `@`, and then the URL does not parse, which is when it gets printed.
    let (userinfo, location) = match rest.rsplit_once('@') {
        Some((userinfo, location)) => (Some(userinfo), location),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
        // A user name with URL punctuation means the `@` belonged to something else (a query
        // value, say): nothing in the URL is known to be harmless, so none of it is shown.
        if has_punctuation(user) {
            return format!("{scheme}://***");
        }
        out.push_str(user);
        if user.len() < userinfo.len() {
            out.push_str(":***");
        }
        out.push('@');
    }
    let (location, fragment) = match location.split_once('#') {
        Some((l, f)) => (l, Some(f)),
        None => (location, None),
    };
    match location.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&redact_query(query));
        }
        None => out.push_str(location),
    }
    // Nothing Warren's URLs use lives in a fragment; one that is there is not worth the risk.
    if fragment.is_some() {
        out.push_str("#***");
    }
    out
}

fn has_punctuation(s: &str) -> bool {
    s.contains(['/', '?', '#', '&', '=', ':'])
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
            Some(_) => pair.to_owned(),
            // No parameter Warren's drivers take is a bare word, so one is most likely the
            // rest of a secret cut at an unencoded `&`, or a secret pasted on its own.
            None if pair.is_empty() => String::new(),
            None => "***".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The names of `url`'s query parameters, percent-decoded, in order: for checking them
/// against what a driver understands without handing it the values.
pub fn query_keys(url: &str) -> Vec<String> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| percent_decode(pair.split_once('=').map_or(pair, |(key, _)| key)))
        .collect()
}

fn is_secret_key(key: &str) -> bool {
    let key = percent_decode(key).to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// Percent-decoding good enough to read a key name: `%XX` becomes its byte, `+` a space, and
/// anything malformed stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            // Two hex digits make a byte below 256, so the cast loses nothing.
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_form_is_hidden() {
        let cases = [
            ("postgres://u:s3cr3t@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=s3cr3t",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://u@h:5432/db?sslmode=require&PassWord=s3cr3t&application_name=x",
                "postgres://u@h:5432/db?sslmode=require&PassWord=***&application_name=x",
            ),
            (
                "postgres://h/db?pass%77ord=s3cr3t",
                "postgres://h/db?pass%77ord=***",
            ),
            (
                "postgres://h/db?sslpassword=s3cr3t&sslkey=/k/s3cr3t.key",
                "postgres://h/db?sslpassword=***&sslkey=***",
            ),
            ("postgres://u:s3%40cr3t@h/db", "postgres://u:***@h/db"),
            // Unencoded punctuation in a password: the URL does not parse, and is still safe.
            ("postgres://u:s3/cr3t@h/db", "postgres://u:***@h/db"),
            ("postgres://u:s3?cr3t@h/db", "postgres://u:***@h/db"),
            ("postgres://u:s3#cr3t@h/db", "postgres://u:***@h/db"),
            ("postgres://u:s3@cr3t@h/db", "postgres://u:***@h/db"),
            ("postgres://h/db?password=s3@cr3t", "postgres://***"),
            (
                "postgres://h/db?password=s3&cr3t&x=1",
                "postgres://h/db?password=***&***&x=1",
            ),
            ("postgres://h/db#s3cr3t", "postgres://h/db#***"),
            ("postgres://h/db?s3cr3t", "postgres://h/db?***"),
            (
                "amqp://guest:s3cr3t@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "amqps://u:s3cr3t@a:5671/v?keyfile=/k&heartbeat=10",
                "amqps://u:***@a:5671/v?keyfile=***&heartbeat=10",
            ),
            (
                "amqp://u:s3cr3t@a/%2f,amqp://u:s3cr3t@b/%2f",
                "amqp://u:***@a/%2f,amqp://u:***@b/%2f",
            ),
            ("u:s3cr3t@h/db", NOT_A_URL),
            ("s3cr3t", NOT_A_URL),
        ];
        for (url, want) in cases {
            let shown = redact_url(url);
            assert_eq!(shown, want, "{url}");
        }
        for (url, _) in cases {
            let shown = redact_url(url);
            for piece in ["s3", "cr3t"] {
                assert!(!shown.contains(piece), "{url} shows {piece} in {shown}");
            }
        }
    }

    #[test]
    fn query_keys_are_decoded() {
        assert_eq!(
            query_keys("postgres://h/db?sslmode=x&pass%77ord=y&options[a]=b&flag#frag"),
            ["sslmode", "password", "options[a]", "flag"]
        );
        assert!(query_keys("postgres://h/db").is_empty());
    }

    #[test]
    fn harmless_urls_are_unchanged() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/warren",
            "postgres://h",
            "postgres://h/db?sslmode=disable&application_name=w",
            "amqp://127.0.0.1:5672/%2f?heartbeat=10",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
