//! TLS to Postgres and RabbitMQ is verified, and never silently given up.
//!
//! Postgres: a URL without `sslmode` naming a remote host must use `verify-full`. The test
//! names the local server (which offers TLS with a self-signed "snakeoil" certificate) by a
//! host that the loopback rule does not recognise but that still reaches loopback: `127.1`,
//! the short form of 127.0.0.1 that the system resolver accepts. So the client treats it as a
//! remote host while no packet leaves 127.0.0.0/8. A fake server that declines TLS shows that
//! there is no fall-back to plaintext.
//!
//! RabbitMQ: `amqps://` against a node of the test's own whose certificate a test CA signed
//! for `localhost` only (`tests/fixtures/tls`): refused without the CA, refused with it under
//! another host name, accepted with it as `localhost`.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_broker::{Broker, BrokerConfig};
use warren_store::{Store, StoreConfig};
use warren_testkit::{DisposableRabbit, Proxy, RabbitOptions};

/// `127.1` resolves to 127.0.0.1, yet is not a name the loopback rule knows (see above).
const REMOTE_LOOKING_LOOPBACK: &str = "127.1";

fn remote_config(url: String) -> StoreConfig {
    let mut config = StoreConfig::new(url);
    config.acquire_timeout = Duration::from_secs(5);
    config
}

#[tokio::test]
async fn remote_postgres_without_sslmode_verifies_the_certificate() -> anyhow::Result<()> {
    let proxy = Proxy::start("127.0.0.1:5432").await?;
    let url = format!(
        "postgres://postgres@{REMOTE_LOOKING_LOOPBACK}:{}/postgres",
        proxy.port()
    );

    // The local server's certificate (Debian's "snakeoil") does not pass verify-full: it does
    // not name this address. sqlx's default (`prefer`) would have accepted it unchecked.
    let started = std::time::Instant::now();
    let err = Store::connect(&remote_config(url.clone()))
        .await
        .expect_err("an untrusted certificate must be refused");
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(
        shown.contains("TLS with Postgres") && shown.contains("verify-full"),
        "the error says what failed: {shown}"
    );
    assert!(shown.contains("certificate"), "and why: {shown}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused at once, not after the pool's timeout: {:?}",
        started.elapsed()
    );

    // An explicit sslmode is the operator's choice and is kept: plaintext when asked, and
    // TLS without verification when asked (rustls takes no `127.1` as a server name, so
    // that check names the address itself).
    let store = Store::connect(&remote_config(format!("{url}?sslmode=disable"))).await?;
    store.close().await;
    let direct = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port());
    let store = Store::connect(&remote_config(format!("{direct}?sslmode=require"))).await?;
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_remote_server_declining_tls_gets_no_plaintext() -> anyhow::Result<()> {
    // A server that answers the SSLRequest with 'N' (no TLS), then reports what it receives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        let mut received = Vec::new();
        while let Ok(Ok((mut socket, _))) =
            tokio::time::timeout(Duration::from_secs(2), listener.accept()).await
        {
            let mut request = [0u8; 8];
            if socket.read_exact(&mut request).await.is_err() {
                continue;
            }
            // SSLRequest: length 8, code 80877103.
            if request != [0, 0, 0, 8, 4, 210, 22, 47] {
                received.push(format!("plaintext first message {request:?}"));
                continue;
            }
            let _ = socket.write_all(b"N").await;
            let mut rest = [0u8; 64];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(1), socket.read(&mut rest)).await
                && n > 0
            {
                received.push(format!("{n} plaintext bytes after the refusal"));
            }
        }
        received
    });

    let url = format!("postgres://warren_user:s3cret@{REMOTE_LOOKING_LOOPBACK}:{port}/warren");
    let err = Store::connect(&remote_config(url))
        .await
        .expect_err("a server without TLS must be refused");
    let received = server.await?;
    assert!(
        received.is_empty(),
        "the client fell back to plaintext: {received:?}"
    );
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(
        shown.contains("TLS with Postgres") && shown.contains("does not support TLS"),
        "the error says what failed: {shown}"
    );
    Ok(())
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

#[tokio::test]
async fn amqps_verifies_the_broker_certificate_and_its_name() -> anyhow::Result<()> {
    let node = DisposableRabbit::start_with(RabbitOptions {
        tls: Some((fixture("server.pem"), fixture("server.key"))),
        ..RabbitOptions::default()
    })
    .await?;
    let config = |host: &str, ca: bool| {
        let mut config = BrokerConfig::new(node.amqps_url(host).expect("started with TLS"));
        config.connect_timeout = Duration::from_secs(5);
        config.ca_file = ca.then(|| fixture("ca.pem"));
        config
    };

    // Signed by a CA the system does not trust.
    let err = Broker::connect(config("localhost", false))
        .await
        .expect_err("a certificate from an unknown CA must be refused");
    assert!(
        matches!(err, warren_broker::Error::Tls { .. }),
        "{:#}",
        anyhow::Error::from(err)
    );

    // Trusted CA, but the certificate names `localhost`, not 127.0.0.1.
    let err = Broker::connect(config("127.0.0.1", true))
        .await
        .expect_err("a certificate for another name must be refused");
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(shown.contains("TLS with RabbitMQ"), "{shown}");

    // Trusted CA and the right name: a working connection.
    let broker = Broker::connect(config("localhost", true)).await?;
    let queue = warren_core::QueueName::new("tls")?;
    broker.declare(std::slice::from_ref(&queue)).await?;
    assert!(broker.queue_depth(&queue).await?.is_some());
    broker.close().await;

    // A CA file with a plain amqp:// URL is a mistake, said so.
    let mut plain = BrokerConfig::new(node.amqp_url());
    plain.ca_file = Some(fixture("ca.pem"));
    let err = Broker::connect(plain).await.expect_err("refused");
    assert!(err.to_string().contains("amqps://"), "{err}");
    Ok(())
}
