//! `warren top`: a live view of queues, tasks and workers, redrawn about every second until
//! the admin presses `q`.
//!
//! The data is what `warren queues list`, `warren stats` and `warren workers` read (the same
//! functions, called on every refresh over one Postgres pool and one AMQP connection). It is
//! held in a [`Snapshot`], and [`render`](view::render) draws a snapshot into a frame without
//! any I/O, so that the screen is tested with ratatui's `TestBackend` at 80×24. This module
//! owns the terminal: raw mode and the alternate screen are entered only after the first
//! snapshot was read, and left on every way out (`q`, an error, a signal, a panic).

mod columns;
mod view;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::signal::unix::{Signal, SignalKind, signal};
use warren_broker::Broker;
use warren_core::duration::parse_duration;
use warren_store::{Limit, MinuteCounts, Store, TaskStats, WorkerRecord};

use crate::connection::ConnectionArgs;
use crate::exit::Usage;
use crate::queues::QueueLine;

pub(crate) use view::View;

const TOP_HELP: &str = "\
Three sections, each scrolled on its own:
  Queues   state (paused?), ready, unacked and delivered per second (RabbitMQ; unacked and the
           rate need --rabbitmq-api-url, else n/a); scheduled, running, dead in 24 h and succeeded in
           1 h (Postgres): what `warren queues list` shows.
  Tasks    per task and queue over --since: jobs finished per minute, succeeded, retried and
           dead, busiest first: what `warren stats` counts; LIMIT is the fleet-wide limit on
           the task, then on its queue (`warren limits list`).
  Workers  state (lost in red: no heartbeat for 30 s), in flight, processed, last heartbeat:
           what `warren workers` shows.
The bottom line is a sparkline of the jobs finished per minute over --since. A refresh that
fails keeps the last data on screen and says why in red.

Keys: q, Esc or Ctrl-C quit; Tab / Shift-Tab choose a section; Up/Down, PgUp/PgDn, Home/End
(or j/k) scroll it; r refreshes now.

Needs a terminal. For scripts use `warren queues list --json`, `warren stats --json` and
`warren workers --json`.

Examples:
  warren top
  warren top --since 5m --interval 2s";

#[derive(Debug, clap::Args)]
#[command(after_long_help = TOP_HELP)]
pub struct TopArgs {
    /// The window of the Tasks section and the sparkline, e.g. 5m or 1h.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub since: Duration,

    /// How often to read everything again (at least 200ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_INTERVAL {
        return Err(format!(
            "`{s}` is too short: refreshing more often than every 200ms would load the database \
             for nobody to read it"
        ));
    }
    Ok(d)
}

const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// A refresh slower than this is abandoned (and reported on screen), so that `q` is never
/// stuck behind a database or broker that stopped answering.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one wait for a key lasts before signals get a look; short enough that `kill` or a
/// closed terminal ends `top` at once.
const INPUT_SLICE: Duration = Duration::from_millis(200);

/// Everything one screen shows: the data as of `taken_at`, and the error of the last refresh
/// if it failed (the data is then the last that was read).
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) namespace: String,
    /// The window of `tasks` and `throughput`.
    pub(crate) window: Duration,
    pub(crate) taken_at: DateTime<Utc>,
    pub(crate) queues: Vec<QueueLine>,
    pub(crate) tasks: Vec<TaskStats>,
    pub(crate) throughput: Vec<MinuteCounts>,
    pub(crate) workers: Vec<WorkerRecord>,
    /// The fleet-wide limits (`warren limits`), shown beside the tasks they hold back.
    pub(crate) limits: Vec<Limit>,
    pub(crate) error: Option<String>,
}

