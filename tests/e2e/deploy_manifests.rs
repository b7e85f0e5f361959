//! The files in `deploy/` say what the binaries accept and what the worker exports, and they
//! must not drift from it: every manifest parses; every `warren*` command line, flag and
//! `WARREN_*` variable they name is one the real binaries accept (read from their `--help`);
//! every series the dashboard, the alerts and the autoscalers use is one the worker exports;
//! the shutdown timings agree; the Dockerfile copies paths that exist and ships the binaries
//! the manifests run; and `systemd-analyze verify` accepts the unit file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use warren_core::duration::parse_duration;
use warren_testkit::bin_path;

/// The binaries a manifest may run: the workspace's own. `warren-producer` joins when the
/// producer service is built; a manifest naming a binary the workspace does not build fails.
const OUR_BINARIES: &[&str] = &["warren", "warren-worker", "warren-producer"];

/// The worker's series (docs/observability.md), without the `_bucket`/`_sum`/`_count`
/// suffixes of histograms. The dashboard, the alert rules and the autoscalers may use only
/// these.
const SERIES: &[&str] = &[
    "warren_jobs_started_total",
    "warren_jobs_finished_total",
    "warren_job_run_seconds",
    "warren_job_wait_seconds",
    "warren_jobs_in_flight",
    "warren_promoter_published_total",
    "warren_promoter_lag_seconds",
    "warren_recorder_batch_size",
    "warren_recorder_commit_seconds",
    "warren_broker_connected",
    "warren_database_connected",
    "warren_queue_ready",
    "warren_queue_scheduled",
    "warren_queue_running",
    "warren_queue_dead_24h",
    "warren_queue_oldest_due_seconds",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Every file under `dir` whose name ends with one of `exts`, sorted.
fn files(dir: &Path, exts: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files(&path, exts)?);
        } else if exts
            .iter()
            .any(|ext| path.extension().is_some_and(|e| e == *ext))
        {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// The YAML documents of a file, merge keys (`<<: *anchor`) applied, as JSON values.
fn yaml_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let text = read(path)?;
    let mut documents = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let mut value = serde_norway::Value::deserialize(document).with_context(|| {
            format!("{} (document {}) is not valid YAML", path.display(), i + 1)
        })?;
        value
            .apply_merge()
            .with_context(|| format!("{}: merge keys", path.display()))?;
        if value.is_null() {
            continue;
        }
        documents.push(
            serde_json::to_value(&value)
                .with_context(|| format!("{} (document {})", path.display(), i + 1))?,
        );
    }
    Ok(documents)
}

/// What one binary (or `warren` subcommand) accepts, read from its `--help`.
#[derive(Debug, Default)]
struct Surface {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
    subcommands: BTreeSet<String>,
}

fn surface(binary: &str, subcommand: &[&str]) -> anyhow::Result<Surface> {
    let path = bin_path(binary)?;
    let output = Command::new(&path)
        .args(subcommand)
        .arg("--help")
        .env_clear()
        .output()
        .with_context(|| format!("running {} --help", path.display()))?;
    ensure!(
        output.status.success(),
        "{binary} {} --help failed: {}",
        subcommand.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let help = String::from_utf8(output.stdout)?;
    let mut surface = Surface::default();
    let mut in_commands = false;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            match trimmed.split_whitespace().next() {
                Some(word) if line.starts_with("  ") => {
                    surface.subcommands.insert(word.to_owned());
                }
                _ => in_commands = false,
            }
        }
        // `      --flag <VALUE>` or `  -h, --help`.
        let flag = trimmed
            .strip_prefix("--")
            .or_else(|| trimmed.split_once(", --").map(|(_, rest)| rest));
        if let Some(flag) = flag
            && line.starts_with("  ")
        {
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            surface.flags.insert(format!("--{name}"));
        }
        for (_, rest) in line
            .match_indices("[env: ")
            .map(|(i, _)| line.split_at(i + 6))
        {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            surface.env.insert(name);
        }
    }
    ensure!(
        !surface.flags.is_empty(),
        "no flags read from {binary} --help"
    );
    Ok(surface)
}

/// Caches the help of each binary and subcommand.
#[derive(Default)]
struct Binaries {
    seen: BTreeMap<String, Surface>,
}

