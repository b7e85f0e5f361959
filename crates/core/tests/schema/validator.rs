//! A JSON Schema validator for exactly the keywords Warren's schemas use: `type`, `enum`,
//! `const`, `required`, `properties`, `additionalProperties`, `pattern`, `minLength`,
//! `maxLength`, `minimum` and `maximum`, plus annotations. `audit_keywords` refuses anything
//! else, so a schema that starts using a new keyword fails the tests loudly instead of having it
//! silently ignored. Why not the `jsonschema` crate: see the top of `main.rs`.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// Keywords that only annotate. `format` is one of them: draft 2020-12 does not assert it by
/// default, which is why the schema pairs `format: uuid` with a pattern.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "format",
];

/// Keywords that `check` asserts.
const ASSERTIONS: &[&str] = &[
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
];

/// Collects every keyword the validator would not understand, and every pattern outside the
/// subset [`Pattern`] implements, anywhere in `schema`.
pub(crate) fn audit_keywords(schema: &Value, at: &str, problems: &mut Vec<String>) {
    let Value::Object(keywords) = schema else {
        if !schema.is_boolean() {
            problems.push(format!("{at}: a schema must be an object or a boolean"));
        }
        return;
    };
    for keyword in keywords.keys() {
        if !ANNOTATIONS.contains(&keyword.as_str()) && !ASSERTIONS.contains(&keyword.as_str()) {
            problems.push(format!("{at}: keyword `{keyword}`"));
        }
    }
    if let Some(pattern) = keywords.get("pattern") {
        match pattern.as_str().map(Pattern::parse) {
            Some(Ok(_)) => {}
            Some(Err(e)) => problems.push(format!("{at}: {e}")),
            None => problems.push(format!("{at}: pattern must be a string")),
        }
    }
    for (name, property) in keywords
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        audit_keywords(property, &format!("{at}/properties/{name}"), problems);
    }
    if let Some(extra) = keywords.get("additionalProperties") {
        audit_keywords(extra, &format!("{at}/additionalProperties"), problems);
    }
}

/// Every way `instance` breaks `schema`, each as "<JSON pointer>: <what is wrong>". Empty when
/// the instance is valid.
pub(crate) fn validate(schema: &Value, instance: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, instance, "#", &mut errors);
    errors
}

fn check(schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let keywords = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => {
            errors.push(format!("{at}: not allowed here"));
            return;
        }
        Value::Object(keywords) => keywords,
        other => panic!("schema at {at} is {other}, not an object or a boolean"),
    };
    check_any(keywords, value, at, errors);
    // The other keywords apply only to instances of their type, as JSON Schema defines them:
    // `minLength` says nothing about a number.
    match value {
        Value::String(s) => check_string(keywords, s, at, errors),
        Value::Number(n) => check_number(keywords, n, at, errors),
        Value::Object(object) => check_object(keywords, object, at, errors),
        Value::Null | Value::Bool(_) | Value::Array(_) => {}
    }
}

/// The keywords that apply to a value of any type: `type`, `enum` and `const`.
fn check_any(keywords: &Map<String, Value>, value: &Value, at: &str, errors: &mut Vec<String>) {
    let mut fail = |what: String| errors.push(format!("{at}: {what}"));
    if let Some(ty) = keywords.get("type") {
        let allowed: Vec<&str> = match ty {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            other => panic!("type at {at} is {other}"),
        };
        if !allowed.iter().any(|ty| has_type(value, ty)) {
            fail(format!(
                "is {}, expected {}",
                type_name(value),
                allowed.join(" or ")
            ));
        }
    }
    if let Some(options) = keywords.get("enum") {
        let options = options
            .as_array()
            .unwrap_or_else(|| panic!("enum at {at} is no array"));
        if !options.iter().any(|option| json_eq(option, value)) {
            fail(format!(
                "is {value}, expected one of {}",
                Value::Array(options.clone())
            ));
        }
    }
    if let Some(expected) = keywords.get("const")
        && !json_eq(expected, value)
    {
        fail(format!("is {value}, expected {expected}"));
    }
}

/// `minLength` and `maxLength`, counted in characters as JSON Schema counts them, and
/// `pattern`.
fn check_string(keywords: &Map<String, Value>, s: &str, at: &str, errors: &mut Vec<String>) {
    let mut fail = |what: String| errors.push(format!("{at}: {what}"));
    let length = s.chars().count() as u64;
    if let Some(min) = keywords.get("minLength").and_then(Value::as_u64)
        && length < min
    {
        fail(format!("is {length} characters long, shorter than {min}"));
    }
    if let Some(max) = keywords.get("maxLength").and_then(Value::as_u64)
        && length > max
    {
        fail(format!("is {length} characters long, longer than {max}"));
    }
    if let Some(pattern) = keywords.get("pattern").and_then(Value::as_str) {
        let parsed = Pattern::parse(pattern).unwrap_or_else(|e| panic!("{at}: {e}"));
        if !parsed.matches(s) {
            let shown: String = s.chars().take(60).collect();
            fail(format!("`{shown}` does not match `{pattern}`"));
        }
    }
}

