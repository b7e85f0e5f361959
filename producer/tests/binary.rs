//! The real `warren-producer` binary: minted token, served on a free port, jobs posted over
//! HTTP and run by a real worker, then a graceful stop on SIGTERM.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use warren_runtime::Worker;
use warren_testkit::{TestEnv, wait_until};
use warren_worker::tasks::register_builtins;

const BIN: &str = env!("CARGO_BIN_EXE_warren-producer");

/// One HTTP/1.1 request on a fresh connection; the status and the body as JSON.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("a status line")?;
    Ok((
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    ))
}

#[tokio::test]
async fn the_binary_serves_jobs_that_a_worker_runs_and_stops_gracefully() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let dir = std::env::temp_dir().join(format!("warren-producer-{}", env.name));
    std::fs::create_dir_all(&dir)?;

    // Mint a token with the binary itself.
    let minted = Command::new(BIN)
        .args(["token", "new", "e2e-caller"])
        .output()
        .await?;
    assert!(minted.status.success());
    let out = String::from_utf8(minted.stdout)?;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let token = lines[1].to_owned();
    let line = lines[3].to_owned();
    assert!(
        token.starts_with("wrn_") && line.starts_with("e2e-caller "),
        "{out}"
    );
    let tokens_file = dir.join("tokens");
    std::fs::write(&tokens_file, format!("# minted by the test\n{line}\n"))?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/payloads");
    let mut child = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--namespace", env.namespace()])
        .args(["--schemas-dir", schemas])
        .env("WARREN_AMQP_URL", &env.amqp_url)
        .env("WARREN_DATABASE_URL", &env.database_url)
        .env("WARREN_TOKENS_FILE", &tokens_file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().context("stderr")?;
    let sink = log.clone();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut log) = sink.lock() {
                log.push_str(&line);
                log.push('\n');
            }
        }
    });

    wait_until(
        Duration::from_secs(30),
        "the producer to be ready",
        || async {
            Ok(match http(port, "GET", "/readyz", None, None).await {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;
    let worker = env
        .start_worker(
            register_builtins(Worker::builder()),
            env.worker_config("w1"),
        )
        .await?;

    let (status, one) = http(
        port,
        "POST",
        "/v1/jobs",
        Some(&token),
        Some(&json!({"task": "warren.echo", "payload": {"n": 1}})),
    )
    .await?;
    assert_eq!(status, 202, "{one:#}");
    let (status, batch) = http(
        port,
        "POST",
        "/v1/jobs/batch",
        Some(&token),
        Some(&json!({"jobs": [
            {"task": "warren.sleep", "payload": {"ms": 5}},
            {"task": "warren.echo", "payload": "keyed", "idempotency_key": "e2e-1"}
        ]})),
    )
    .await?;
    assert_eq!(status, 200, "{batch:#}");
    assert_eq!(batch["accepted"], 2, "{batch:#}");
    let mut ids = vec![one["id"].as_str().unwrap_or_default().to_owned()];
    for r in batch["results"].as_array().into_iter().flatten() {
        ids.push(r["id"].as_str().unwrap_or_default().to_owned());
    }
    for id in &ids {
        let path = format!("/v1/jobs/{id}");
        wait_until(Duration::from_secs(30), "each job to succeed", || async {
            let (status, record) = http(port, "GET", &path, Some(&token), None).await?;
            Ok(if status == 200 && record["state"] == "succeeded" {
                Ok(())
            } else {
                Err(format!("{status} {record}"))
            })
        })
        .await?;
    }
    let (_, slept) = http(
        port,
        "GET",
        &format!("/v1/jobs/{}", ids[1]),
        Some(&token),
        None,
    )
    .await?;
    assert_eq!(slept["result"], json!({"slept_ms": 5}));
    let (status, _) = http(
        port,
        "POST",
        "/v1/jobs",
        Some("wrn_wrong"),
        Some(&json!({})),
    )
    .await?;
    assert_eq!(status, 401);

    // SIGTERM: stop accepting, finish, close, exit 0.
    let pid = child.id().context("the producer's pid")?;
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    reader.await?;
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        !log.contains(&token),
        "the token never reaches the log:\n{log}"
    );
    assert!(
        log.contains("e2e-caller"),
        "the caller is named in the log:\n{log}"
    );
    assert!(log.contains("stopped"), "{log}");
    worker.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    env.cleanup().await
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_the_setting() -> anyhow::Result<()> {
    let out = Command::new(BIN)
        .env_remove("WARREN_TOKENS_FILE")
        .args(["--amqp-url", "amqp://127.0.0.1:5672"])
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("--tokens-file / WARREN_TOKENS_FILE"), "{err}");
    let out = Command::new(BIN)
        .args([
            "--amqp-url",
            "amqp://127.0.0.1:5672",
            "--tokens-file",
            "/nonexistent/tokens",
        ])
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)?.contains("/nonexistent/tokens"));
    let out = Command::new(BIN)
        .args(["token", "new", "bad name!"])
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

#[tokio::test]
async fn with_a_certificate_it_serves_https_only() -> anyhow::Result<()> {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let env = TestEnv::new(&["default"]).await?;
    let dir = std::env::temp_dir().join(format!("warren-producer-tls-{}", env.name));
    std::fs::create_dir_all(&dir)?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem())?;
    let (_, line) = warren_producer::auth::new_token("tls", &[]).map_err(anyhow::Error::msg)?;
    std::fs::write(dir.join("tokens"), line)?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--namespace", env.namespace()])
        .args([
            "--schemas-dir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/payloads"),
        ])
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .arg("--tokens-file")
        .arg(dir.join("tokens"))
        .env("WARREN_AMQP_URL", &env.amqp_url)
        .env_remove("WARREN_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log"))?)
        .kill_on_drop(true)
        .spawn()?;

    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let answer = wait_until(Duration::from_secs(30), "an HTTPS answer", || async {
        let attempt = async {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            tls.read_to_end(&mut answer).await?;
            anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        Ok(attempt
            .await
            .map_err(|e| format!("{e:#}; producer log:\n{log}")))
    })
    .await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Plain HTTP on the same port gets no HTTP answer.
    let plain = http(port, "GET", "/healthz", None, None).await;
    assert!(plain.is_err() || plain.is_ok_and(|(s, _)| s != 200));
    child.kill().await?;
    std::fs::remove_dir_all(&dir)?;
    env.cleanup().await
}