impl Binaries {
    fn get(&mut self, binary: &str, subcommand: &[&str]) -> anyhow::Result<&Surface> {
        let key = format!("{binary} {}", subcommand.join(" "));
        if !self.seen.contains_key(&key) {
            let s = surface(binary, subcommand)?;
            self.seen.insert(key.clone(), s);
        }
        Ok(&self.seen[&key])
    }

    /// Checks one command line; returns the binary's name if it is one of ours.
    fn check_command(&mut self, argv: &[String], origin: &str) -> anyhow::Result<Option<String>> {
        let Some(program) = argv.first() else {
            return Ok(None);
        };
        let binary = program.rsplit('/').next().unwrap_or(program).to_owned();
        if !binary.starts_with("warren") {
            return Ok(None);
        }
        ensure!(
            OUR_BINARIES.contains(&binary.as_str()),
            "{origin}: runs {binary}, which is not one of the workspace's binaries {OUR_BINARIES:?}"
        );
        // Leading words name a subcommand (`warren migrate`, `warren queues list`).
        let mut path: Vec<&str> = Vec::new();
        let mut rest = &argv[1..];
        while let Some(word) = rest.first() {
            if word.starts_with('-') {
                break;
            }
            let known = self
                .get(&binary, &path)?
                .subcommands
                .contains(word.as_str());
            ensure!(
                known,
                "{origin}: `{binary} {}` has no subcommand `{word}`",
                path.join(" ")
            );
            path.push(word);
            rest = &rest[1..];
        }
        let surface = self.get(&binary, &path)?;
        for word in rest {
            if let Some(flag) = word.strip_prefix("--") {
                let flag = format!("--{}", flag.split('=').next().unwrap_or(flag));
                ensure!(
                    surface.flags.contains(&flag),
                    "{origin}: `{binary} {}` has no flag {flag} (it has {:?})",
                    path.join(" "),
                    surface.flags
                );
            }
        }
        Ok(Some(binary))
    }

    /// Checks that `binary` reads every `WARREN_*` name in `names`.
    fn check_env<'a>(
        &mut self,
        binary: &str,
        names: impl IntoIterator<Item = &'a String>,
        origin: &str,
    ) -> anyhow::Result<usize> {
        let surface = self.get(binary, &[])?;
        let mut checked = 0;
        for name in names {
            if !name.starts_with("WARREN_") {
                continue;
            }
            ensure!(
                surface.env.contains(name),
                "{origin}: {binary} reads no variable {name} (it reads {:?})",
                surface.env
            );
            checked += 1;
        }
        Ok(checked)
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The `CMD` of deploy/docker/Dockerfile: what a container of the image runs by default.
fn image_cmd() -> anyhow::Result<Vec<String>> {
    let dockerfile = read(&deploy().join("docker/Dockerfile"))?;
    let line = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("CMD "))
        .context("the Dockerfile has no CMD")?;
    Ok(serde_json::from_str(line)?)
}

#[test]
fn every_manifest_parses() -> anyhow::Result<()> {
    let yaml = files(&deploy(), &["yaml", "yml"])?;
    ensure!(yaml.len() >= 10, "found only {yaml:?}");
    for path in &yaml {
        let documents = yaml_documents(path)?;
        ensure!(!documents.is_empty(), "{} is empty", path.display());
        for document in &documents {
            ensure!(
                document.is_object(),
                "{}: a document that is not a mapping",
                path.display()
            );
        }
    }
    for path in files(&deploy(), &["json"])? {
        serde_json::from_str::<Value>(&read(&path)?)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
    }
    Ok(())
}

/// A container or service: what it runs and the variables it gets.
#[derive(Debug)]
struct Runs {
    origin: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
}

