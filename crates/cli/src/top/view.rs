//! How a [`Snapshot`] is drawn: a title line, the Queues, Tasks and Workers sections sharing
//! the rows between them, and a footer with the throughput sparkline and the keys. No I/O:
//! [`render`] draws into whatever frame it is given, the real terminal or a test buffer.
//! What the sections' columns and cells are is `columns.rs`'s; this module lays them out.
//!
//! Every piece of job data (queue, task and worker names, error messages) is escaped with
//! [`printable_line`] before it reaches the frame, as everywhere in `warren`.

use chrono::{DateTime, Utc};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};

use super::columns::{
    Cells, Column, QUEUE_COLUMNS, TASK_COLUMNS, WORKER_COLUMNS, queue_rows, state_style, task_rows,
    worker_rows,
};
use super::{Move, Snapshot};
use crate::output::{self, printable_line};
use crate::stats::sparkline;

/// The three sections, top to bottom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Queues = 0,
    Tasks = 1,
    Workers = 2,
}

impl Section {
    const ALL: [Section; 3] = [Section::Queues, Section::Tasks, Section::Workers];

    fn name(self) -> &'static str {
        match self {
            Section::Queues => "Queues",
            Section::Tasks => "Tasks",
            Section::Workers => "Workers",
        }
    }

    fn rows(self, snapshot: &Snapshot) -> usize {
        match self {
            Section::Queues => snapshot.queues.len(),
            Section::Tasks => snapshot.tasks.len(),
            Section::Workers => snapshot.workers.len(),
        }
    }
}

/// What the person chose: the focused section, how far each section is scrolled, and
/// whether to use colour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) focus: Section,
    /// The first row shown, per section.
    pub(crate) offsets: [usize; 3],
    pub(crate) colour: bool,
}

impl View {
    pub(crate) fn new(colour: bool) -> Self {
        Self {
            focus: Section::Queues,
            offsets: [0; 3],
            colour,
        }
    }

    /// Applies a key. `shown` is how many rows of each section the last frame had room for,
    /// so that scrolling stops at the last row instead of running past it.
    pub(crate) fn apply(&mut self, action: Move, snapshot: &Snapshot, shown: [usize; 3]) {
        let i = self.focus as usize;
        let page = shown[i].max(1);
        let last = self.focus.rows(snapshot).saturating_sub(page);
        let offset = &mut self.offsets[i];
        match action {
            Move::NextSection => self.focus = Section::ALL[(i + 1) % 3],
            Move::PreviousSection => self.focus = Section::ALL[(i + 2) % 3],
            Move::Up(n) => *offset = offset.saturating_sub(n),
            Move::Down(n) => *offset = (*offset + n).min(last),
            Move::PageUp => *offset = offset.saturating_sub(page),
            Move::PageDown => *offset = (*offset + page).min(last),
            Move::Top => *offset = 0,
            Move::Bottom => *offset = last,
        }
    }
}

/// Draws `snapshot` into the whole frame and returns how many data rows each section had room
/// for. On 80×24 every section keeps at least a few rows; a section with more rows than room
/// says which rows it shows (`Queues 4-9 of 40`) and scrolls.
pub(crate) fn render(frame: &mut Frame<'_>, snapshot: &Snapshot, view: &View) -> [usize; 3] {
    let area = frame.area();
    let [title, body, spark, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(title_line(snapshot, view)), title);

    // Each section needs two rows besides its data: its title and the column headers.
    let wants = Section::ALL.map(|s| s.rows(snapshot).max(1) as u16 + 2);
    let heights = share(body.height, wants);
    let areas = Layout::vertical(heights.map(Constraint::Length)).split(body);
    let mut shown = [0; 3];
    for section in Section::ALL {
        let i = section as usize;
        let room = usize::from(heights[i].saturating_sub(2));
        shown[i] = room;
        draw_section(frame, areas[i], section, snapshot, view, room);
    }
    frame.render_widget(Paragraph::new(sparkline_line(snapshot, spark.width)), spark);
    frame.render_widget(Paragraph::new(status_line(snapshot, view)), keys);
    shown
}

