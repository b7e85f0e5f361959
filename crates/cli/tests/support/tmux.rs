//! Running `warren` on a real terminal: a detached tmux session of 80×24 on a server of its
//! own (a socket named for this process and session), read with `capture-pane` and typed into
//! with `send-keys`. Dropping a [`Tmux`] kills its session, and with it the server; nothing
//! else is touched.

#![allow(
    dead_code,
    reason = "each test binary includes this module and uses only part of it"
)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use warren_testkit::{TestEnv, wait_until};

/// How long a screen may take to show what a test waits for.
pub(crate) const SCREEN_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A tmux session running one command on an 80×24 terminal.
#[derive(Debug)]
pub(crate) struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    /// Starts `warren args...` in a new session, with `vars` as its only WARREN_* settings
    /// (plus any others given there, such as NO_COLOR). When the command ends, the pane shows
    /// `[exit N]` with its status and stays open until the session is killed.
    pub(crate) fn warren(vars: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let socket = format!("warren-test-{}-{n}", std::process::id());
        let session = format!("warren{n}");
        let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_warren"))
            .chain(args.iter().copied())
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        let shell = format!("{}; echo \"[exit $?]\"; sleep 600", quoted.join(" "));
        let mut command = Command::new("tmux");
        command.args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"]);
        command.args(["-s", &session, "-x", "80", "-y", "24", "sh", "-c", &shell]);
        // The new server, and so the session, gets this environment: the developer's own
        // settings must not leak in, and a test run inside tmux must not nest.
        for var in [
            "WARREN_AMQP_URL",
            "WARREN_DATABASE_URL",
            "WARREN_NAMESPACE",
            "WARREN_DELIVERY_LIMIT",
            "NO_COLOR",
            "RUST_LOG",
            "TMUX",
        ] {
            command.env_remove(var);
        }
        command.envs(vars.iter().copied());
        check(command.output(), "starting tmux")?;
        Ok(Self { socket, session })
    }

    /// What the screen shows now, as text (`-e`: with its colour escapes).
    pub(crate) fn screen(&self, escapes: bool) -> anyhow::Result<String> {
        let mut args = vec!["capture-pane", "-p", "-t", &self.session];
        if escapes {
            args.push("-e");
        }
        let out = check(self.tmux(&args), "capturing the tmux pane")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Types `keys` (tmux key names such as `Enter`, or literal text).
    pub(crate) fn send_keys(&self, keys: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        check(self.tmux(&args), "sending keys to tmux").map(drop)
    }

    /// Waits until the screen satisfies `ready`, and returns it.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        ready: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        wait_until(SCREEN_TIMEOUT, what, || async {
            let screen = self.screen(false)?;
            Ok(if ready(&screen) {
                Ok(screen)
            } else {
                Err(format!("the screen:\n{screen}"))
            })
        })
        .await
    }

    /// Waits for the command to end and returns its exit status and the screen.
    pub(crate) async fn wait_for_exit(&self) -> anyhow::Result<(i32, String)> {
        let screen = self
            .wait_for("the command to end", |s| s.contains("[exit "))
            .await?;
        let status = screen
            .split("[exit ")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no exit status on the screen:\n{screen}"))?;
        Ok((status, screen))
    }

    fn tmux(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-session", "-t", &self.session]);
    }
}

fn check(output: std::io::Result<Output>, what: &str) -> anyhow::Result<Output> {
    let output = output.with_context(|| format!("{what} (is tmux installed?)"))?;
    ensure!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// The settings that point `warren` at the test's own services.
pub(crate) fn vars(env: &TestEnv) -> Vec<(&str, &str)> {
    vec![
        ("WARREN_AMQP_URL", env.amqp_url.as_str()),
        ("WARREN_DATABASE_URL", env.database_url.as_str()),
        ("WARREN_NAMESPACE", env.namespace()),
    ]
}