/// Every container of the Kubernetes manifests, with the variables it gets from `env` and
/// from the ConfigMaps and Secrets its `envFrom` names.
fn kubernetes_containers() -> anyhow::Result<Vec<Runs>> {
    let mut documents = Vec::new();
    for path in files(&deploy().join("k8s"), &["yaml"])? {
        for document in yaml_documents(&path)? {
            documents.push((path.clone(), document));
        }
    }
    // Keys of every ConfigMap and Secret, by name.
    let mut sources: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (_, document) in &documents {
        if matches!(document["kind"].as_str(), Some("ConfigMap" | "Secret")) {
            let name = document["metadata"]["name"].as_str().unwrap_or_default();
            let entry = sources.entry(name.to_owned()).or_default();
            for field in ["data", "stringData"] {
                if let Some(map) = document[field].as_object() {
                    for (k, v) in map {
                        entry.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
                    }
                }
            }
        }
    }
    let mut runs = Vec::new();
    for (path, document) in &documents {
        let Some(spec) = document.pointer("/spec/template/spec") else {
            continue;
        };
        for field in ["initContainers", "containers"] {
            for container in spec[field].as_array().into_iter().flatten() {
                let origin = format!(
                    "{} {} container {}",
                    path.display(),
                    document["kind"].as_str().unwrap_or("?"),
                    container["name"].as_str().unwrap_or("?")
                );
                let mut argv = strings(&container["command"]);
                argv.extend(strings(&container["args"]));
                let mut env = BTreeMap::new();
                for from in container["envFrom"].as_array().into_iter().flatten() {
                    let name = from
                        .pointer("/configMapRef/name")
                        .or_else(|| from.pointer("/secretRef/name"))
                        .and_then(Value::as_str)
                        .context("envFrom without a name")?;
                    let keys = sources.get(name).with_context(|| {
                        format!("{origin}: envFrom names {name}, defined nowhere")
                    })?;
                    env.extend(keys.clone());
                }
                for var in container["env"].as_array().into_iter().flatten() {
                    let name = var["name"].as_str().unwrap_or_default().to_owned();
                    env.insert(name, var["value"].as_str().unwrap_or_default().to_owned());
                }
                runs.push(Runs { origin, argv, env });
            }
        }
    }
    Ok(runs)
}

