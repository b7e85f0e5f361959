//! How results reach the terminal: stdout writing that tolerates a closed pipe, JSON, aligned
//! tables (with colour on a terminal), and the human forms of times and durations every
//! command shares.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;

/// Job data (task names, payloads, error messages, worker ids) comes from anyone who can
/// enqueue or run a handler, and a terminal obeys the control characters in what it prints:
/// `ESC]0;…` retitles the window, `ESC[2J` clears it, others rewrite what the admin sees. So
/// everything printed for people goes through [`printable_line`] or [`printable_text`], which show control
/// characters as escapes (`\u{1b}`, `\r`, `\t`) instead of sending them:
///
/// - C0 controls (U+0000 to U+001F), DEL (U+007F) and C1 controls (U+0080 to U+009F, which some
///   terminals obey as ESC sequences), and the bidirectional overrides and isolates (U+202A to
///   U+202E, U+2066 to U+2069) that make text read in another order than it is stored.
/// - A newline is escaped in a one-line value ([`printable_line`]: table cells, names, ids), so it cannot
///   forge a row or a field; it is kept in multi-line text ([`printable_text`]: error messages,
///   pretty-printed JSON), whose lines the caller indents.
///
/// An escape sequence is defused by its ESC; the harmless rest (`[2J`) is printed as text. A
/// backslash is printed as it is, so `\u{1b}` in the output may also be those six characters
/// in the data: `--json` output is the unambiguous form. JSON output is escaped by serde_json
/// for C0 and by [`emit_json`] for the rest.
fn escaped(c: char, keep_newline: bool) -> Option<String> {
    match c {
        '\n' if keep_newline => None,
        '\n' => Some("\\n".to_owned()),
        '\r' => Some("\\r".to_owned()),
        '\t' => Some("\\t".to_owned()),
        c if c.is_control() || is_bidi_control(c) || Style::of_mark(c).is_some() => {
            Some(format!("\\u{{{:x}}}", u32::from(c)))
        }
        _ => None,
    }
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(text: &str, keep_newline: bool) -> Cow<'_, str> {
    if !text.chars().any(|c| escaped(c, keep_newline).is_some()) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match escaped(c, keep_newline) {
            Some(e) => out.push_str(&e),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A one-line value from job data, safe to print: every control character escaped, newlines
/// included. See [`escaped`].
pub(crate) fn printable_line(value: &str) -> Cow<'_, str> {
    escape(value, false)
}

/// Multi-line text from job data, safe to print: control characters escaped, newlines kept.
pub(crate) fn printable_text(value: &str) -> Cow<'_, str> {
    escape(value, true)
}

/// How many characters `c` takes once printed through [`printable_line`], for aligning a caret under it.
pub(crate) fn printable_width(c: char) -> usize {
    escaped(c, false).map_or(1, |e| e.chars().count())
}

/// Writes `text` to stdout. A reader that went away (`warren workers | head -1`) is not an
/// error worth reporting, so a broken pipe counts as success; `println!` would panic instead.
///
/// As a last line of defence, control characters other than newlines are escaped here too:
/// every human-readable output passes through, and none of it means to send any. The only
/// escape sequences written are the colours of [`Style`], from the style marks that
/// [`Table::render`] places around already escaped cells (see [`Style`]).
pub(crate) fn emit(output: &str) -> anyhow::Result<()> {
    write_stdout(&terminal_text(output, colour_on()))
}

