//! A RabbitMQ node of a test's own, for broker behaviour the shared node must not be
//! configured for (a short `consumer_timeout`, a TLS listener) and for faults that stop the
//! broker itself.
//!
//! The node runs from the RabbitMQ installed on the machine, under its own node name
//! (`warren-test-<random>@localhost`), on free loopback ports (AMQP and Erlang distribution),
//! with its own database, logs, configuration and Erlang cookie in a temporary folder, so it
//! never touches the shared node (`rabbit@localhost`, port 5672). It registers with the
//! machine's epmd like any node; nothing else is shared. It is killed and its folder removed
//! when the handle is dropped.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// The RabbitMQ scripts used directly: `/usr/sbin/rabbitmq-server` would switch to the
/// `rabbitmq` user, which cannot read a root-owned temporary folder.
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// How long a node gets to start; it takes about 7 s on two cores.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one `rabbitmqctl` command may take. Each starts an Erlang VM of its own, about a
/// second on two cores; a command that is still running after this has hung.
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the node's configuration adds to the defaults.
#[derive(Clone, Debug, Default)]
pub struct RabbitOptions {
    /// Extra `rabbitmq.conf` lines, e.g. `consumer_timeout = 5000`.
    pub conf: Vec<String>,
    /// Extra settings of the `rabbit` application for `advanced.config`, as Erlang terms,
    /// e.g. `{channel_tick_interval, 1000}` (settings `rabbitmq.conf` has no key for).
    pub rabbit_env: Vec<String>,
    /// Also listen for AMQP over TLS (`amqps://`) on a port of its own, with this PEM
    /// certificate (chain) and PEM private key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The Erlang cookie; nodes that are to form a cluster must share one. A random one when
    /// `None`.
    pub cookie: Option<String>,
}

/// A RabbitMQ node started by a test. See the module documentation.
#[derive(Debug)]
pub struct DisposableRabbit {
    node: String,
    port: u16,
    tls_port: Option<u16>,
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl DisposableRabbit {
    /// Starts a node with the default configuration and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<DisposableRabbit> {
        Self::start_with(RabbitOptions::default()).await
    }

    /// Starts a node with `options` added to its configuration and waits until it accepts
    /// connections.
    pub async fn start_with(options: RabbitOptions) -> anyhow::Result<DisposableRabbit> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let short = &id[id.len() - 12..];
        let dir = std::env::temp_dir().join(format!("warren-rabbit-{short}"));
        let port = free_port()?;
        let dist_port = free_port()?;
        let tls_port = options.tls.as_ref().map(|_| free_port()).transpose()?;
        let mut node = DisposableRabbit {
            node: format!("warren-test-{short}@localhost"),
            port,
            tls_port,
            dist_port,
            dir,
            child: None,
        };
        node.write_files(&options)
            .with_context(|| format!("preparing {}", node.dir.display()))?;
        node.launch().await?;
        Ok(node)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://guest:guest@<host>:<tls port>/%2f`, if the node was started with TLS. `host`
    /// is what the client checks the certificate against (the node listens on 127.0.0.1).
    pub fn amqps_url(&self, host: &str) -> Option<String> {
        self.tls_port
            .map(|port| format!("amqps://guest:guest@{host}:{port}/%2f"))
    }

    /// The AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name, for `rabbitmqctl -n`.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The node's folder: configuration, database and logs (`log/`, `server.out`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the node at once (SIGKILL to its whole process group), as a crash would. Its
    /// clients see their connections drop. Durable state stays for [`Self::restart`].
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            kill_group(&child)?;
            tokio::task::spawn_blocking(move || child.wait())
                .await
                .context("waiting for the killed node")??;
            // The wrapper exits first; until the Erlang VM's own exit closes its listening
            // socket, the kernel still completes TCP handshakes there and then resets them.
            // A test that kills a node means "nothing answers there any more".
            let port = self.port;
            crate::wait_until(
                std::time::Duration::from_secs(10),
                "the killed node's AMQP port to refuse connections",
                || async move {
                    Ok(
                        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                            Ok(_) => Err(format!("127.0.0.1:{port} still accepts")),
                            Err(_) => Ok(()),
                        },
                    )
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Stops the node cleanly (`rabbitmqctl stop`), as an operator would.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() {
            return Ok(());
        }
        let status = self
            .ctl()
            .args(["stop"])
            .status()
            .await
            .context("running rabbitmqctl stop")?;
        anyhow::ensure!(status.success(), "rabbitmqctl -n {} stop failed", self.node);
        if let Some(mut child) = self.child.take() {
            tokio::task::spawn_blocking(move || child.wait())
                .await
                .context("waiting for the stopped node")??;
        }
        Ok(())
    }

