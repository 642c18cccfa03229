//! Command-line access to a running node's HTTP API: its URL and credentials (shared by
//! `pulseboard load` and `pulseboard cluster`).

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// Base URL of the node.
    #[arg(long, env = "PULSEBOARD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key or session token; without one, the command logs in as `--user` with
    /// `--password`.
    #[arg(long, env = "PULSEBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, default_value = "admin")]
    pub user: String,
    #[arg(long, env = "PULSEBOARD_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

impl Remote {
    /// `path` on the node.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    /// The token to send: `--token`, or a session from logging in as `--user`.
    pub async fn token(&self, client: &reqwest::Client) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let Some(password) = &self.password else {
            bail!(
                "give --token (or PULSEBOARD_TOKEN), or --password (or PULSEBOARD_ADMIN_PASSWORD) to log in as {}",
                self.user
            );
        };
        let url = self.endpoint("/api/v1/auth/login");
        let resp = client
            .post(&url)
            .json(&serde_json::json!({"username": self.user, "password": password}))
            .send()
            .await
            .with_context(|| format!("log in at {url}"))?;
        if !resp.status().is_success() {
            bail!(
                "log in as {} failed: {}",
                self.user,
                resp.text().await.unwrap_or_default()
            );
        }
        let body: serde_json::Value = resp.json().await.context("login answer")?;
        body["token"]
            .as_str()
            .map(str::to_owned)
            .context("login answer has no token")
    }
}