/// Shares `rows` between sections that want `wants` rows each: every section gets an equal
/// share, and what a small section does not need goes to the others.
pub(crate) fn share(rows: u16, wants: [u16; 3]) -> [u16; 3] {
    let mut got = [0u16; 3];
    let mut left = rows;
    loop {
        let hungry: Vec<usize> = (0..3).filter(|&i| got[i] < wants[i]).collect();
        if hungry.is_empty() || left == 0 {
            return got;
        }
        let each = (left / hungry.len() as u16).max(1);
        for i in hungry {
            let add = each.min(wants[i] - got[i]).min(left);
            got[i] += add;
            left -= add;
        }
    }
}

fn title_line(snapshot: &Snapshot, view: &View) -> Line<'static> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    Line::from(vec![
        Span::styled("warren top", bold),
        Span::raw(format!(
            "  namespace {}  tasks over {}  {}",
            printable_line(&snapshot.namespace),
            output::duration(snapshot.window),
            clock(snapshot.taken_at),
        )),
    ])
    .style(if view.colour {
        Style::new().fg(Color::Black).bg(Color::Gray)
    } else {
        Style::new().add_modifier(Modifier::REVERSED)
    })
}

fn clock(at: DateTime<Utc>) -> String {
    at.format("%H:%M:%S UTC").to_string()
}

/// The jobs finished per minute, newest minutes last, as many as fit `width`.
fn sparkline_line(snapshot: &Snapshot, width: u16) -> Line<'static> {
    let finished: Vec<i64> = snapshot.throughput.iter().map(|m| m.finished()).collect();
    let max = finished.iter().copied().max().unwrap_or(0);
    let prefix = "finished/min ";
    let suffix = format!(" max {max}");
    let room = usize::from(width).saturating_sub(prefix.len() + suffix.len());
    // The newest minutes that fit: the line is for what is happening now.
    let recent = &finished[finished.len().saturating_sub(room)..];
    Line::from(vec![
        Span::raw(prefix),
        Span::styled(sparkline(recent), Style::new().fg(Color::Cyan)),
        Span::raw(suffix),
    ])
}

fn status_line(snapshot: &Snapshot, view: &View) -> Line<'static> {
    match &snapshot.error {
        Some(error) => Line::from(Span::styled(
            format!(
                "refresh failed (showing {}): {}",
                clock(snapshot.taken_at),
                printable_line(error)
            ),
            state_style("dead", view.colour).add_modifier(Modifier::BOLD),
        )),
        None => Line::from(Span::styled(
            "q quit  Tab section  ↑↓ PgUp PgDn scroll  r refresh",
            Style::new().add_modifier(Modifier::DIM),
        )),
    }
}