pub(crate) async fn run(args: TopArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        return Err(Usage(
            "`warren top` draws on a terminal, and stdout is not one; for scripts use \
             `warren queues list --json`, `warren stats --json` and `warren workers --json`"
                .to_owned(),
        )
        .into());
    }
    let window = TimeDelta::from_std(args.since)
        .ok()
        .filter(|d| Utc::now().checked_sub_signed(*d).is_some())
        .ok_or_else(|| {
            Usage(format!(
                "--since {:?} reaches before the calendar",
                args.since
            ))
        })?;
    let store = connection.store("top").await?;
    let broker = match connection.broker("top").await {
        Ok(broker) => broker,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    let source = Source {
        store: &store,
        broker: &broker,
        management: tokio::sync::Mutex::new(connection.management().await),
        namespace: connection.namespace.clone(),
        window,
        since: args.since,
    };
    let result = live(&source, args.interval).await;
    broker.close().await;
    store.close().await;
    result
}

/// Where snapshots come from.
struct Source<'a> {
    store: &'a Store,
    broker: &'a Broker,
    /// RabbitMQ's management API, for unacked counts and rates, while it answers.
    management: tokio::sync::Mutex<Option<crate::management::Management>>,
    namespace: String,
    window: TimeDelta,
    since: Duration,
}

impl Source<'_> {
    async fn read(&self) -> anyhow::Result<Snapshot> {
        let taken_at = Utc::now();
        let since = taken_at - self.window;
        let queues = crate::queues::queue_lines(
            self.store,
            self.broker,
            &mut *self.management.lock().await,
            None,
        )
        .await?;
        let mut tasks = self
            .store
            .task_stats(since)
            .await
            .context("reading the statistics")?;
        // Busiest first: what an admin watching a backlog looks for.
        tasks.sort_by(|a, b| {
            (b.succeeded + b.dead)
                .cmp(&(a.succeeded + a.dead))
                .then_with(|| (&a.task, &a.queue).cmp(&(&b.task, &b.queue)))
        });
        let throughput = self
            .store
            .throughput(since)
            .await
            .context("reading the throughput per minute")?;
        let workers = self.store.workers().await.context("listing workers")?;
        let limits = self.store.limits().await.context("reading the limits")?;
        Ok(Snapshot {
            namespace: self.namespace.clone(),
            window: self.since,
            taken_at,
            queues,
            tasks,
            throughput,
            workers,
            limits,
            error: None,
        })
    }

    /// A new snapshot, or the previous one with the reason this refresh failed.
    async fn refresh(&self, previous: Snapshot) -> Snapshot {
        let failure = match tokio::time::timeout(REFRESH_TIMEOUT, self.read()).await {
            Ok(Ok(snapshot)) => return snapshot,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!(
                "no answer within {}",
                crate::output::duration(REFRESH_TIMEOUT)
            ),
        };
        Snapshot {
            error: Some(failure),
            ..previous
        }
    }
}

/// Leaves raw mode and the alternate screen when dropped: on `q`, on an error returned with
/// `?`, and while a panic unwinds (ratatui's panic hook restores too, before the message is
/// printed, so that it is readable).
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
        crate::logs::release();
    }
}