/// `output` as [`emit`] writes it: control characters escaped, style marks turned into SGR
/// sequences when `colour` is on and shown as escapes when it is off.
fn terminal_text(output: &str, colour: bool) -> Cow<'_, str> {
    if !colour {
        return printable_text(output);
    }
    let mut out = String::with_capacity(output.len() + 16);
    for c in output.chars() {
        match (Style::of_mark(c), escaped(c, true)) {
            (Some(style), _) => out.push_str(style.sgr()),
            (None, Some(e)) => out.push_str(&e),
            (None, None) => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// When `--color` says to colour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColourChoice {
    /// Colour when stdout is a terminal and `NO_COLOR` is not set (https://no-color.org).
    #[default]
    Auto,
    /// Always colour, even into a pipe or with `NO_COLOR` set.
    Always,
    /// Never colour.
    Never,
}

/// Whether tables are coloured, decided once per process by [`init_colour`]; off until then,
/// so unit tests and library callers get plain text.
static COLOUR: OnceLock<bool> = OnceLock::new();

/// Whether this process colours its output (see [`init_colour`]).
pub(crate) fn colour_on() -> bool {
    COLOUR.get().copied().unwrap_or(false)
}

/// Decides, once, whether this process colours its tables: from `--color`, whether stdout is
/// a terminal, and the `NO_COLOR` and `TERM` variables.
pub(crate) fn init_colour(choice: ColourChoice) {
    let on = colour_wanted(
        choice,
        io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    );
    let _ = COLOUR.set(on);
}

/// The rule behind [`init_colour`]. `NO_COLOR` counts when it is set to anything but the empty
/// string (as no-color.org says); an explicit `--color always` overrides it, as a command-line
/// flag should; `TERM=dumb` is a terminal that understands no escapes.
fn colour_wanted(
    choice: ColourChoice,
    stdout_is_terminal: bool,
    no_color: Option<&OsStr>,
    term: Option<&OsStr>,
) -> bool {
    match choice {
        ColourChoice::Always => true,
        ColourChoice::Never => false,
        ColourChoice::Auto => {
            stdout_is_terminal
                && no_color.is_none_or(OsStr::is_empty)
                && term != Some(OsStr::new("dumb"))
        }
    }
}

/// A colour or weight for a piece of a table. A rendered table carries it in-band as a *style
/// mark*: one Unicode noncharacter (U+FDD0 to U+FDEF are reserved for exactly this kind of
/// internal use and never mean anything in interchanged text) before the styled text and
/// [`Style::Reset`]'s after it. [`emit`] turns marks into SGR sequences when colour is on.
///
/// Job data cannot forge a mark: [`printable_line`] and [`printable_text`] escape these
/// characters like control characters (`\u{fdd2}`), and [`Table::row`] escapes every cell
/// before [`Table::render`] adds its marks. Only a caller that hands raw job data straight to
/// [`emit`] (a bug: it is meant to be escaped first) could get a mark through, and even then
/// only one of these fixed colours, never a cursor move or any other escape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    Reset,
    Bold,
    Green,
    Red,
    Cyan,
    Blue,
    Yellow,
    Dim,
}

impl Style {
    const ALL: [Style; 8] = [
        Style::Reset,
        Style::Bold,
        Style::Green,
        Style::Red,
        Style::Cyan,
        Style::Blue,
        Style::Yellow,
        Style::Dim,
    ];

    fn mark(self) -> char {
        match self {
            Style::Reset => '\u{fdd0}',
            Style::Bold => '\u{fdd1}',
            Style::Green => '\u{fdd2}',
            Style::Red => '\u{fdd3}',
            Style::Cyan => '\u{fdd4}',
            Style::Blue => '\u{fdd5}',
            Style::Yellow => '\u{fdd6}',
            Style::Dim => '\u{fdd7}',
        }
    }

    fn of_mark(c: char) -> Option<Style> {
        Style::ALL.into_iter().find(|s| s.mark() == c)
    }

