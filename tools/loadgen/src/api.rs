//! The public API as the load generator uses it: accounts over HTTP, sockets
//! over Socket.IO, and a guard that refuses any server that is not on loopback.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use parley_common::testing_socketio::{ConnectOptions, SocketIoClient};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

/// Password of every account the load generator creates (it satisfies the
/// contract's password rule).
pub const PASSWORD: &str = "Passw0rd!";

/// Why a base URL is refused.
pub fn check_loopback(base_url: &str) -> Result<Url, String> {
    let url = Url::parse(base_url).map_err(|e| format!("invalid --base-url {base_url:?}: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "--base-url must be http:// (plain HTTP on loopback), not {}://",
            url.scheme()
        ));
    }
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !loopback {
        return Err(format!(
            "--base-url {base_url} is not a loopback address: the load generator only \
             targets 127.0.0.0/8, ::1 or localhost"
        ));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(format!(
            "--base-url must be the server's root (e.g. http://127.0.0.1:8080), not {base_url}"
        ));
    }
    Ok(url)
}

/// Source addresses from a list like `127.0.0.2-127.0.0.9,127.0.0.20`, all of
/// them loopback IPv4.
pub fn parse_source_addrs(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut addrs = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let parse = |text: &str| -> Result<std::net::Ipv4Addr, String> {
            let ip: std::net::Ipv4Addr = text
                .trim()
                .parse()
                .map_err(|e| format!("invalid source address {text:?}: {e}"))?;
            if !ip.is_loopback() {
                return Err(format!("source address {ip} is not in 127.0.0.0/8"));
            }
            Ok(ip)
        };
        let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
        if last < first || last - first > 65_535 {
            return Err(format!("invalid source address range {part:?}"));
        }
        addrs.extend((first..=last).map(|ip| IpAddr::V4(ip.into())));
    }
    if addrs.is_empty() {
        return Err("no source address given".to_owned());
    }
    Ok(addrs)
}

/// An account the load generator registered.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub token: String,
}

/// HTTP access to one server.
#[derive(Clone)]
pub struct Api {
    base: String,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish()
    }
}

impl Api {
    /// A client for `base` (already checked by [`check_loopback`]) that keeps up
    /// to `connections` idle connections.
    pub fn new(base: &Url, connections: usize) -> Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.as_str().trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Registers `username` (email `<username>@bench.example.com`), retrying a
    /// few times on 503 (the server's password-hashing queue is full).
    pub async fn register(&self, username: &str) -> Result<Account> {
        let email = format!("{username}@bench.example.com");
        let body = json!({"username": username, "email": email, "password": PASSWORD});
        for attempt in 0..20u32 {
            let response = self
                .http
                .post(self.url("/user/register"))
                .json(&body)
                .send()
                .await
                .with_context(|| format!("POST /user/register for {username}"))?;
            let status = response.status();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                continue;
            }
            if status != StatusCode::OK {
                let text = response.text().await.unwrap_or_default();
                bail!(
                    "POST /user/register for {username}: HTTP {status}: {text}{}",
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        " (raise the server's auth rate limit for benchmarks)"
                    } else {
                        ""
                    }
                );
            }
            let token = jwt_cookie(&response)
                .ok_or_else(|| anyhow!("register {username}: no jwt cookie in the response"))?;
            let value: Value = response.json().await.context("register response body")?;
            let id = value["data"]["id"]
                .as_str()
                .ok_or_else(|| anyhow!("register {username}: no data.id in {value}"))?
                .to_owned();
            return Ok(Account { id, email, token });
        }
        bail!("POST /user/register for {username}: the server stayed busy (503)")
    }

    /// Registers `count` users named `<prefix><i>`, `concurrency` at a time.
    pub async fn register_many(
        &self,
        prefix: &str,
        count: usize,
        concurrency: usize,
    ) -> Result<Vec<Account>> {
        let done = Arc::new(AtomicUsize::new(0));
        let started = std::time::Instant::now();
        let results: Vec<Result<Account>> = futures::stream::iter(0..count)
            .map(|i| {
                let done = done.clone();
                async move {
                    let account = self.register(&format!("{prefix}{i}")).await;
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(50) || n == count {
                        eprintln!(
                            "  registered {n}/{count} users ({:.1} s)",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    account
                }
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Opens an authenticated Socket.IO connection (token in the `auth` payload),
    /// from `local_addr` if given.
    pub async fn socket(
        &self,
        account: &Account,
        local_addr: Option<IpAddr>,
    ) -> Result<SocketIoClient> {
        let mut options = ConnectOptions::new(self.base.clone(), "/chat/socket.io/");
        options.auth = Some(json!({"token": account.token}));
        options.local_addr = local_addr;
        SocketIoClient::connect(options)
            .await
            .map_err(|e| anyhow!("socket for {}: {e}", account.email))
    }
}

/// The `jwt` value of a response's Set-Cookie header.
fn jwt_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|cookie| {
            cookie
                .strip_prefix("jwt=")
                .and_then(|rest| rest.split(';').next())
                .filter(|token| !token.is_empty())
                .map(str::to_owned)
        })
}

/// A short random id that keeps the names of one run apart from earlier runs
/// against the same server.
pub fn run_id() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..6)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_servers_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.5.6.7:1",
            "http://localhost:3000",
            "http://[::1]:8080",
        ] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://192.168.1.1",
            "http://example.com",
            "http://8.8.8.8",
            "https://127.0.0.1:8443",
            "http://[::2]:80",
            "http://127.0.0.1:8080/api",
            "http://0.0.0.0:8080",
            "not a url",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn source_address_lists() {
        let addrs = parse_source_addrs("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        let text: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.1"]);
        assert_eq!(parse_source_addrs("127.0.0.1").unwrap().len(), 1);
        for bad in [
            "",
            "10.0.0.1",
            "127.0.0.5-127.0.0.2",
            "127.0.0.1-128.0.0.1",
            "x",
        ] {
            assert!(parse_source_addrs(bad).is_err(), "{bad}");
        }
    }
}