fn check_number(keywords: &Map<String, Value>, n: &Number, at: &str, errors: &mut Vec<String>) {
    let mut fail = |what: String| errors.push(format!("{at}: {what}"));
    if let Some(Value::Number(min)) = keywords.get("minimum")
        && num_cmp(n, min) == Some(Ordering::Less)
    {
        fail(format!("is {n}, less than the minimum {min}"));
    }
    if let Some(Value::Number(max)) = keywords.get("maximum")
        && num_cmp(n, max) == Some(Ordering::Greater)
    {
        fail(format!("is {n}, more than the maximum {max}"));
    }
}

/// `required`, then each member against its entry in `properties`, or against
/// `additionalProperties` when it has none, at a JSON pointer that escapes `~` and `/`.
fn check_object(
    keywords: &Map<String, Value>,
    object: &Map<String, Value>,
    at: &str,
    errors: &mut Vec<String>,
) {
    for name in keywords
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = name.as_str().unwrap_or_default();
        if !object.contains_key(name) {
            errors.push(format!("{at}: missing required property `{name}`"));
        }
    }
    let properties = keywords.get("properties").and_then(Value::as_object);
    for (name, member) in object {
        let here = format!("{at}/{}", name.replace('~', "~0").replace('/', "~1"));
        match properties.and_then(|p| p.get(name)) {
            Some(property) => check(property, member, &here, errors),
            None => {
                if let Some(extra) = keywords.get("additionalProperties") {
                    check(extra, member, &here, errors);
                }
            }
        }
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.as_number().is_some_and(is_integer),
        other => panic!("unknown JSON Schema type `{other}`"),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if is_integer(n) => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JSON Schema counts any number with a zero fractional part as an integer, `1.0` included.
fn is_integer(n: &Number) -> bool {
    as_i128(n).is_some() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn as_i128(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Compares integers exactly (limits such as `u64::MAX` do not survive a trip through `f64`),
/// anything else as floating point.
fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    match (as_i128(a), as_i128(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// Equality as JSON Schema defines it for `enum` and `const`: numbers by value, so `2` equals
/// `2.0`.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => num_cmp(a, b) == Some(Ordering::Equal),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A regular expression of the small kind the schemas use: anchored with `^` and `$`, a
/// sequence of literals, `.`, `\d`, escaped punctuation and bracket classes, each optionally
/// repeated with `?`, `*`, `+`, `{n}`, `{m,}` or `{m,n}`. There are no groups, alternation or
/// negated classes: `parse` refuses them, so a schema pattern outside this subset fails the
/// keyword audit instead of being misread.
pub(crate) struct Pattern(Vec<Piece>);

struct Piece {
    atom: Atom,
    min: usize,
    max: usize,
}

enum Atom {
    /// `.`: any character but a line terminator, as in ECMA-262 without the `s` flag.
    Any,
    Char(char),
    Class(Vec<(char, char)>),
}

impl Atom {
    fn matches(&self, c: char) -> bool {
        match self {
            Atom::Any => !matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}'),
            Atom::Char(expected) => c == *expected,
            Atom::Class(ranges) => ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c)),
        }
    }
}

impl Pattern {
    pub(crate) fn parse(source: &str) -> Result<Pattern, String> {
        Self::parse_anchored(source).map_err(|why| format!("pattern `{source}`: {why}"))
    }

    /// The pieces between `^` and `$`, or why the pattern is outside the subset.
    fn parse_anchored(source: &str) -> Result<Pattern, String> {
        let Some(inner) = source.strip_prefix('^').and_then(|s| s.strip_suffix('$')) else {
            return Err("must be anchored with ^ and $".into());
        };
        if inner.ends_with('\\') {
            return Err("must end with an unescaped $".into());
        }
        let chars: Vec<char> = inner.chars().collect();
        let mut i = 0;
        let mut pieces = Vec::new();
        while i < chars.len() {
            let atom = parse_atom(&chars, &mut i)?;
            let (min, max) = parse_repetition(&chars, &mut i)?;
            pieces.push(Piece { atom, min, max });
        }
        Ok(Pattern(pieces))
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        match_pieces(&self.0, &text)
    }
}

/// The atom starting at `chars[*i]`; moves `i` past it.
fn parse_atom(chars: &[char], i: &mut usize) -> Result<Atom, String> {
    let c = chars[*i];
    *i += 1;
    Ok(match c {
        '.' => Atom::Any,
        '\\' => {
            let escaped = chars.get(*i).copied();
            *i += 1;
            match escaped {
                Some('d') => Atom::Class(vec![('0', '9')]),
                Some(p) if p.is_ascii_punctuation() => Atom::Char(p),
                _ => return Err("only \\d and escaped punctuation are supported".into()),
            }
        }
        '[' => parse_class(chars, i)?,
        '(' | ')' | '|' | '^' | '$' | '?' | '*' | '+' | '{' | '}' | ']' => {
            return Err(format!("`{c}` here is outside the supported subset"));
        }
        literal => Atom::Char(literal),
    })
}

/// A bracket class whose `[` is just behind `chars[*i]`; moves `i` past its `]`.
fn parse_class(chars: &[char], i: &mut usize) -> Result<Atom, String> {
    if chars.get(*i) == Some(&'^') {
        return Err("negated classes are not supported".into());
    }
    let mut ranges = Vec::new();
    loop {
        let Some(&lo) = chars.get(*i) else {
            return Err("unclosed [".into());
        };
        *i += 1;
        let lo = match lo {
            ']' if !ranges.is_empty() => break,
            ']' => return Err("empty class".into()),
            '\\' => match chars.get(*i) {
                Some('d') => {
                    *i += 1;
                    ranges.push(('0', '9'));
                    continue;
                }
                Some(&p) if p.is_ascii_punctuation() => {
                    *i += 1;
                    p
                }
                _ => return Err("only \\d and escaped punctuation in classes".into()),
            },
            c => c,
        };
        // `a-z` is a range; a `-` right before `]` is a literal.
        match (chars.get(*i), chars.get(*i + 1)) {
            (Some('-'), Some(&hi)) if hi != ']' && hi != '\\' => {
                if hi < lo {
                    return Err("a class range runs backwards".into());
                }
                ranges.push((lo, hi));
                *i += 2;
            }
            _ => ranges.push((lo, lo)),
        }
    }
    Ok(Atom::Class(ranges))
}

/// The repetition after an atom, as (min, max), exactly once when there is none; moves `i`
/// past the characters that spell it.
fn parse_repetition(chars: &[char], i: &mut usize) -> Result<(usize, usize), String> {
    let (min, max, width) = match chars.get(*i) {
        Some('?') => (0, 1, 1),
        Some('*') => (0, usize::MAX, 1),
        Some('+') => (1, usize::MAX, 1),
        Some('{') => {
            let Some(close) = chars[*i..].iter().position(|&c| c == '}') else {
                return Err("unclosed {".into());
            };
            let body: String = chars[*i + 1..*i + close].iter().collect();
            let number = |s: &str| s.parse::<usize>().ok();
            let bounds = match body.split_once(',') {
                None => number(&body).map(|n| (n, n)),
                Some((m, "")) => number(m).map(|m| (m, usize::MAX)),
                Some((m, n)) => number(m).zip(number(n)).filter(|(m, n)| m <= n),
            };
            let Some((min, max)) = bounds else {
                return Err("a {m,n} repetition is malformed".into());
            };
            (min, max, close + 1)
        }
        _ => (1, 1, 0),
    };
    *i += width;
    Ok((min, max))
}

/// Backtracking over the pieces: each takes as many characters as it can, then gives them back
/// one at a time until the rest matches. The schemas' patterns are short, so this is cheap.
fn match_pieces(pieces: &[Piece], text: &[char]) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return text.is_empty();
    };
    let run = text
        .iter()
        .take(first.max)
        .take_while(|&&c| first.atom.matches(c))
        .count();
    (first.min..=run)
        .rev()
        .any(|n| match_pieces(rest, &text[n..]))
}