/// Every service of compose.yaml; one without a command runs the image's `CMD`.
fn compose_services() -> anyhow::Result<Vec<Runs>> {
    let path = deploy().join("compose.yaml");
    let compose = yaml_documents(&path)?
        .into_iter()
        .next()
        .context("compose.yaml is empty")?;
    let services = compose["services"]
        .as_object()
        .context("compose.yaml has no services")?;
    let mut runs = Vec::new();
    for (name, service) in services {
        let mut argv = strings(&service["entrypoint"]);
        argv.extend(strings(&service["command"]));
        if argv.is_empty() && service["build"].is_object() {
            argv = image_cmd()?;
        }
        let env = match &service["environment"] {
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        runs.push(Runs {
            origin: format!("{} service {name}", path.display()),
            argv,
            env,
        });
    }
    Ok(runs)
}

/// `KEY=value` lines of an environment file (systemd's `EnvironmentFile=` syntax, simple
/// form).
fn env_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(read(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// `Key=value` settings of a systemd unit (the last one wins, as in systemd, except that
/// `Environment=` lines accumulate under their variable names).
fn unit_settings(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut settings = BTreeMap::new();
    let mut environment = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            if key == "Environment" {
                if let Some((k, v)) = value.split_once('=') {
                    environment.insert(k.to_owned(), v.to_owned());
                }
            } else {
                settings.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    (settings, environment)
}

fn systemd_runs() -> anyhow::Result<Vec<Runs>> {
    let dir = deploy().join("systemd");
    let unit = dir.join("warren-worker@.service");
    let (settings, environment) = unit_settings(&read(&unit)?);
    let argv = strings(&Value::String(
        settings
            .get("ExecStart")
            .context("the unit has no ExecStart")?
            .clone(),
    ));
    let mut runs = vec![Runs {
        origin: unit.display().to_string(),
        argv: argv.clone(),
        env: environment,
    }];
    for example in ["worker.env", "worker-instance.env.example"] {
        runs.push(Runs {
            origin: dir.join(example).display().to_string(),
            argv: argv.clone(),
            env: env_file(&dir.join(example))?,
        });
    }
    Ok(runs)
}

#[test]
fn manifests_name_only_flags_and_variables_the_binaries_accept() -> anyhow::Result<()> {
    let mut binaries = Binaries::default();
    let mut ran = BTreeSet::new();
    let mut variables = 0;
    let runs: Vec<Runs> = kubernetes_containers()?
        .into_iter()
        .chain(compose_services()?)
        .chain(systemd_runs()?)
        .collect();
    for run in &runs {
        match binaries.check_command(&run.argv, &run.origin)? {
            Some(binary) => {
                variables += binaries.check_env(&binary, run.env.keys(), &run.origin)?;
                ran.insert(binary);
            }
            None => {
                // A container of another image (psql): it may read Warren's URL, but only a
                // variable some Warren binary also reads.
                for name in run.env.keys().filter(|n| n.starts_with("WARREN_")) {
                    let known = binaries.get("warren", &[])?.env.contains(name)
                        || binaries.get("warren-worker", &[])?.env.contains(name);
                    ensure!(known, "{}: {name} is read by no Warren binary", run.origin);
                }
            }
        }
    }
    ensure!(
        ran.contains("warren") && ran.contains("warren-worker"),
        "the manifests run both binaries: {ran:?}"
    );
    ensure!(variables >= 20, "only {variables} variables checked");

    // The Dockerfile ships every binary a manifest runs, and its CMD is one of them.
    let shipped = dockerfile_binaries()?;
    for binary in &ran {
        ensure!(
            shipped.contains(binary),
            "the manifests run {binary}, which deploy/docker/Dockerfile does not copy into the image"
        );
    }
    binaries.check_command(&image_cmd()?, "deploy/docker/Dockerfile CMD")?;
    Ok(())
}

/// The binaries the runtime stage copies from the build stage (`COPY --from=build /out/X`).
fn dockerfile_binaries() -> anyhow::Result<BTreeSet<String>> {
    Ok(read(&deploy().join("docker/Dockerfile"))?
        .lines()
        .filter_map(|l| l.strip_prefix("COPY --from=build /out/"))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

#[test]
fn the_dockerfile_copies_what_exists() -> anyhow::Result<()> {
    let dockerfile = read(&deploy().join("docker/Dockerfile"))?;
    let mut copies = 0;
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        if words.iter().any(|w| w.starts_with("--from=")) {
            continue;
        }
        // COPY [flags] <src>... <dest>: sources are relative to the context, the repository.
        let sources: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for source in &sources[..sources.len().saturating_sub(1)] {
            ensure!(
                repo().join(source).exists(),
                "the Dockerfile copies {source}, which is not in the repository"
            );
            copies += 1;
        }
    }
    ensure!(copies >= 1, "the build stage copies the workspace");
    // The binaries the image ships are binaries the workspace builds (`cargo build --bins`
    // put them beside this test), and include the two every deployment needs.
    let shipped = dockerfile_binaries()?;
    for needed in ["warren", "warren-worker"] {
        ensure!(shipped.contains(needed), "the image lacks {needed}");
    }
    for binary in &shipped {
        bin_path(binary).with_context(|| format!("the image ships {binary}"))?;
    }
    // The image runs as a non-root user.
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .context("the Dockerfile sets no USER")?;
    ensure!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "USER {user}"
    );
    Ok(())
}

fn duration_of(value: &str, what: &str) -> anyhow::Result<Duration> {
    parse_duration(value).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

#[test]
fn shutdown_timings_leave_the_worker_its_grace() -> anyhow::Result<()> {
    // Kubernetes: terminationGracePeriodSeconds counts from the start of preStop.
    let worker = kubernetes_containers()?
        .into_iter()
        .find(|r| r.argv.first().is_some_and(|p| p == "warren-worker"))
        .context("no worker container in deploy/k8s")?;
    let grace = duration_of(
        worker
            .env
            .get("WARREN_SHUTDOWN_GRACE")
            .context("the worker container sets no WARREN_SHUTDOWN_GRACE")?,
        "WARREN_SHUTDOWN_GRACE",
    )?;
    let deployment = yaml_documents(&deploy().join("k8s/worker.yaml"))?
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .context("worker.yaml has no Deployment")?;
    let spec = &deployment["spec"]["template"]["spec"];
    let termination = Duration::from_secs(
        spec["terminationGracePeriodSeconds"]
            .as_u64()
            .context("terminationGracePeriodSeconds")?,
    );
    let pre_stop = strings(&spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]);
    ensure!(
        pre_stop.first().is_some_and(|c| c == "sleep"),
        "{pre_stop:?}"
    );
    let pause = Duration::from_secs(pre_stop[1].parse()?);
    ensure!(
        termination >= pause + grace + Duration::from_secs(5),
        "terminationGracePeriodSeconds {termination:?} must cover preStop {pause:?} + grace {grace:?} + a margin"
    );

    // Compose.
    for service in compose_services()? {
        if service.argv.first().is_some_and(|p| p == "warren-worker") {
            let grace = service
                .env
                .get("WARREN_SHUTDOWN_GRACE")
                .map_or(Ok(Duration::from_secs(30)), |g| duration_of(g, "grace"))?;
            let compose = yaml_documents(&deploy().join("compose.yaml"))?;
            let name = service.origin.rsplit(' ').next().unwrap_or_default();
            let stop = compose[0]["services"][name]["stop_grace_period"]
                .as_str()
                .with_context(|| format!("{}: no stop_grace_period", service.origin))?;
            ensure!(
                duration_of(stop, "stop_grace_period")? > grace,
                "{}: stop_grace_period {stop} must exceed the grace {grace:?}",
                service.origin
            );
        }
    }

    // systemd.
    let dir = deploy().join("systemd");
    let (settings, _) = unit_settings(&read(&dir.join("warren-worker@.service"))?);
    let stop = duration_of(
        settings.get("TimeoutStopSec").context("TimeoutStopSec")?,
        "TimeoutStopSec",
    )?;
    let grace = duration_of(
        env_file(&dir.join("worker.env"))?
            .get("WARREN_SHUTDOWN_GRACE")
            .context("worker.env sets no WARREN_SHUTDOWN_GRACE")?,
        "WARREN_SHUTDOWN_GRACE",
    )?;
    ensure!(
        stop > grace,
        "TimeoutStopSec {stop:?} must exceed {grace:?}"
    );
    Ok(())
}

/// Every `warren_*` identifier in `text`, without histogram suffixes.
fn series_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("warren_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| SERIES.contains(b))
                .unwrap_or(name);
            found.insert(base.to_owned());
        }
        i = end;
    }
    found
}

#[test]
fn dashboards_alerts_and_autoscalers_use_only_exported_series() -> anyhow::Result<()> {
    // The queries: every `expr` of the dashboard, every rule of the alerts, the HPA's metric.
    let dashboard: Value = serde_json::from_str(&read(&deploy().join("grafana/warren.json"))?)?;
    let mut queries = Vec::new();
    collect_key(&dashboard, "expr", &mut queries);
    collect_key(&dashboard, "definition", &mut queries);
    ensure!(queries.len() >= 15, "{} dashboard queries", queries.len());
    let alerts = yaml_documents(&deploy().join("prometheus/alerts.yml"))?;
    let mut rules = Vec::new();
    collect_key(&alerts[0], "expr", &mut rules);
    ensure!(rules.len() >= 5, "{} alert rules", rules.len());
    let hpa = read(&deploy().join("k8s/hpa.yaml"))?;
    let mut used = BTreeSet::new();
    for text in queries.iter().chain(&rules).chain([&hpa]) {
        used.extend(series_in(text));
    }
    let unknown: Vec<&String> = used
        .iter()
        .filter(|s| !SERIES.contains(&s.as_str()))
        .collect();
    ensure!(
        unknown.is_empty(),
        "series the worker does not export: {unknown:?}"
    );
    // The dashboard shows every series.
    let shown: BTreeSet<String> = queries.iter().flat_map(|q| series_in(q)).collect();
    let missing: Vec<&&str> = SERIES.iter().filter(|s| !shown.contains(**s)).collect();
    ensure!(missing.is_empty(), "the dashboard never shows {missing:?}");

    // Both autoscalers watch a queue the workers consume.
    let queues = kubernetes_containers()?
        .into_iter()
        .find_map(|r| r.env.get("WARREN_QUEUES").cloned())
        .context("no worker sets WARREN_QUEUES")?;
    let keda = yaml_documents(&deploy().join("k8s/keda.yaml"))?;
    let scaled = keda
        .iter()
        .find(|d| d["kind"] == "ScaledObject")
        .context("no ScaledObject")?;
    let queue_name = scaled["spec"]["triggers"][0]["metadata"]["queueName"]
        .as_str()
        .context("the KEDA trigger names no queue")?;
    ensure!(
        queues
            .split(',')
            .any(|q| queue_name == format!("warren.q.{}", q.trim())),
        "KEDA watches {queue_name}, the workers consume {queues}"
    );
    let hpa = yaml_documents(&deploy().join("k8s/hpa.yaml"))?;
    let selector =
        &hpa[0]["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"]["queue"];
    ensure!(
        queues
            .split(',')
            .any(|q| selector.as_str() == Some(q.trim())),
        "the HPA watches queue {selector}, the workers consume {queues}"
    );
    Ok(())
}

fn collect_key(value: &Value, key: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key
                    && let Some(s) = v.as_str()
                {
                    out.push(s.to_owned());
                }
                collect_key(v, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_key(v, key, out)),
        _ => {}
    }
}

/// The SQL statements of a text, normalised: comments dropped, whitespace collapsed.
fn statements(sql: &str) -> Vec<String> {
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ")
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn the_worker_grants_are_the_documented_ones_everywhere() -> anyhow::Result<()> {
    let page = read(&repo().join("docs/operations.md"))?;
    let documented = page
        .split("```sql\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(sql, _)| sql))
        .find(|sql| sql.contains("GRANT") && sql.contains("TO warren_worker"))
        .context("docs/operations.md has no sql block granting to warren_worker")?;
    let documented = statements(documented);
    let file = statements(&read(&deploy().join("postgres/grants.sql"))?);
    ensure!(
        file == documented,
        "deploy/postgres/grants.sql {file:?} != docs {documented:?}"
    );
    let config = yaml_documents(&deploy().join("k8s/config.yaml"))?;
    let k8s = config
        .iter()
        .find(|d| d["metadata"]["name"] == "warren-db-grants")
        .and_then(|d| d["data"]["grants.sql"].as_str())
        .context("no warren-db-grants ConfigMap")?;
    ensure!(
        statements(k8s) == documented,
        "the k8s ConfigMap's grants differ: {k8s}"
    );
    Ok(())
}

#[test]
fn systemd_accepts_the_unit_file() -> anyhow::Result<()> {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    ensure!(
        analyze.as_ref().is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: install systemd (deploy/services.sh does, as root)"
    );
    // `verify` wants ExecStart's binary to exist: point the unit at the one just built.
    let unit = read(&deploy().join("systemd/warren-worker@.service"))?;
    let binary = bin_path("warren-worker")?;
    ensure!(
        unit.contains("ExecStart=/usr/local/bin/warren-worker\n"),
        "the unit runs /usr/local/bin/warren-worker, where the docs install it"
    );
    let dir = std::env::temp_dir().join(format!("warren-unit-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        std::fs::write(
            dir.join("warren-worker@.service"),
            unit.replace(
                "/usr/local/bin/warren-worker",
                &binary.display().to_string(),
            ),
        )?;
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.join("warren-worker@3.service"))
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // It exits 0 on unknown keys too, with a warning naming the file: none is allowed.
        let about_the_unit: Vec<&str> = said
            .lines()
            .filter(|l| l.contains("warren-worker@"))
            .collect();
        if !output.status.success() || !about_the_unit.is_empty() {
            bail!("systemd-analyze verify ({}): {said}", output.status);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[test]
fn definitions_name_the_documented_accounts() -> anyhow::Result<()> {
    let definitions: Value =
        serde_json::from_str(&read(&deploy().join("rabbitmq/definitions.json"))?)?;
    let users: BTreeSet<&str> = definitions["users"]
        .as_array()
        .context("users")?
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    for user in [
        "warren-producer",
        "warren-worker",
        "warren-admin",
        "warren-monitor",
    ] {
        ensure!(users.contains(user), "no account {user}");
    }
    for permission in definitions["permissions"]
        .as_array()
        .context("permissions")?
    {
        ensure!(
            permission["vhost"] == "warren",
            "a permission outside the warren vhost: {permission}"
        );
    }
    ensure!(
        definitions["topic_permissions"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "no topic permissions: Warren uses no topic exchange"
    );
    Ok(())
}
