//! Sends a few points to a local node over QUIC and prints what was acknowledged.
//!
//! ```sh
//! cargo run --release -- serve &          # a node with its data in ./pulseboard-data
//! # an API key with the ingest scope (or a session token from /api/v1/auth/login):
//! export PULSEBOARD_TOKEN=...
//! cargo run -p pulseboard-client --example send
//! ```

use pulseboard_client::{Batcher, Client, Config, DataPoint, Transport};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key =
        std::env::var("PULSEBOARD_TOKEN").map_err(|_| "set PULSEBOARD_TOKEN to an API key")?;
    let cert = std::fs::read_to_string("pulseboard-data/tls/cert.pem")?;
    let client = Client::new(Config::new(
        vec!["127.0.0.1:8081".into()],
        key,
        Transport::Quic {
            certificate_pem: cert,
        },
    ))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    // One batch, sent as is.
    let acked = client
        .send(&[DataPoint {
            metric: "clicks".into(),
            timestamp_ms: now,
            value: 1.0,
            dimensions: vec![("country".into(), "de".into())],
        }])
        .await?;
    println!("acknowledged {acked} point");
    // Single points, gathered into batches of 1 000.
    let mut batcher = Batcher::new(client, 1_000);
    for i in 0..2_500 {
        batcher
            .push(DataPoint {
                metric: "players_online".into(),
                timestamp_ms: now - i,
                value: (i % 100) as f64,
                dimensions: vec![("region".into(), ["eu", "us", "asia"][i as usize % 3].into())],
            })
            .await?;
    }
    batcher.flush().await?;
    println!("acknowledged 2500 more");
    Ok(())
}