    fn sgr(self) -> &'static str {
        match self {
            Style::Reset => "\u{1b}[0m",
            Style::Bold => "\u{1b}[1m",
            Style::Green => "\u{1b}[32m",
            Style::Red => "\u{1b}[31m",
            Style::Cyan => "\u{1b}[36m",
            Style::Blue => "\u{1b}[34m",
            Style::Yellow => "\u{1b}[33m",
            Style::Dim => "\u{1b}[2m",
        }
    }

    /// The colour of a job, worker or queue state word, the same everywhere: green for done
    /// well, red for dead or lost, cyan and blue for live work, yellow for a pause, dim for
    /// what was stopped on purpose.
    pub(crate) fn of_state(word: &str) -> Option<Style> {
        Some(match word {
            "succeeded" => Style::Green,
            "dead" | "lost" => Style::Red,
            "running" | "queued" => Style::Cyan,
            "scheduled" => Style::Blue,
            "paused" | "stopping" => Style::Yellow,
            "cancelled" | "stopped" => Style::Dim,
            _ => return None,
        })
    }

    /// `text` between this style's mark and a reset, for [`emit`] to colour.
    fn wrap(self, text: &str) -> String {
        format!("{}{text}{}", self.mark(), Style::Reset.mark())
    }
}

/// Writes `value` to stdout as pretty JSON followed by a newline.
///
/// serde_json escapes C0 controls in strings but sends DEL, C1 controls and bidirectional
/// overrides as they are; they are written as `\u00XX` escapes here, which is the same JSON
/// to any parser and inert on a terminal. (Outside strings JSON has no such characters.)
pub(crate) fn emit_json(value: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value).context("serialising the output as JSON")?;
    let mut text = String::with_capacity(json.len() + 1);
    for c in json.chars() {
        if c.is_control() && c != '\n' || is_bidi_control(c) {
            text.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            text.push(c);
        }
    }
    text.push('\n');
    write_stdout(&text)
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// Which side of its column a cell sticks to. Numbers go right so their digits line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A plain-text table with a header row, columns two spaces apart.
#[derive(Debug)]
pub(crate) struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank and extra cells are dropped.
    /// Cells are one-line values and are escaped as such (see [`printable_line`]): a cell from job
    /// data can neither move the cursor nor start a row of its own.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| printable_line(&c).into_owned())
                .collect(),
        );
    }

    /// The table as text, with style marks for [`emit`] when this process colours its output
    /// (see [`init_colour`]): a bold header, and state words coloured in the columns whose
    /// header names a state (`STATE`, `PAUSED`).
    pub(crate) fn render(&self) -> String {
        self.render_styled(colour_on())
    }

    fn render_styled(&self, colour: bool) -> String {
        let cell = |row: &[String], i: usize| row.get(i).map_or("", String::as_str).to_owned();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| (*h).to_owned()).collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                std::iter::once(&header)
                    .chain(&self.rows)
                    .map(|r| cell(r, i).chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (r, row) in std::iter::once(&header).chain(&self.rows).enumerate() {
            let mut line = String::new();
            for (i, (name, align)) in self.columns.iter().enumerate() {
                let text = cell(row, i);
                // Widths count the visible (escaped) text; marks take no room on screen.
                let pad = widths[i] - text.chars().count();
                let shown = match Style::of_state(&text) {
                    Some(style) if colour && r > 0 && names_a_state(name) => style.wrap(&text),
                    _ => text,
                };
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Left => {
                        line.push_str(&shown);
                        line.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(&shown);
                    }
                }
            }
            // Left-aligned last columns would otherwise leave trailing blanks on every line.
            let line = line.trim_end();
            if colour && r == 0 {
                out.push_str(&Style::Bold.wrap(line));
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        out
    }
}

/// Whether a column holds state words to colour.
fn names_a_state(header: &str) -> bool {
    header.contains("STATE") || header.contains("PAUSED")
}

/// A timestamp as RFC 3339 in UTC with milliseconds, e.g. `2025-01-31T09:15:02.137Z`: sortable,
/// unambiguous, and precise enough to compare with the latencies shown beside it.
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A duration as a person reads it: `850µs`, `3.2ms`, `12ms`, `1.25s`, `30s`, `2m03s`, `1h02m`,
/// `3d04h`.
/// Precision shrinks as durations grow, because nobody compares hours by the millisecond.
pub(crate) fn duration(d: Duration) -> String {
    let micros = d.as_micros();
    let secs = d.as_secs();
    if micros < 1_000 {
        format!("{micros}µs")
    } else if micros < 10_000 && !micros.is_multiple_of(1_000) {
        format!("{:.1}ms", micros as f64 / 1_000.0)
    } else if micros < 1_000_000 {
        format!("{}ms", micros / 1_000)
    } else if secs < 60 && d.subsec_millis() == 0 {
        format!("{secs}s")
    } else if secs < 60 {
        format!("{:.2}s", d.as_secs_f64())
    } else if secs < 3_600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs < 86_400 {
        format!("{}h{:02}m", secs / 3_600, secs % 3_600 / 60)
    } else {
        format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3_600)
    }
}