#[test]
fn the_pattern_subset_matches_like_a_regex() {
    let cases = [
        ("^[A-Za-z][A-Za-z0-9._:-]{0,119}$", "a", true),
        ("^[A-Za-z][A-Za-z0-9._:-]{0,119}$", "Ab1._:-", true),
        ("^[A-Za-z][A-Za-z0-9._:-]{0,119}$", "1a", false),
        ("^[A-Za-z][A-Za-z0-9._:-]{0,119}$", "a b", false),
        ("^[A-Za-z][A-Za-z0-9._:-]{0,119}$", "", false),
        ("^.+\\.work$", "warren.work", true),
        ("^.+\\.work$", "a.b.work", true),
        ("^.+\\.work$", ".work", false),
        ("^.+\\.work$", "warrenxwork", false),
        ("^.+\\.work$", "warren.works", false),
        ("^00-[0-9a-f]{2}$", "00-0f", true),
        ("^00-[0-9a-f]{2}$", "00-0F", false),
        ("^00-[0-9a-f]{2}$", "00-0f0", false),
        ("^a?b*c+\\d{2,}$", "cc12345", true),
        ("^a?b*c+\\d{2,}$", "abc1", false),
    ];
    for (pattern, text, expected) in cases {
        let parsed = Pattern::parse(pattern).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.matches(text), expected, "`{pattern}` on `{text}`");
    }
    for unsupported in ["abc", "^(a|b)$", "^[^a]$", "^a\\w$", "^a{2$", "^a\\$"] {
        assert!(
            Pattern::parse(unsupported).is_err(),
            "`{unsupported}` should be refused"
        );
    }
}