fn draw_section(
    frame: &mut Frame<'_>,
    area: Rect,
    section: Section,
    snapshot: &Snapshot,
    view: &View,
    room: usize,
) {
    if area.height == 0 {
        return;
    }
    let (columns, rows): (&[Column], Vec<Cells>) = match section {
        Section::Queues => (&QUEUE_COLUMNS, queue_rows(snapshot, view.colour)),
        Section::Tasks => (&TASK_COLUMNS, task_rows(snapshot)),
        Section::Workers => (&WORKER_COLUMNS, worker_rows(snapshot, view.colour)),
    };
    let total = rows.len();
    let offset = view.offsets[section as usize].min(total.saturating_sub(room));
    let end = (offset + room).min(total);
    let range = if total > room {
        format!(" {}-{end} of {total}", offset + 1)
    } else {
        format!(" ({total})")
    };
    let focused = view.focus == section;
    let marker = if focused { "▸ " } else { "  " };
    let mut title_style = Style::new().add_modifier(Modifier::BOLD);
    if focused {
        title_style = title_style.add_modifier(Modifier::REVERSED);
    }
    let more = if end < total { " ↓" } else { "" };
    let less = if offset > 0 { " ↑" } else { "" };
    let block = Block::new().borders(Borders::TOP).title(Span::styled(
        format!("{marker}{}{range}{less}{more} ", section.name()),
        title_style,
    ));
    let align = |text: String, number: bool| {
        let line = Line::from(text);
        if number { line.right_aligned() } else { line }
    };
    let header = Row::new(
        columns
            .iter()
            .map(|c| Cell::from(align(c.header.to_owned(), c.number))),
    )
    .style(Style::new().add_modifier(Modifier::BOLD));
    let body: Vec<Row<'static>> = rows[offset..end]
        .iter()
        .map(|cells| {
            Row::new(cells.iter().zip(columns).map(|((text, style), column)| {
                Cell::from(align(text.clone(), column.number)).style(*style)
            }))
        })
        .collect();
    let table = Table::new(body, columns.iter().map(|c| c.width))
        .header(header)
        .column_spacing(1)
        .block(block);
    frame.render_widget(table, area);
    // An empty section says so across the whole width, under its column headers.
    if rows.is_empty() && area.height > 2 {
        let below = Rect {
            y: area.y + 2,
            height: 1,
            ..area
        };
        let note = Span::styled(
            empty_text(section),
            Style::new().add_modifier(Modifier::DIM),
        );
        frame.render_widget(Paragraph::new(note), below);
    }
}