/// A signed time difference, such as enqueue-to-start. Producer and worker clocks differ, so
/// a difference between their timestamps can come out negative; it is shown, not hidden.
pub(crate) fn delta(d: TimeDelta) -> String {
    match d.to_std() {
        Ok(d) => duration(d),
        Err(_) => format!("-{}", duration((-d).to_std().unwrap_or_default())),
    }
}

/// How long ago something happened, to the whole unit: `3s ago`, `5m ago`, `2h ago`, `4d ago`.
/// A time in the future (clock skew) reads as `just now`.
pub(crate) fn age(since: TimeDelta) -> String {
    let secs = since.num_seconds();
    if secs < 1 {
        "just now".to_owned()
    } else if secs < 60 {
        format!("{secs}s ago")
    } else if secs < 3_600 {
        format!("{}m ago", secs / 60)
    } else if secs < 86_400 {
        format!("{}h ago", secs / 3_600)
    } else {
        format!("{}d ago", secs / 86_400)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use super::*;

    #[test]
    fn durations_shrink_their_precision_as_they_grow() {
        let cases = [
            (Duration::from_micros(850), "850µs"),
            (Duration::from_micros(3_240), "3.2ms"),
            (Duration::from_millis(3), "3ms"),
            (Duration::from_millis(12), "12ms"),
            (Duration::from_millis(1_250), "1.25s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(123), "2m03s"),
            (Duration::from_secs(3_720), "1h02m"),
            (Duration::from_secs(3 * 86_400 + 4 * 3_600), "3d04h"),
        ];
        for (d, want) in cases {
            assert_eq!(duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn negative_deltas_keep_their_sign() {
        assert_eq!(delta(TimeDelta::milliseconds(12)), "12ms");
        assert_eq!(delta(TimeDelta::milliseconds(-12)), "-12ms");
    }

    #[test]
    fn ages_are_whole_units() {
        assert_eq!(age(TimeDelta::seconds(3)), "3s ago");
        assert_eq!(age(TimeDelta::seconds(330)), "5m ago");
        assert_eq!(age(TimeDelta::hours(26)), "1d ago");
        assert_eq!(age(TimeDelta::seconds(-2)), "just now");
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        let at = DateTime::from_timestamp_millis(1_738_314_902_137).unwrap();
        assert_eq!(timestamp(at), "2025-01-31T09:15:02.137Z");
    }

    #[test]
    fn control_characters_are_shown_not_sent() {
        let hostile = "a\u{1b}]0;owned\u{7}b\u{1b}[2Jc\rd\te\u{7f}f\u{9b}g\u{202e}h\ni";
        assert_eq!(
            printable_line(hostile),
            "a\\u{1b}]0;owned\\u{7}b\\u{1b}[2Jc\\rd\\te\\u{7f}f\\u{9b}g\\u{202e}h\\ni"
        );
        assert_eq!(printable_text("x\ny\u{1b}"), "x\ny\\u{1b}");
        assert!(matches!(
            printable_line("plain ünïcode ✓"),
            Cow::Borrowed(_)
        ));
        assert_eq!(printable_width('\u{1b}'), 6);
        assert_eq!(printable_width('é'), 1);

        let mut t = Table::new(&[("TASK", Align::Left)]);
        t.row(vec!["evil\nFAKE ROW\u{1b}[2J".into()]);
        assert_eq!(t.render(), "TASK\nevil\\nFAKE ROW\\u{1b}[2J\n");
    }

    fn jobs_table() -> Table {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("STATE", Align::Left),
            ("TASK", Align::Left),
            ("N", Align::Right),
        ]);
        t.row(vec!["a".into(), "dead".into(), "dead".into(), "5".into()]);
        t.row(vec![
            "bb".into(),
            "succeeded".into(),
            "x".into(),
            "12".into(),
        ]);
        t.row(vec!["c".into(), "weird".into()]);
        t
    }

    #[test]
    fn without_colour_a_table_is_plain_text() {
        let t = jobs_table();
        let plain = "ID  STATE      TASK   N\n\
                     a   dead       dead   5\n\
                     bb  succeeded  x     12\n\
                     c   weird\n";
        assert_eq!(t.render_styled(false), plain);
        // The process-wide setting is off unless `run` turned it on, and `emit` then writes
        // exactly what it wrote before colour existed.
        assert_eq!(t.render(), plain);
        assert_eq!(terminal_text(plain, false), plain);
    }

    #[test]
    fn with_colour_state_words_are_coloured_and_columns_stay_aligned() {
        let t = jobs_table();
        let shown = terminal_text(&t.render_styled(true), true).into_owned();
        assert_eq!(
            shown,
            "\u{1b}[1mID  STATE      TASK   N\u{1b}[0m\n\
             a   \u{1b}[31mdead\u{1b}[0m       dead   5\n\
             bb  \u{1b}[32msucceeded\u{1b}[0m  x     12\n\
             c   weird\n"
        );
        // Only the STATE column is coloured: a task that happens to be called `dead` is not.
        let strip = |s: &str| {
            ["\u{1b}[0m", "\u{1b}[1m", "\u{1b}[31m", "\u{1b}[32m"]
                .iter()
                .fold(s.to_owned(), |s, sgr| s.replace(sgr, ""))
        };
        assert_eq!(strip(&shown), t.render_styled(false));
    }

    #[test]
    fn with_colour_job_data_still_cannot_send_escapes() {
        let mut t = Table::new(&[("STATE", Align::Left), ("ERROR", Align::Left)]);
        // An ESC sequence, and forged style marks meant to be turned into colour.
        t.row(vec![
            "dead".into(),
            "x\u{1b}[2J\u{fdd3}red\u{fdd0}\u{9b}y".into(),
        ]);
        let shown = terminal_text(&t.render_styled(true), true).into_owned();
        assert_eq!(
            shown,
            "\u{1b}[1mSTATE  ERROR\u{1b}[0m\n\
             \u{1b}[31mdead\u{1b}[0m   x\\u{1b}[2J\\u{fdd3}red\\u{fdd0}\\u{9b}y\n"
        );
        // The only ESC characters written are the four SGR sequences of the header and the
        // state word.
        assert_eq!(shown.matches('\u{1b}').count(), 4);
        // A mark that reaches `emit` unescaped while colour is off is shown, not dropped.
        assert_eq!(terminal_text("a\u{fdd3}b", false), "a\\u{fdd3}b");
    }

    #[test]
    fn colour_follows_the_flag_the_terminal_and_no_color() {
        use ColourChoice::{Always, Auto, Never};
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        let xterm = Some(OsStr::new("xterm-256color"));
        assert!(colour_wanted(Auto, true, None, xterm));
        assert!(!colour_wanted(Auto, false, None, xterm));
        assert!(!colour_wanted(Auto, true, set, xterm));
        assert!(colour_wanted(Auto, true, empty, xterm));
        assert!(!colour_wanted(Auto, true, None, Some(OsStr::new("dumb"))));
        assert!(colour_wanted(Always, false, set, None));
        assert!(!colour_wanted(Never, true, None, xterm));
    }

    #[test]
    fn tables_align_and_leave_no_trailing_blanks() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("COUNT", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "5".into(), "x".into()]);
        t.row(vec!["long-id".into(), "1234567".into()]);
        assert_eq!(
            t.render(),
            "ID         COUNT  NOTE\n\
             a              5  x\n\
             long-id  1234567\n"
        );
    }
}
