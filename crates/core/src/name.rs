use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest task or queue name. Queue names become part of AMQP queue names, which RabbitMQ caps
/// at 255 bytes, and a prefix is added; 120 leaves room and is more than any sane name needs.
pub(crate) const MAX_NAME_LEN: usize = 120;

/// A name that breaks the naming rules, with the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} name `{name}`: {reason}")]
pub struct InvalidName {
    /// Which kind of name it is: `task`, `queue` or `namespace`.
    pub what: &'static str,
    /// The name that was refused, cut to a little over the length limit so that a pasted
    /// payload does not flood the error message.
    pub name: String,
    /// The rule it broke, in words.
    pub reason: &'static str,
}

fn validate(what: &'static str, name: &str) -> Result<(), InvalidName> {
    let fail = |reason| {
        Err(InvalidName {
            what,
            name: name.chars().take(MAX_NAME_LEN + 10).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return fail("it is longer than 120 bytes");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return fail("it must start with an ASCII letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
    {
        return fail("only ASCII letters, digits and . _ - : are allowed");
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Checks the naming rules: 1 to 120 bytes, starting with an ASCII letter, then
            /// ASCII letters, digits, `.`, `_`, `-` and `:`. Fails with the rule broken.
            pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
                let name = name.into();
                validate($what, &name)?;
                Ok(Self(name))
            }

            /// The name as text, as it travels in headers and database columns.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $ty {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// The name a handler is registered under, e.g. `email.send`.
    TaskName,
    "task"
);
name_type!(
    /// A Warren queue, e.g. `default` or `emails`. Each maps to one RabbitMQ quorum queue.
    QueueName,
    "queue"
);

/// The prefix of every RabbitMQ exchange and queue a Warren deployment declares
/// (`<ns>.work`, `<ns>.q.<queue>`, ...), so several deployments, or parallel tests, share one
/// vhost. The CLI, the workers and the producers of one deployment must use the same one.
///
/// ASCII letters, digits, `.`, `_` and `-`, at most 120 bytes: the names built from it stay
/// within RabbitMQ's 255-byte limit with any valid queue name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    /// The namespace used when none is configured.
    pub const DEFAULT: &'static str = "warren";

    /// Checks the namespace rules above. Fails with the rule broken.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        let fail = |reason| InvalidName {
            what: "namespace",
            name: name.chars().take(MAX_NAME_LEN + 10).collect(),
            reason,
        };
        if name.is_empty() {
            return Err(fail("it is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(fail("it is longer than 120 bytes"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(fail("only ASCII letters, digits and . _ - are allowed"));
        }
        Ok(Self(name))
    }

    /// The namespace as text, the prefix of every exchange and queue name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Namespace {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_take_letters_digits_dots_underscores_and_dashes() {
        for ok in ["warren", "t0123456789ab", "prod.eu-1_b", "1st"] {
            assert_eq!(
                Namespace::new(ok).map(|n| n.to_string()).ok().as_deref(),
                Some(ok)
            );
        }
        for (bad, rule) in [
            ("", "empty"),
            ("a b", "only ASCII"),
            ("a:b", "only ASCII"),
            ("é", "only ASCII"),
        ] {
            let err = Namespace::new(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("namespace") && err.contains(rule),
                "{bad}: {err}"
            );
        }
        assert!(Namespace::new("a".repeat(MAX_NAME_LEN + 1)).is_err());
        assert_eq!(Namespace::default().as_str(), Namespace::DEFAULT);
    }

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["default", "email.send", "a", "billing:invoice-v2", "x_1"] {
            assert!(TaskName::new(ok).is_ok(), "{ok}");
            assert!(QueueName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names_with_the_rule() {
        let cases = [
            ("", "empty"),
            ("1abc", "start with an ASCII letter"),
            ("has space", "only ASCII letters"),
            ("émail", "start with an ASCII letter"),
            ("a/b", "only ASCII letters"),
        ];
        for (name, rule) in cases {
            let err = TaskName::new(name).unwrap_err();
            assert!(err.to_string().contains(rule), "{name}: {err}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(
            QueueName::new(long)
                .unwrap_err()
                .to_string()
                .contains("longer than 120")
        );
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<QueueName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<QueueName>("\"not ok\"").is_err());
    }
}