fn empty_text(section: Section) -> &'static str {
    match section {
        Section::Queues => "no queues with live or recent jobs, and no registered workers",
        Section::Tasks => "no job ended in this window",
        Section::Workers => "no workers have registered",
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use std::time::Duration;

    use chrono::TimeDelta;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use warren_store::{Limit, MinuteCounts, Rate, TaskStats, WorkerRecord};

    use super::*;
    use crate::queues::QueueLine;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_796_106_975, 0).unwrap()
    }

    fn queue(name: &str, ready: Option<u64>, dead: i64) -> QueueLine {
        QueueLine {
            queue: name.to_owned(),
            amqp_queue: format!("ns.q.{name}"),
            paused: false,
            paused_at: None,
            ready,
            unacked: None,
            consumers: ready.map(|_| 2),
            publish_rate: None,
            deliver_rate: None,
            broker_stats: if ready.is_some() { "amqp" } else { "missing" },
            scheduled: 3,
            running: 1,
            dead_24h: dead,
            succeeded_1h: 950,
        }
    }

    fn task(name: &str, succeeded: i64, dead: i64) -> TaskStats {
        TaskStats {
            task: name.to_owned(),
            queue: "default".to_owned(),
            succeeded,
            retried: 4,
            dead,
            wait_p50_ms: Some(12.0),
            wait_p95_ms: Some(30.0),
            wait_p99_ms: Some(45.0),
            run_p50_ms: Some(1.0),
            run_p95_ms: Some(2.0),
            run_p99_ms: Some(3.0),
        }
    }

    fn worker(id: &str, state: &str, seen_ago: i64) -> WorkerRecord {
        WorkerRecord {
            id: id.to_owned(),
            hostname: "host".to_owned(),
            pid: 12,
            queues: vec!["default".to_owned(), "emails".to_owned()],
            concurrency: 64,
            state: state.to_owned(),
            started_at: now() - TimeDelta::hours(1),
            last_seen_at: now() - TimeDelta::seconds(seen_ago),
            stopped_at: None,
            in_flight: 2,
            processed: 1234,
            failed: 0,
            version: "0.1.0".to_owned(),
            paused_queues: vec![],
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            namespace: "prod".to_owned(),
            window: Duration::from_secs(15 * 60),
            taken_at: now(),
            queues: vec![
                queue("default", Some(1742), 7),
                queue("emails", None, 0),
                queue("reports", Some(0), 0),
            ],
            tasks: vec![task("email.send", 1500, 30), task("report.build", 45, 0)],
            throughput: (0..16)
                .map(|i| MinuteCounts {
                    minute: now() - TimeDelta::minutes(15 - i),
                    succeeded: i * 10,
                    retried: 0,
                    dead: 0,
                    cancelled: 0,
                })
                .collect(),
            workers: vec![
                worker("web-1-8812", "running", 2),
                worker("web-2-4410", "lost", 95),
            ],
            limits: vec![],
            error: None,
        }
    }

    /// Draws at `width`×`height` and returns the screen's lines and the styled buffer.
    fn draw(
        snapshot: &Snapshot,
        view: &View,
        width: u16,
        height: u16,
    ) -> (Vec<String>, ratatui::buffer::Buffer, [usize; 3]) {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        let mut shown = [0; 3];
        terminal
            .draw(|frame| shown = render(frame, snapshot, view))
            .unwrap();
        let buffer = terminal.backend().buffer().clone();
        let lines = buffer
            .content()
            .chunks(usize::from(width))
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
            .collect();
        (lines, buffer, shown)
    }

    fn line_with<'a>(lines: &'a [String], needle: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{}", lines.join("\n")))
    }

    #[test]
    fn an_80_by_24_screen_shows_queues_tasks_and_a_lost_worker() {
        let (lines, buffer, shown) = draw(&snapshot(), &View::new(true), 80, 24);
        let screen = lines.join("\n");
        assert!(lines[0].contains("warren top") && lines[0].contains("namespace prod"));
        assert!(lines[0].contains("tasks over 15m00s") && lines[0].contains("06:36:15 UTC"));

        let default = line_with(&lines, "default ");
        for count in ["1742", " 3 ", " 1 ", " 7 ", "950", "active"] {
            assert!(default.contains(count), "{count} in {default:?}");
        }
        // RabbitMQ has no queue `emails`: unknown, not zero.
        let emails = line_with(&lines, "emails    ");
        assert!(emails.contains(" - "), "{emails:?}");

        // 1530 jobs in 15 minutes is 102 a minute; the busiest task comes first.
        let send = line_with(&lines, "email.send");
        assert!(send.contains("102") && send.contains("1500") && send.contains("30"));
        assert!(line_with(&lines, "report.build").contains("3.0"));

        let lost = line_with(&lines, "web-2-4410");
        assert!(lost.contains("lost") && lost.contains("1m ago"), "{lost:?}");
        assert!(line_with(&lines, "web-1-8812").contains("running"));
        // The lost worker's state is red.
        let y = lines.iter().position(|l| l.contains("web-2-4410")).unwrap() as u16;
        let x = lost.find("lost").unwrap() as u16;
        assert_eq!(buffer[(x, y)].fg, Color::Red, "{screen}");

        assert!(screen.contains("▸ Queues (3)"), "{screen}");
        assert!(screen.contains("Tasks (2)") && screen.contains("Workers (2)"));
        assert!(
            lines[22].starts_with("finished/min ▁▂▂▃▃▄▄▅▅▆▆▇▇███ max 150")
                && lines[22].contains("max 150")
        );
        assert!(lines[23].starts_with("q quit"), "{screen}");
        assert_eq!(shown, [3, 2, 2]);
    }

    #[test]
    fn many_rows_share_the_screen_and_scroll() {
        let mut snapshot = snapshot();
        snapshot.queues = (0..40)
            .map(|i| queue(&format!("queue-{i:02}"), Some(i), 0))
            .collect();
        snapshot.workers = (0..30)
            .map(|i| worker(&format!("worker-{i:02}"), "running", 1))
            .collect();
        let mut view = View::new(false);
        let (lines, _, shown) = draw(&snapshot, &view, 80, 24);
        // 21 rows for the sections: the two tasks take what they need, the rest is shared.
        assert_eq!(shown, [7, 2, 6], "{}", lines.join("\n"));
        assert!(lines.iter().any(|l| l.contains("▸ Queues 1-7 of 40 ↓")));
        assert!(lines.iter().any(|l| l.contains("Workers 1-6 of 30 ↓")));
        assert!(lines.iter().any(|l| l.contains("queue-06")));
        assert!(!lines.iter().any(|l| l.contains("queue-07")));

        view.apply(Move::PageDown, &snapshot, shown);
        view.apply(Move::Down(1), &snapshot, shown);
        let (lines, _, _) = draw(&snapshot, &view, 80, 24);
        assert!(lines.iter().any(|l| l.contains("Queues 9-15 of 40 ↑ ↓")));
        assert!(lines.iter().any(|l| l.contains("queue-08")));
        view.apply(Move::Bottom, &snapshot, shown);
        assert_eq!(view.offsets[0], 33);
        view.apply(Move::Down(5), &snapshot, shown);
        assert_eq!(view.offsets[0], 33, "scrolling stops at the last row");

        view.apply(Move::PreviousSection, &snapshot, shown);
        assert_eq!(view.focus, Section::Workers);
        view.apply(Move::Down(2), &snapshot, shown);
        let (lines, _, _) = draw(&snapshot, &view, 80, 24);
        assert!(lines.iter().any(|l| l.contains("▸ Workers 3-8 of 30 ↑ ↓")));
    }

    #[test]
    fn job_data_is_escaped_and_a_failed_refresh_is_shown() {
        let mut snapshot = snapshot();
        snapshot.queues[0].queue = "evil\u{1b}[2J".to_owned();
        snapshot.error = Some("counting jobs per queue: connection refused".to_owned());
        let (lines, _, _) = draw(&snapshot, &View::new(true), 80, 24);
        let screen = lines.join("\n");
        assert!(screen.contains("evil\\u{1b}[2J"), "{screen}");
        assert!(!screen.contains('\u{1b}'));
        assert!(lines[23].starts_with("refresh failed (showing 06:36:15 UTC): counting jobs"));
    }

    fn limit(target: &str, concurrency: Option<u32>, per_second: Option<u32>) -> Limit {
        Limit {
            target: target.to_owned(),
            concurrency,
            rate: per_second.map(|count| Rate {
                count,
                period_ms: 1000,
            }),
            key_from: None,
            updated_at: now(),
        }
    }

    #[test]
    fn a_task_shows_its_own_limit_and_its_queues() {
        let mut snapshot = snapshot();
        let mut keyed = limit("email.send", Some(5), Some(20));
        keyed.key_from = Some("/customer_id".to_owned());
        snapshot.limits = vec![
            limit("other.task", Some(1), None),
            keyed,
            limit("default", None, Some(300)),
        ];
        let (lines, _, _) = draw(&snapshot, &View::new(false), 140, 24);
        let screen = lines.join("\n");
        assert!(line_with(&lines, "TASK").contains("LIMIT"), "{screen}");
        let send = line_with(&lines, "email.send");
        assert!(
            send.contains("5 at once, 20/s per key; queue 300/s"),
            "{screen}"
        );
        // report.build has no limit of its own: only its queue's.
        let build = line_with(&lines, "report.build");
        assert!(build.trim_end().ends_with(" 0 queue 300/s"), "{screen}");

        // On 80 columns the cell is cut at its column, and the counts still show whole.
        let (lines, _, _) = draw(&snapshot, &View::new(false), 80, 24);
        let send = line_with(&lines, "email.send");
        assert!(
            send.contains("1500") && send.contains("5 at once"),
            "{send:?}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 80));
    }

    #[test]
    fn an_empty_section_says_so() {
        let mut snapshot = snapshot();
        snapshot.workers.clear();
        let (lines, _, _) = draw(&snapshot, &View::new(false), 80, 24);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("no workers have registered"))
        );
    }

    #[test]
    fn rows_are_shared_fairly() {
        assert_eq!(share(20, [5, 4, 4]), [5, 4, 4]);
        assert_eq!(share(20, [42, 4, 32]), [8, 4, 8]);
        assert_eq!(share(20, [42, 40, 32]), [7, 7, 6]);
        assert_eq!(share(2, [5, 5, 5]), [1, 1, 0]);
    }
}
