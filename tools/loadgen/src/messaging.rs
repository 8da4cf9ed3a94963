//! Scenario 1 (and the sweep): N sender → receiver pairs over Socket.IO, an
//! open-loop offered rate, end-to-end latency from the scheduled send to
//! `receiveMessage`, and exact loss/duplicate accounting per message.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Result, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parley_common::testing_socketio::SocketIoClient;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Account, Api};
use crate::stats::{
    Latency, LatencySummary, Ledger, Tally, encode_envelope, parse_envelope, scheduled_offset,
};

/// How long a send waits for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// One step of open-loop load.
#[derive(Debug, Clone, Copy)]
pub struct StepPlan {
    /// Offered messages per second, over all pairs.
    pub rate: f64,
    /// Sending time, including the warm-up.
    pub duration: Duration,
    /// The first part of the sending time, excluded from latency and throughput.
    pub warmup: Duration,
    /// Length of the envelope's `body`.
    pub body_len: usize,
    /// After the last send, how long to wait for outstanding deliveries.
    pub grace: Duration,
}

/// What one step measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub offered_per_sec: f64,
    /// Messages actually handed to the connections per second (whole run).
    pub sent_per_sec: f64,
    /// Messages received per second during the measured window.
    pub delivered_per_sec: f64,
    pub measured_secs: f64,
    pub warmup_secs: f64,
    /// Scheduled send → `receiveMessage`, messages scheduled in the measured window.
    pub latency: LatencySummary,
    /// Actual send → acknowledgement (stored), whole run.
    pub ack_latency: LatencySummary,
    pub tally: Tally,
    /// Refused, failed or unacknowledged sends.
    pub errors: u64,
    /// How far behind its schedule the generator sent (at most).
    pub max_send_lag_ms: f64,
    /// Time from the last scheduled send until every stored message arrived
    /// (or the grace period ran out).
    pub settle_secs: f64,
    /// Receivers whose connection closed during the step.
    pub closed_connections: u64,
    pub loadavg_after: [f64; 3],
}

struct Pair {
    sender_id: String,
    receiver_id: String,
    sender: Arc<SocketIoClient>,
    receiver: Option<SocketIoClient>,
}

/// Connected pairs, reusable across steps.
pub struct Streams {
    pairs: Vec<Pair>,
    next_step: u32,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("pairs", &self.pairs.len())
            .finish()
    }
}

/// Messages of stream `pair` when `total` messages go round-robin over `pairs`.
pub fn messages_of_stream(pair: u32, pairs: u32, total: u64) -> u64 {
    let (pair, pairs) = (u64::from(pair), u64::from(pairs));
    if pair >= total {
        0
    } else {
        (total - pair).div_ceil(pairs)
    }
}

impl Streams {
    /// Registers `2 * pairs` users (not timed) and connects one socket each.
    pub async fn setup(api: &Api, prefix: &str, pairs: u32) -> Result<Self> {
        let senders = api
            .register_many(&format!("{prefix}s"), pairs as usize, 8)
            .await?;
        let receivers = api
            .register_many(&format!("{prefix}r"), pairs as usize, 8)
            .await?;
        Self::connect(api, api, &senders, &receivers).await
    }

    /// One socket per account: senders' through `sender_api`, receivers'
    /// through `receiver_api` (another replica of the cluster, or the same).
    pub async fn connect(
        sender_api: &Api,
        receiver_api: &Api,
        senders: &[Account],
        receivers: &[Account],
    ) -> Result<Self> {
        let connect_all = |api: &Api, accounts: &[Account]| {
            let api = api.clone();
            futures::stream::iter(accounts.to_vec())
                .map(move |account| {
                    let api = api.clone();
                    async move { api.socket(&account, None).await }
                })
                .buffered(64)
                .collect::<Vec<_>>()
        };
        let sender_sockets = connect_all(sender_api, senders).await;
        let receiver_sockets = connect_all(receiver_api, receivers).await;
        let mut pairs = Vec::with_capacity(senders.len());
        for (((s, r), ss), rs) in senders
            .iter()
            .zip(receivers)
            .zip(sender_sockets)
            .zip(receiver_sockets)
        {
            pairs.push(Pair {
                sender_id: s.id.clone(),
                receiver_id: r.id.clone(),
                sender: Arc::new(ss?),
                receiver: Some(rs?),
            });
        }
        eprintln!("  connected {} pairs", pairs.len());
        Ok(Self {
            pairs,
            next_step: 0,
        })
    }

