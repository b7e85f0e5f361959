//! What each section of `warren top` shows: its columns, and the cells of its rows built from a
//! snapshot, job data escaped, state words coloured as in the other commands' tables.

use std::borrow::Cow;

use ratatui::layout::Constraint;
use ratatui::style::{Color, Modifier, Style};

use super::Snapshot;
use crate::output::{self, age, printable_line};

/// The colour of a state word, as in the tables of the other commands.
pub(super) fn state_style(word: &str, colour: bool) -> Style {
    let style = Style::new();
    if !colour {
        return style;
    }
    match output::Style::of_state(word) {
        Some(output::Style::Green) => style.fg(Color::Green),
        Some(output::Style::Red) => style.fg(Color::Red),
        Some(output::Style::Cyan) => style.fg(Color::Cyan),
        Some(output::Style::Blue) => style.fg(Color::Blue),
        Some(output::Style::Yellow) => style.fg(Color::Yellow),
        Some(output::Style::Dim) => style.add_modifier(Modifier::DIM),
        Some(output::Style::Bold) => style.add_modifier(Modifier::BOLD),
        Some(output::Style::Reset) | None => style,
    }
}

/// A column: its header, how it shares the width, and whether it holds numbers.
pub(super) struct Column {
    pub(super) header: &'static str,
    pub(super) width: Constraint,
    pub(super) number: bool,
}

const fn text(header: &'static str, share: u16) -> Column {
    Column {
        header,
        width: Constraint::Fill(share),
        number: false,
    }
}

const fn number(header: &'static str, width: u16) -> Column {
    Column {
        header,
        width: Constraint::Length(width),
        number: true,
    }
}

pub(super) const QUEUE_COLUMNS: [Column; 9] = [
    text("QUEUE", 1),
    Column {
        header: "STATE",
        width: Constraint::Length(6),
        number: false,
    },
    number("READY", 7),
    number("UNACKED", 7),
    number("OUT/S", 6),
    number("SCHED", 6),
    number("RUN", 5),
    number("DEAD 24H", 8),
    number("OK 1H", 6),
];

pub(super) const TASK_COLUMNS: [Column; 7] = [
    text("TASK", 2),
    text("QUEUE", 1),
    number("JOBS/MIN", 8),
    number("SUCCEEDED", 9),
    number("RETRIED", 7),
    number("DEAD", 6),
    text("LIMIT", 2),
];

pub(super) const WORKER_COLUMNS: [Column; 6] = [
    text("ID", 2),
    text("STATE", 1),
    text("QUEUES", 2),
    number("IN FLIGHT", 9),
    number("PROCESSED", 9),
    number("LAST SEEN", 9),
];

/// A cell's text and style; numbers are right-aligned by their column.
pub(super) type Cells = Vec<(String, Style)>;

fn plain(text: impl Into<String>) -> (String, Style) {
    (text.into(), Style::new())
}

fn escaped(text: &str) -> (String, Style) {
    plain(printable_line(text))
}

/// A RabbitMQ figure: `-` when RabbitMQ has no such queue, `n/a` when the source used
/// cannot tell (see `QueueLine::broker_stats`).
fn optional(n: Option<String>, broker_stats: &str) -> (String, Style) {
    plain(match (n, broker_stats) {
        (Some(n), _) => Cow::Owned(n),
        (None, "missing") => Cow::Borrowed("-"),
        (None, _) => Cow::Borrowed("n/a"),
    })
}

pub(super) fn queue_rows(snapshot: &Snapshot, colour: bool) -> Vec<Cells> {
    snapshot
        .queues
        .iter()
        .map(|q| {
            let state = if q.paused { "paused" } else { "active" };
            vec![
                escaped(&q.queue),
                (state.to_owned(), state_style(state, colour)),
                optional(q.ready.map(|n| n.to_string()), q.broker_stats),
                optional(q.unacked.map(|n| n.to_string()), q.broker_stats),
                optional(q.deliver_rate.map(|r| format!("{r:.1}")), q.broker_stats),
                plain(q.scheduled.to_string()),
                plain(q.running.to_string()),
                plain(q.dead_24h.to_string()),
                plain(q.succeeded_1h.to_string()),
            ]
        })
        .collect()
}

pub(super) fn task_rows(snapshot: &Snapshot) -> Vec<Cells> {
    let minutes = (snapshot.window.as_secs_f64() / 60.0).max(1.0 / 60.0);
    snapshot
        .tasks
        .iter()
        .map(|t| {
            vec![
                escaped(&t.task),
                escaped(&t.queue),
                plain(per_minute((t.succeeded + t.dead) as f64 / minutes)),
                plain(t.succeeded.to_string()),
                plain(t.retried.to_string()),
                plain(t.dead.to_string()),
                plain(limits_of(snapshot, &t.task, &t.queue)),
            ]
        })
        .collect()
}

/// The fleet-wide limits a task's jobs on `queue` are under: its task's, then its queue's
/// (marked `queue`); empty when there is none.
fn limits_of(snapshot: &Snapshot, task: &str, queue: &str) -> String {
    let find = |target: &str| snapshot.limits.iter().find(|l| l.target == target);
    let own = find(task).map(crate::limits::short);
    let queue = find(queue).map(|l| format!("queue {}", crate::limits::short(l)));
    [own, queue]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ")
}

/// A rate with one decimal while it is small, whole above ten.
fn per_minute(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}

pub(super) fn worker_rows(snapshot: &Snapshot, colour: bool) -> Vec<Cells> {
    snapshot
        .workers
        .iter()
        .map(|w| {
            vec![
                escaped(&w.id),
                (
                    printable_line(&w.state).into_owned(),
                    state_style(&w.state, colour),
                ),
                escaped(&crate::workers::queues_text(w)),
                plain(w.in_flight.to_string()),
                plain(w.processed.to_string()),
                plain(age(snapshot.taken_at - w.last_seen_at)),
            ]
        })
        .collect()
}
