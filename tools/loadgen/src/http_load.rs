//! The HTTP scenarios: authenticated reads (3), the login flood (4) and
//! concurrent prekey bundle fetches (5).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use base64::Engine as _;
use futures::StreamExt;
use rand::Rng;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::api::{Account, Api, PASSWORD};
use crate::stats::{Latency, LatencySummary, SeenCounter};

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Latency and status codes of one kind of request.
#[derive(Debug, Default, Clone)]
pub struct RequestStats {
    pub latency: Latency,
    pub statuses: BTreeMap<String, u64>,
}

impl RequestStats {
    fn record(&mut self, status: &str, latency: Duration) {
        *self.statuses.entry(status.to_owned()).or_default() += 1;
        self.latency.record(latency);
    }

    pub fn ok(&self) -> u64 {
        self.statuses.get("200").copied().unwrap_or(0)
    }

    pub fn errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| *status != "200")
            .map(|(_, n)| n)
            .sum()
    }

    fn merge(&mut self, other: &RequestStats) {
        self.latency.merge(&other.latency);
        for (status, n) in &other.statuses {
            *self.statuses.entry(status.clone()).or_default() += n;
        }
    }

    pub fn summary(&self, secs: f64) -> RequestSummary {
        RequestSummary {
            requests: self.latency.count(),
            ok_per_sec: if secs > 0.0 {
                self.ok() as f64 / secs
            } else {
                0.0
            },
            errors: self.errors(),
            statuses: self.statuses.clone(),
            latency: self.latency.summary(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestSummary {
    pub requests: u64,
    pub ok_per_sec: f64,
    pub errors: u64,
    pub statuses: BTreeMap<String, u64>,
    pub latency: LatencySummary,
}

/// Sends a request and reads the whole body; the status as text ("200",
/// "503", or "error" for a transport failure).
async fn fetch(request: reqwest::RequestBuilder) -> (String, Option<bytes::Bytes>) {
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            match response.bytes().await {
                Ok(body) => (status.as_str().to_owned(), Some(body)),
                Err(_) => ("error".to_owned(), None),
            }
        }
        Err(_) => ("error".to_owned(), None),
    }
}

// ---------------------------------------------------------------------------
// Scenario 3: authenticated reads

/// Users with conversations and history to read.
#[derive(Debug, Clone)]
pub struct ReadSet {
    pub users: Vec<Account>,
    /// Each user's conversation partners (indexes into `users`).
    pub peers: usize,
}

impl ReadSet {
    /// Registers `users` users; each sends `history` messages over REST to
    /// each of the `peers` users after it (wrapping), so every user has up to
    /// `2 * peers` conversations. Not timed.
    pub async fn seed(
        api: &Api,
        prefix: &str,
        users: usize,
        peers: usize,
        history: usize,
    ) -> Result<Self> {
        let users = api.register_many(prefix, users, 8).await?;
        let peers = peers.min(users.len().saturating_sub(1));
        let mut sends = Vec::new();
        for i in 0..users.len() {
            for k in 1..=peers {
                let j = (i + k) % users.len();
                for n in 0..history {
                    sends.push((i, j, n));
                }
            }
        }
        let total = sends.len();
        eprintln!("  seeding {total} messages over REST");
        let users_ref = &users;
        let results: Vec<Result<()>> = futures::stream::iter(sends)
            .map(|(i, j, n)| async move {
                let envelope =
                    crate::stats::encode_envelope(u32::MAX, i as u32, (j * 100_000 + n) as u64, 160);
                let response = api
                    .http
                    .post(api.url("/chat/send"))
                    .bearer_auth(&users_ref[i].token)
                    .json(&json!({"receiverId": users_ref[j].id, "message": envelope}))
                    .send()
                    .await?;
                if response.status() != StatusCode::OK {
                    return Err(anyhow!(
                        "seeding: POST /chat/send answered {} (raise the server's chat rate limit for benchmarks)",
                        response.status()
                    ));
                }
                Ok(())
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect::<Result<()>>()?;
        Ok(Self { users, peers })
    }

    /// A random read: the conversation list or one conversation's latest 50
    /// messages, as the web client loads them.
    fn random_read(&self, api: &Api) -> (&'static str, reqwest::RequestBuilder) {
        let mut rng = rand::thread_rng();
        let i = rng.gen_range(0..self.users.len());
        let user = &self.users[i];
        if self.peers == 0 || rng.gen_bool(0.5) {
            (
                "conversations",
                api.http
                    .get(api.url("/chat/conversations"))
                    .bearer_auth(&user.token),
            )
        } else {
            let k = rng.gen_range(1..=self.peers);
            let peer = &self.users[(i + k) % self.users.len()];
            (
                "history",
                api.http
                    .get(api.url(&format!("/chat/get/{}?limit=50&offset=0", peer.id)))
                    .bearer_auth(&user.token),
            )
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadsResult {
    pub concurrency: usize,
    pub measured_secs: f64,
    pub all: RequestSummary,
    pub conversations: RequestSummary,
    pub history: RequestSummary,
}

/// `concurrency` closed-loop workers issue random reads for `duration`; the
/// first `warmup` is not counted.
pub async fn reads(
    api: &Api,
    set: &ReadSet,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
) -> Result<ReadsResult> {
    let start = Instant::now();
    let window_start = start + warmup;
    let end = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let api = api.clone();
            let set = set.clone();
            tokio::spawn(async move {
                let mut conversations = RequestStats::default();
                let mut history = RequestStats::default();
                while Instant::now() < end {
                    let (kind, request) = set.random_read(&api);
                    let sent = Instant::now();
                    let (status, _) = fetch(request).await;
                    let done = Instant::now();
                    if sent >= window_start && done <= end {
                        let stats = if kind == "history" {
                            &mut history
                        } else {
                            &mut conversations
                        };
                        stats.record(&status, done - sent);
                    }
                }
                (conversations, history)
            })
        })
        .collect();
    let mut conversations = RequestStats::default();
    let mut history = RequestStats::default();
    for worker in workers {
        let (c, h) = worker.await?;
        conversations.merge(&c);
        history.merge(&h);
    }
    let mut all = conversations.clone();
    all.merge(&history);
    let secs = duration.saturating_sub(warmup).as_secs_f64();
    Ok(ReadsResult {
        concurrency,
        measured_secs: secs,
        all: all.summary(secs),
        conversations: conversations.summary(secs),
        history: history.summary(secs),
    })
}

// ---------------------------------------------------------------------------
// Scenario 4: login flood

#[derive(Debug, Clone, Serialize)]
pub struct FloodResult {
    pub phase_secs: f64,
    pub background_rate: f64,
    pub flood_concurrency: usize,
    /// Other requests (open loop) with no flood.
    pub background_baseline: RequestSummary,
    /// The same requests while the flood runs.
    pub background_during_flood: RequestSummary,
    /// Background requests not sent because too many were in flight.
    pub background_skipped: u64,
    pub logins: RequestSummary,
    /// p99 during the flood / p99 without it.
    pub p99_ratio: f64,
}

/// Open-loop background reads at `rate` per second for `duration`; latency is
/// measured from each request's scheduled time.
async fn background(
    api: &Api,
    set: &ReadSet,
    rate: f64,
    duration: Duration,
) -> (RequestStats, u64) {
    const MAX_IN_FLIGHT: usize = 512;
    let stats = Arc::new(Mutex::new(RequestStats::default()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut skipped = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (_, request) = if i % 3 == 2 {
            let user = &set.users[i as usize % set.users.len()];
            (
                "me",
                api.http.get(api.url("/user/me")).bearer_auth(&user.token),
            )
        } else {
            set.random_read(api)
        };
        let stats = stats.clone();
        tasks.spawn(async move {
            let (status, _) = fetch(request).await;
            lock(&stats).record(&status, due.elapsed());
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let stats = lock(&stats).clone();
    (stats, skipped)
}

/// Baseline: background reads alone; then the same background while
/// `concurrency` workers log in as fast as the server lets them.
pub async fn login_flood(
    api: &Api,
    set: &ReadSet,
    login_users: &[Account],
    background_rate: f64,
    concurrency: usize,
    phase: Duration,
) -> Result<FloodResult> {
    eprintln!("baseline: {background_rate} background req/s for {phase:?}");
    let (baseline, skipped_base) = background(api, set, background_rate, phase).await;
    eprintln!("flood: {concurrency} login workers + the same background for {phase:?}");
    let end = Instant::now() + phase;
    let floods: Vec<_> = (0..concurrency)
        .map(|w| {
            let api = api.clone();
            let users = login_users.to_vec();
            tokio::spawn(async move {
                let mut stats = RequestStats::default();
                let mut n = w;
                while Instant::now() < end {
                    let user = &users[n % users.len()];
                    n += concurrency;
                    let sent = Instant::now();
                    let (status, _) = fetch(
                        api.http
                            .post(api.url("/user/login"))
                            .json(&json!({"email": user.email, "password": PASSWORD})),
                    )
                    .await;
                    stats.record(&status, sent.elapsed());
                    if status != "200" {
                        // A refusal (503 queue full, 429) comes back at once:
                        // don't spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                stats
            })
        })
        .collect();
    let (during, skipped_flood) = background(api, set, background_rate, phase).await;
    let mut logins = RequestStats::default();
    for flood in floods {
        logins.merge(&flood.await?);
    }
    let secs = phase.as_secs_f64();
    let base = baseline.summary(secs);
    let flood = during.summary(secs);
    let ratio = if base.latency.p99_ms > 0.0 {
        flood.latency.p99_ms / base.latency.p99_ms
    } else {
        f64::NAN
    };
    Ok(FloodResult {
        phase_secs: secs,
        background_rate,
        flood_concurrency: concurrency,
        background_baseline: base,
        background_during_flood: flood,
        background_skipped: skipped_base + skipped_flood,
        logins: logins.summary(secs),
        p99_ratio: ratio,
    })
}

// ---------------------------------------------------------------------------
// Scenario 5: prekey bundle fetches

/// A real libsignal bundle (its signed prekey verifies), from the user
/// service's test vectors.
const FIXTURE: &str = include_str!("../../../services/user/tests/fixtures/libsignal_bundles.json");

/// A publishable bundle with `prekeys` one-time prekeys (ids 1..=prekeys,
/// random Curve25519-shaped public keys).
pub fn bundle(prekeys: usize) -> Result<Value> {
    let fixture: Value = serde_json::from_str(FIXTURE).context("bundle fixture")?;
    let real = &fixture["bundles"][0];
    let mut rng = rand::thread_rng();
    let keys: Vec<Value> = (1..=prekeys)
        .map(|id| {
            let mut key = [0u8; 33];
            rng.fill(&mut key[1..]);
            key[0] = 5;
            json!({"id": id, "publicKey": base64::engine::general_purpose::STANDARD.encode(key)})
        })
        .collect();
    Ok(json!({
        "identityKey": real["identityKey"],
        "registrationId": real["registrationId"],
        "signedPreKey": real["signedPreKey"],
        "preKeys": keys,
    }))
}

#[derive(Debug, Clone, Serialize)]
pub struct BundlesResult {
    pub owners: usize,
    pub prekeys_per_owner: usize,
    pub fetchers: usize,
    pub elapsed_secs: f64,
    pub fetches: RequestSummary,
    /// Successful fetches per second (with or without a one-time prekey).
    pub bundles_per_sec: f64,
    pub published_prekeys: u64,
    /// One-time prekeys handed out (all sightings).
    pub handed_out: u64,
    pub distinct_handed_out: u64,
    /// Prekeys handed out more than once (must be 0).
    pub duplicates: u64,
    /// Answers with an empty pool.
    pub empty_pool_answers: u64,
    /// Every published prekey was handed out exactly once.
    pub exactly_once: bool,
}

/// Registers `owners` users who each publish `prekeys` one-time prekeys (not
/// timed); then `fetchers` workers fetch bundles of random owners until every
/// pool is empty (or `limit` passes), and every handed-out key is checked for
/// duplicates.
pub async fn bundles(
    api: &Api,
    prefix: &str,
    owners: usize,
    prekeys: usize,
    fetchers: usize,
    limit: Duration,
) -> Result<BundlesResult> {
    let accounts = api.register_many(prefix, owners, 8).await?;
    eprintln!("  publishing {owners} bundles of {prekeys} one-time prekeys");
    for account in &accounts {
        let response = api
            .http
            .post(api.url("/user/prekeys"))
            .bearer_auth(&account.token)
            .json(&json!({"userId": account.id, "deviceId": "loadgen", "bundle": bundle(prekeys)?}))
            .send()
            .await?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(anyhow!(
                "POST /user/prekeys answered {status}: {text} (raise the server's prekey publish rate limit for benchmarks)"
            ));
        }
    }
    let open: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(accounts.iter().map(|a| a.id.clone()).collect()));
    let seen: Arc<Mutex<SeenCounter<(String, String)>>> = Arc::default();
    let started = Instant::now();
    let end = started + limit;
    let workers: Vec<_> = (0..fetchers)
        .map(|_| {
            let (api, open, seen) = (api.clone(), open.clone(), seen.clone());
            tokio::spawn(async move {
                let mut stats = RequestStats::default();
                let mut handed_out = 0u64;
                let mut empty = 0u64;
                while Instant::now() < end {
                    let owner = {
                        let open = lock(&open);
                        if open.is_empty() {
                            break;
                        }
                        open[rand::thread_rng().gen_range(0..open.len())].clone()
                    };
                    let sent = Instant::now();
                    let (status, body) =
                        fetch(api.http.get(api.url(&format!("/user/prekeys/{owner}")))).await;
                    stats.record(&status, sent.elapsed());
                    let Some(body) = body.filter(|_| status == "200") else {
                        continue;
                    };
                    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let keys = value["data"]["bundle"]["preKeys"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if keys.is_empty() {
                        empty += 1;
                        lock(&open).retain(|o| *o != owner);
                    }
                    for key in keys {
                        handed_out += 1;
                        lock(&seen).record((owner.clone(), key.to_string()));
                    }
                }
                (stats, handed_out, empty)
            })
        })
        .collect();
    let mut stats = RequestStats::default();
    let mut handed_out = 0;
    let mut empty = 0;
    for worker in workers {
        let (s, h, e) = worker.await?;
        stats.merge(&s);
        handed_out += h;
        empty += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let seen = lock(&seen);
    let published = (owners * prekeys) as u64;
    Ok(BundlesResult {
        owners,
        prekeys_per_owner: prekeys,
        fetchers,
        elapsed_secs: elapsed,
        bundles_per_sec: stats.ok() as f64 / elapsed,
        fetches: stats.summary(elapsed),
        published_prekeys: published,
        handed_out,
        distinct_handed_out: seen.distinct(),
        duplicates: seen.duplicates(),
        empty_pool_answers: empty,
        exactly_once: seen.duplicates() == 0 && seen.distinct() == published,
    })
}
