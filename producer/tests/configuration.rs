//! Configuration the service refuses at start: a tokens file and a contracts directory that
//! could only be read by guessing. Each is checked as the library parses it, and as the
//! binary answers it: exit status 2 with the error on stderr, before any connection.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;
use warren_producer::auth::{Tokens, new_token};
use warren_producer::contracts::Contracts;

const BIN: &str = env!("CARGO_BIN_EXE_warren-producer");

/// A directory of its own for one test, removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("warren-producer-{test}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the binary on `tokens` and `schemas` and returns its exit status and stderr. The
/// broker URL leads nowhere: a configuration that is refused never gets as far as connecting,
/// and one that is wrongly accepted fails to connect instead (exit 1), or is stopped here.
async fn start(tokens: &Path, schemas: &Path) -> anyhow::Result<(Option<i32>, String)> {
    let child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"])
        .arg("--tokens-file")
        .arg(tokens)
        .arg("--schemas-dir")
        .arg(schemas)
        .env_remove("WARREN_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("the producer did not exit within 30 s: its configuration was accepted")??;
    Ok((out.status.code(), String::from_utf8(out.stderr)?))
}

fn repository_schemas() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/payloads")
}

#[tokio::test]
async fn a_token_on_two_lines_is_refused_naming_both() -> anyhow::Result<()> {
    let (_, billing) =
        new_token("billing", &["billing.*".to_owned()]).map_err(anyhow::Error::msg)?;
    let digest = billing
        .split_whitespace()
        .nth(1)
        .context("a digest on the minted line")?;
    // The same token under another name, with every task: if the file were read, its last
    // line would widen the restricted token and name its caller wrongly in the logs.
    for again in [digest.to_owned(), digest.to_ascii_uppercase()] {
        let text = format!("# callers\n{billing}\n\nreports {again}\n");
        let e = Tokens::parse(&text, "tokens").expect_err("the same digest on two lines");
        assert!(
            e.contains("tokens line 4") && e.contains("line 2") && e.contains("`billing`"),
            "{e}"
        );
    }

    let scratch = Scratch::new("duplicate-digest")?;
    let tokens = scratch.write(
        "tokens",
        &format!("{billing}\nreports {}\n", digest.to_ascii_uppercase()),
    )?;
    let (status, stderr) = start(&tokens, &repository_schemas()).await?;
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains("line 2") && stderr.contains("line 1") && stderr.contains("digest"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_contract_whose_file_name_is_no_task_name_is_refused() -> anyhow::Result<()> {
    for (file, reason) in [
        (
            "bad name.schema.json",
            "only ASCII letters, digits and . _ - : are allowed",
        ),
        ("1st.schema.json", "it must start with an ASCII letter"),
        (".schema.json", "it is empty"),
    ] {
        let scratch = Scratch::new("bad-contract-name")?;
        scratch.write("warren.echo.schema.json", "true")?;
        scratch.write(file, "true")?;
        let e = Contracts::load(&scratch.0, false).expect_err("a file named for no task");
        assert!(
            e.contains(file) && e.contains("not a task name") && e.contains(reason),
            "{e}"
        );

        let (_, line) = new_token("ops", &[]).map_err(anyhow::Error::msg)?;
        let tokens = scratch.write("tokens", &line)?;
        let (status, stderr) = start(&tokens, &scratch.0).await?;
        assert_eq!(status, Some(2), "{stderr}");
        assert!(stderr.contains(file) && stderr.contains(reason), "{stderr}");
    }
    // Schemas given in code are held to the same names.
    let e = Contracts::from_schemas([("bad name".to_owned(), serde_json::json!(true))], false)
        .expect_err("a schema for no task");
    assert!(e.contains("`bad name` is not a task name"), "{e}");
    Ok(())
}