    /// Runs one open-loop step at `plan.rate`.
    pub async fn run_step(&mut self, plan: StepPlan) -> Result<StepResult> {
        let step = self.next_step;
        self.next_step += 1;
        let pairs = u32::try_from(self.pairs.len())?;
        if pairs == 0 {
            bail!("no pairs");
        }
        let total = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
        let t0 = Instant::now() + Duration::from_millis(300);
        let window_start = t0 + plan.warmup;
        let window_end = t0 + plan.duration;
        let stop = CancellationToken::new();
        let ledgers: Vec<Arc<Mutex<Ledger>>> = (0..pairs)
            .map(|_| Arc::new(Mutex::new(Ledger::new())))
            .collect();

        let mut receivers = Vec::new();
        for (index, pair) in self.pairs.iter_mut().enumerate() {
            let Some(client) = pair.receiver.take() else {
                bail!("receiver {index} is missing");
            };
            receivers.push(tokio::spawn(receive(
                client,
                ReceiveCtx {
                    step,
                    pair: index as u32,
                    pairs,
                    rate: plan.rate,
                    t0,
                    window_start,
                    window_end,
                    warmup: plan.warmup,
                    ledger: ledgers[index].clone(),
                    stop: stop.clone(),
                },
            )));
        }
        let mut senders = Vec::new();
        for (index, pair) in self.pairs.iter().enumerate() {
            senders.push(tokio::spawn(send(SendCtx {
                client: pair.sender.clone(),
                sender_id: pair.sender_id.clone(),
                receiver_id: pair.receiver_id.clone(),
                step,
                pair: index as u32,
                pairs,
                rate: plan.rate,
                count: messages_of_stream(index as u32, pairs, total),
                t0,
                body_len: plan.body_len,
                ledger: ledgers[index].clone(),
            })));
        }

        let mut ack_latency = Latency::new();
        let mut max_lag = Duration::ZERO;
        for sender in senders {
            let (acks, lag) = sender.await?;
            ack_latency.merge(&acks);
            max_lag = max_lag.max(lag);
        }
        // Wait (bounded) until every stored message has arrived.
        let last_due = window_end;
        let deadline = Instant::now().max(last_due) + plan.grace;
        loop {
            let settled = ledgers.iter().all(|l| lock(l).settled());
            if settled || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let settle = Instant::now().saturating_duration_since(last_due);
        stop.cancel();

        let mut latency = Latency::new();
        let mut in_window = 0u64;
        let mut closed = 0u64;
        for (pair, receiver) in self.pairs.iter_mut().zip(receivers) {
            let done = receiver.await?;
            latency.merge(&done.latency);
            in_window += done.in_window;
            if done.client.is_closed() {
                closed += 1;
            }
            pair.receiver = Some(done.client);
        }
        let mut tally = Tally::default();
        for ledger in &ledgers {
            tally.add(&lock(ledger).tally());
        }
        let measured = plan.duration.saturating_sub(plan.warmup).as_secs_f64();
        Ok(StepResult {
            offered_per_sec: plan.rate,
            sent_per_sec: tally.sent as f64 / plan.duration.as_secs_f64(),
            delivered_per_sec: if measured > 0.0 {
                in_window as f64 / measured
            } else {
                0.0
            },
            measured_secs: measured,
            warmup_secs: plan.warmup.as_secs_f64(),
            latency: latency.summary(),
            ack_latency: ack_latency.summary(),
            errors: tally.errors(),
            tally,
            max_send_lag_ms: max_lag.as_secs_f64() * 1000.0,
            settle_secs: settle.as_secs_f64(),
            closed_connections: closed,
            loadavg_after: crate::report::read_loadavg(),
        })
    }
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

struct SendCtx {
    client: Arc<SocketIoClient>,
    sender_id: String,
    receiver_id: String,
    step: u32,
    pair: u32,
    pairs: u32,
    rate: f64,
    count: u64,
    t0: Instant,
    body_len: usize,
    ledger: Arc<Mutex<Ledger>>,
}

/// Sends `count` messages at their scheduled times, never waiting for an
/// acknowledgement before the next send (open loop). Returns the
/// acknowledgement latencies and the largest lag behind the schedule.
async fn send(ctx: SendCtx) -> (Latency, Duration) {
    let mut acks = Latency::new();
    let mut max_lag = Duration::ZERO;
    let mut inflight = FuturesUnordered::new();
    let mut seq = 0u64;
    let record = |acks: &mut Latency, (seq, sent_at, result): (u64, Instant, Result<Value, _>)| {
        let ok = matches!(&result, Ok(value) if value.get("ok") == Some(&Value::Bool(true)));
        if ok {
            acks.record(sent_at.elapsed());
        }
        lock(&ctx.ledger).acked(seq, ok);
    };
    loop {
        if seq < ctx.count {
            let due = ctx.t0 + scheduled_offset(ctx.pair, seq, ctx.pairs, ctx.rate);
            tokio::select! {
                biased;
                Some(done) = inflight.next(), if !inflight.is_empty() => record(&mut acks, done),
                () = tokio::time::sleep_until(due) => {
                    let now = Instant::now();
                    max_lag = max_lag.max(now.saturating_duration_since(due));
                    let payload = json!({
                        "senderId": ctx.sender_id,
                        "receiverId": ctx.receiver_id,
                        "message": encode_envelope(ctx.step, ctx.pair, seq, ctx.body_len),
                    });
                    lock(&ctx.ledger).sent(seq);
                    let client = ctx.client.clone();
                    let this = seq;
                    inflight.push(async move {
                        let result = client.emit_with_ack("sendMessage", payload, ACK_TIMEOUT).await;
                        (this, now, result)
                    });
                    seq += 1;
                }
            }
        } else {
            match inflight.next().await {
                Some(done) => record(&mut acks, done),
                None => break,
            }
        }
    }
    (acks, max_lag)
}

struct ReceiveCtx {
    step: u32,
    pair: u32,
    pairs: u32,
    rate: f64,
    t0: Instant,
    window_start: Instant,
    window_end: Instant,
    warmup: Duration,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
}

struct Received {
    client: SocketIoClient,
    latency: Latency,
    in_window: u64,
}

/// Reads `receiveMessage` events until stopped; other events are dropped.
async fn receive(mut client: SocketIoClient, ctx: ReceiveCtx) -> Received {
    let mut latency = Latency::new();
    let mut in_window = 0u64;
    loop {
        let event = tokio::select! {
            () = ctx.stop.cancelled() => break,
            event = client.next_event(Duration::from_millis(500)) => event,
        };
        let Some((name, data)) = event else {
            if client.is_closed() {
                // Wait for the stop signal without spinning.
                ctx.stop.cancelled().await;
                break;
            }
            continue;
        };
        if name != "receiveMessage" {
            continue;
        }
        let now = Instant::now();
        let Some((step, pair, seq)) = data
            .get("content")
            .and_then(Value::as_str)
            .and_then(parse_envelope)
        else {
            continue;
        };
        if step != ctx.step || pair != ctx.pair {
            // A late message of an earlier step: counted as unknown.
            lock(&ctx.ledger).received(u64::MAX);
            continue;
        }
        let first = lock(&ctx.ledger).received(seq) == crate::stats::Receipt::First;
        if !first {
            continue;
        }
        let offset = scheduled_offset(pair, seq, ctx.pairs, ctx.rate);
        if offset >= ctx.warmup {
            latency.record(now.saturating_duration_since(ctx.t0 + offset));
        }
        if now >= ctx.window_start && now <= ctx.window_end {
            in_window += 1;
        }
    }
    Received {
        client,
        latency,
        in_window,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_share_the_total_exactly() {
        for (pairs, total) in [(1u32, 0u64), (1, 7), (3, 10), (4, 4), (5, 3), (100, 40_000)] {
            let sum: u64 = (0..pairs)
                .map(|p| messages_of_stream(p, pairs, total))
                .sum();
            assert_eq!(sum, total, "{pairs} pairs, {total} messages");
        }
        assert_eq!(messages_of_stream(0, 3, 10), 4);
        assert_eq!(messages_of_stream(1, 3, 10), 3);
        assert_eq!(messages_of_stream(4, 5, 3), 0);
    }
}