/// What ends `top` from outside: Ctrl-C sent by `kill -INT` (a Ctrl-C typed in raw mode is a
/// key), `kill`, and a terminal that closed.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        let listen = |kind| signal(kind).context("listening for signals");
        Ok(Self {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

async fn live(source: &Source<'_>, interval: Duration) -> anyhow::Result<()> {
    // The first read happens before the screen is taken, so that a database without
    // migrations or an unreachable broker is an ordinary error message, not a flash.
    let mut snapshot = source.read().await?;
    let mut signals = Signals::new()?;
    let mut view = View::new(crate::output::colour_on());
    crate::logs::hold();
    let _restore = RestoreTerminal;
    let mut terminal = ratatui::try_init().context("taking over the terminal")?;
    loop {
        let mut shown = [0; 3];
        terminal
            .draw(|frame| shown = view::render(frame, &snapshot, &view))
            .context("drawing the screen")?;
        let next_refresh = tokio::time::Instant::now() + interval;
        // Keys are handled (and the screen redrawn) until the next refresh is due.
        let mut refresh_now = false;
        while !refresh_now {
            let left = next_refresh.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let slice = left.min(INPUT_SLICE);
            let input = tokio::select! {
                read = tokio::task::spawn_blocking(move || next_input(slice)) => {
                    read.context("waiting for a key")?.context("reading the keyboard")?
                }
                () = signals.recv() => return Ok(()),
            };
            match input {
                None => continue,
                Some(Input::Quit) => return Ok(()),
                Some(Input::Refresh) => refresh_now = true,
                Some(Input::Redraw) => {}
                Some(Input::Move(action)) => view.apply(action, &snapshot, shown),
            }
            terminal
                .draw(|frame| shown = view::render(frame, &snapshot, &view))
                .context("drawing the screen")?;
        }
        snapshot = tokio::select! {
            s = source.refresh(snapshot) => s,
            () = signals.recv() => return Ok(()),
        };
    }
}

/// What a key or terminal event asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    Quit,
    Refresh,
    Redraw,
    Move(Move),
}

/// A change of focus or scroll position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Move {
    NextSection,
    PreviousSection,
    Up(usize),
    Down(usize),
    PageUp,
    PageDown,
    Top,
    Bottom,
}

/// Waits up to `timeout` for one terminal event.
fn next_input(timeout: Duration) -> std::io::Result<Option<Input>> {
    if !event::poll(timeout)? {
        return Ok(None);
    }
    Ok(match event::read()? {
        Event::Key(key) => input_of(key),
        Event::Resize(..) => Some(Input::Redraw),
        _ => None,
    })
}

fn input_of(key: KeyEvent) -> Option<Input> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let control = key.modifiers.contains(KeyModifiers::CONTROL);
    Some(match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Input::Quit,
        KeyCode::Char('c') if control => Input::Quit,
        KeyCode::Char('r') => Input::Refresh,
        KeyCode::Char('l') if control => Input::Redraw,
        KeyCode::Tab => Input::Move(Move::NextSection),
        KeyCode::BackTab => Input::Move(Move::PreviousSection),
        KeyCode::Up | KeyCode::Char('k') => Input::Move(Move::Up(1)),
        KeyCode::Down | KeyCode::Char('j') => Input::Move(Move::Down(1)),
        KeyCode::PageUp => Input::Move(Move::PageUp),
        KeyCode::PageDown | KeyCode::Char(' ') => Input::Move(Move::PageDown),
        KeyCode::Home | KeyCode::Char('g') => Input::Move(Move::Top),
        KeyCode::End | KeyCode::Char('G') => Input::Move(Move::Bottom),
        _ => return None,
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use super::*;

    #[test]
    fn q_escape_and_control_c_quit_and_arrows_scroll() {
        let key = |code, modifiers| input_of(KeyEvent::new(code, modifiers));
        let none = KeyModifiers::NONE;
        assert_eq!(key(KeyCode::Char('q'), none), Some(Input::Quit));
        assert_eq!(key(KeyCode::Esc, none), Some(Input::Quit));
        assert_eq!(
            key(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Input::Quit)
        );
        assert_eq!(key(KeyCode::Char('c'), none), None);
        assert_eq!(key(KeyCode::Down, none), Some(Input::Move(Move::Down(1))));
        assert_eq!(
            key(KeyCode::Tab, none),
            Some(Input::Move(Move::NextSection))
        );
        let mut release = KeyEvent::new(KeyCode::Char('q'), none);
        release.kind = KeyEventKind::Release;
        assert_eq!(input_of(release), None);
    }

    #[test]
    fn an_interval_below_200ms_is_refused() {
        assert!(parse_interval("100ms").unwrap_err().contains("too short"));
        assert_eq!(parse_interval("2s").unwrap(), Duration::from_secs(2));
    }
}