    /// Starts the node again (after [`Self::kill`] or [`Self::stop`]; kills it first if it
    /// still runs) on the same port, with its durable queues and messages.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.launch().await
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let pid_file = self.dir.join("pid");
        let _ = std::fs::remove_file(&pid_file);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))?;
        let mut command = Command::new(format!("{RABBITMQ_BIN}/rabbitmq-server"));
        let child = self
            .env(&mut command)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // A group of its own, so that killing it takes the Erlang VM and its helpers.
            .process_group(0)
            .spawn()
            .context("starting rabbitmq-server (is RabbitMQ installed?)")?;
        self.child = Some(child);
        let waited = tokio::time::timeout(
            START_TIMEOUT,
            self.ctl()
                .args(["wait", "--timeout", &START_TIMEOUT.as_secs().to_string()])
                .arg(&pid_file)
                .output(),
        )
        .await;
        let ok = matches!(&waited, Ok(Ok(output)) if output.status.success());
        if !ok {
            let log = std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            let _ = self.kill().await;
            anyhow::bail!(
                "RabbitMQ node {} did not start within {START_TIMEOUT:?} ({waited:?}); \
                 its output ends with:\n{tail}",
                self.node
            );
        }
        Ok(())
    }

    /// Runs `rabbitmqctl -n <node> <args>` and returns its standard output, e.g. to raise a
    /// resource alarm (`set_vm_memory_high_watermark 0`) or to list connections and queues.
    /// A command that fails, or takes longer than 30 seconds, is an error carrying its
    /// standard error.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::time::timeout(CTL_TIMEOUT, self.ctl().args(args).output())
            .await
            .with_context(|| format!("rabbitmqctl {} took over {CTL_TIMEOUT:?}", args.join(" ")))?
            .context("running rabbitmqctl")?;
        anyhow::ensure!(
            output.status.success(),
            "rabbitmqctl -n {} {} failed ({}): {}",
            self.node,
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `rabbitmqctl -n <node>` with this node's cookie.
    fn ctl(&self) -> tokio::process::Command {
        let mut command = std::process::Command::new(format!("{RABBITMQ_BIN}/rabbitmqctl"));
        self.env(&mut command)
            .arg("-n")
            .arg(&self.node)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tokio::process::Command::from(command)
    }

    fn env<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        let d = &self.dir;
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LANG", "C.UTF-8")
            // The cookie is read from $HOME/.erlang.cookie.
            .env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            // Not /etc/rabbitmq/rabbitmq-env.conf, which names the shared node.
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
    }

    fn write_files(&self, options: &RabbitOptions) -> anyhow::Result<()> {
        let d = &self.dir;
        std::fs::create_dir_all(d.join("home"))?;
        std::fs::create_dir_all(d.join("mnesia"))?;
        std::fs::create_dir_all(d.join("log"))?;
        let cookie = d.join("home/.erlang.cookie");
        let value = options
            .cookie
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
        std::fs::write(&cookie, value)?;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))?;
        std::fs::write(d.join("rabbitmq-env.conf"), "")?;
        std::fs::write(d.join("enabled_plugins"), "[].\n")?;
        let mut conf = format!("listeners.tcp.default = 127.0.0.1:{}\n", self.port);
        if let (Some((cert, key)), Some(port)) = (&options.tls, self.tls_port) {
            writeln!(conf, "listeners.ssl.default = 127.0.0.1:{port}")?;
            writeln!(conf, "ssl_options.certfile = {}", cert.display())?;
            writeln!(conf, "ssl_options.keyfile = {}", key.display())?;
            writeln!(conf, "ssl_options.verify = verify_none")?;
            writeln!(conf, "ssl_options.fail_if_no_peer_cert = false")?;
        }
        for line in &options.conf {
            writeln!(conf, "{line}")?;
        }
        std::fs::write(d.join("rabbitmq.conf"), conf)?;
        std::fs::write(
            d.join("advanced.config"),
            format!("[{{rabbit, [{}]}}].\n", options.rabbit_env.join(", ")),
        )?;
        Ok(())
    }
}

impl Drop for DisposableRabbit {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && kill_group(&child).is_ok()
        {
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGKILL to the process group the node was started in (its own; see `launch`).
fn kill_group(child: &Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{}", child.id()))
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -KILL -{} failed", child.id());
    Ok(())
}

/// A loopback port nobody listens on now. Another process could take it before the node
/// binds it; the node then fails to start and says so. Disposable PostgreSQL servers take
/// theirs here too.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
