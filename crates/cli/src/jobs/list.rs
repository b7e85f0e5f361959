//! `warren jobs list`: jobs newest first, filtered, a page at a time.

use chrono::{DateTime, Utc};
use warren_store::{Cursor, JobPage};

use super::filter::FilterArgs;
use crate::connection::ConnectionArgs;
use crate::output::{Align, Table, age, emit, emit_json};

const AFTER_LONG_HELP: &str = "\
Examples:
  warren jobs list --state dead --since 1h
  warren jobs list --task email.send --error-contains timeout --limit 20
  warren jobs list --after 1764570000123456-01938c2e-7f3a-7c11-9d2b-5e1f0a6b4c3d

--json prints {\"jobs\": [{\"id\", \"queue\", \"task\", \"state\", \"attempt\", \"max_attempts\",
\"enqueued_at\", \"finished_at\", \"worker_id\", \"last_error\"}], \"next\": CURSOR or null}.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_LONG_HELP)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// The most jobs to print.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,

    /// Start after this cursor: the `next` a previous page printed.
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<Cursor>,

    /// Print the page as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(args: ListArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let store = connection.store("jobs list").await?;
    let page = store
        .list_jobs(&args.filter.to_filter(), args.after, args.limit)
        .await
        .map_err(anyhow::Error::from);
    store.close().await;
    let page = page?;
    if args.json {
        emit_json(&page)
    } else {
        emit(&render(&page, Utc::now()))
    }
}

fn render(page: &JobPage, now: DateTime<Utc>) -> String {
    if page.jobs.is_empty() {
        return "no jobs match\n".to_owned();
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("STATE", Align::Left),
        ("QUEUE", Align::Left),
        ("TASK", Align::Left),
        ("ATTEMPT", Align::Right),
        ("ENQUEUED", Align::Left),
        ("LAST ERROR", Align::Left),
    ]);
    for job in &page.jobs {
        let mut error = job.last_error.clone().unwrap_or_default();
        if let Some(line) = error.lines().next() {
            error = line.to_owned();
        }
        if error.chars().count() > 60 {
            error = error.chars().take(59).chain(['…']).collect();
        }
        table.row(vec![
            job.id.to_string(),
            job.state.to_string(),
            job.queue.clone(),
            job.task.clone(),
            format!("{}/{}", job.attempt, job.max_attempts),
            age(now - job.enqueued_at),
            error,
        ]);
    }
    let mut out = table.render();
    match page.next {
        Some(next) => out.push_str(&format!("next page: --after {next}\n")),
        None => out.push_str("(last page)\n"),
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use chrono::TimeDelta;
    use warren_core::{JobId, JobState};
    use warren_store::JobListing;

    use super::*;

    #[test]
    fn a_page_reads_as_a_table_with_the_next_cursor() {
        let now = DateTime::from_timestamp(1_764_570_000, 0).unwrap();
        let id: JobId = "01938c2e-7f3a-7c11-9d2b-5e1f0a6b4c3d".parse().unwrap();
        let job = JobListing {
            id,
            queue: "default".into(),
            task: "email".into(),
            state: JobState::Dead,
            attempt: 3,
            max_attempts: 3,
            enqueued_at: now - TimeDelta::minutes(5),
            finished_at: None,
            worker_id: None,
            last_error: Some("smtp timeout\nat line 2".into()),
        };
        let next = Cursor {
            enqueued_at: job.enqueued_at,
            id,
        };
        let page = JobPage {
            jobs: vec![job],
            next: Some(next),
        };
        assert_eq!(
            render(&page, now),
            "ID                                    STATE  QUEUE    TASK   ATTEMPT  ENQUEUED  LAST ERROR\n\
             01938c2e-7f3a-7c11-9d2b-5e1f0a6b4c3d  dead   default  email      3/3  5m ago    smtp timeout\n\
             next page: --after 1764569700000000-01938c2e-7f3a-7c11-9d2b-5e1f0a6b4c3d\n"
        );
    }
}
