//! Pure bookkeeping: latency histograms, the exact per-message ledger (loss and
//! duplicates), the open-loop schedule, message markers and a counter of
//! handed-out keys. No I/O here, so all of it is unit-tested.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency a histogram records (larger values are clamped to it).
const MAX_MICROS: u64 = 120_000_000;

/// A latency histogram in microseconds, 1 µs to 120 s, 3 significant digits.
#[derive(Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    clamped: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency")
            .field("count", &self.hist.len())
            .finish_non_exhaustive()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"),
            clamped: 0,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if micros > MAX_MICROS {
            self.clamped += 1;
        }
        // Cannot fail: the value is clamped into the bounds.
        let _ = self.hist.record(micros.clamp(1, MAX_MICROS));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.hist.add(&other.hist);
        self.clamped += other.clamped;
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let ms = |micros: u64| (micros as f64 / 1000.0 * 1000.0).round() / 1000.0;
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            mean_ms: (self.hist.mean() / 1000.0 * 1000.0).round() / 1000.0,
            p50_ms: ms(self.hist.value_at_quantile(0.5)),
            p90_ms: ms(self.hist.value_at_quantile(0.9)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            p999_ms: ms(self.hist.value_at_quantile(0.999)),
            max_ms: ms(self.hist.max()),
            clamped: self.clamped,
        }
    }
}

/// Percentiles of a [`Latency`], in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Samples above 120 s, recorded as 120 s.
    pub clamped: u64,
}

/// What happened to one message of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    sent: bool,
    ack: Ack,
    received: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Ack {
    #[default]
    Pending,
    Ok,
    Failed,
}

/// How a received message was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The first copy of a message that was sent.
    First,
    /// A further copy of a message already received.
    Duplicate,
    /// A sequence number that was never sent.
    Unknown,
}

/// The exact fate of every message of one sender → receiver stream, by
/// sequence number (0, 1, 2, … in sending order).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    slots: Vec<Slot>,
    unknown: u64,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&mut self, seq: u64) -> &mut Slot {
        let index = usize::try_from(seq).expect("sequence fits in memory");
        if index >= self.slots.len() {
            self.slots.resize(index + 1, Slot::default());
        }
        &mut self.slots[index]
    }

    /// The message `seq` was handed to the connection.
    pub fn sent(&mut self, seq: u64) {
        self.slot(seq).sent = true;
    }

    /// The server acknowledged `seq`: stored (`ok`) or refused/failed.
    pub fn acked(&mut self, seq: u64, ok: bool) {
        self.slot(seq).ack = if ok { Ack::Ok } else { Ack::Failed };
    }

    /// The receiver got `seq`.
    pub fn received(&mut self, seq: u64) -> Receipt {
        let known = usize::try_from(seq)
            .ok()
            .and_then(|index| self.slots.get(index))
            .is_some_and(|slot| slot.sent);
        if !known {
            self.unknown += 1;
            return Receipt::Unknown;
        }
        let slot = self.slot(seq);
        slot.received += 1;
        if slot.received == 1 {
            Receipt::First
        } else {
            Receipt::Duplicate
        }
    }

    /// Every sent message is answered, and every stored one has arrived.
    pub fn settled(&self) -> bool {
        self.slots.iter().all(|slot| {
            !slot.sent
                || match slot.ack {
                    Ack::Pending => false,
                    Ack::Ok => slot.received > 0,
                    Ack::Failed => true,
                }
        })
    }

    pub fn tally(&self) -> Tally {
        let mut tally = Tally {
            unknown: self.unknown,
            ..Tally::default()
        };
        for slot in self.slots.iter().filter(|slot| slot.sent) {
            tally.sent += 1;
            match slot.ack {
                Ack::Pending => tally.ack_missing += 1,
                Ack::Ok => tally.stored += 1,
                Ack::Failed => tally.failed += 1,
            }
            if slot.received > 0 {
                tally.delivered += 1;
                tally.duplicates += u64::from(slot.received - 1);
                if slot.ack != Ack::Ok {
                    tally.delivered_unacked += 1;
                }
            } else if slot.ack == Ack::Ok {
                tally.lost += 1;
            }
        }
        tally
    }
}

/// Counts over one or more [`Ledger`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Messages handed to the connection.
    pub sent: u64,
    /// Acknowledged as stored by the server.
    pub stored: u64,
    /// Acknowledged with an error.
    pub failed: u64,
    /// Never acknowledged (timeout or closed connection).
    pub ack_missing: u64,
    /// Distinct messages that reached the receiver.
    pub delivered: u64,
    /// Stored (acknowledged OK) but never received: lost.
    pub lost: u64,
    /// Extra copies received of a message already received.
    pub duplicates: u64,
    /// Received although not acknowledged as stored (late or missing ack).
    pub delivered_unacked: u64,
    /// Received with a sequence number that was never sent.
    pub unknown: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.stored += other.stored;
        self.failed += other.failed;
        self.ack_missing += other.ack_missing;
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.delivered_unacked += other.delivered_unacked;
        self.unknown += other.unknown;
    }

    /// Errors as the benchmark reports them: refused, failed or unanswered sends.
    pub fn errors(&self) -> u64 {
        self.failed + self.ack_missing
    }
}

/// When message `seq` of stream `pair` is due, counted from the start of an
/// open-loop run where `pairs` streams share `rate` messages per second: the
/// streams take turns, so consecutive messages overall are `1/rate` apart and
/// each stream sends every `pairs/rate` seconds.
pub fn scheduled_offset(pair: u32, seq: u64, pairs: u32, rate: f64) -> Duration {
    let index = seq as f64 * f64::from(pairs) + f64::from(pair);
    Duration::from_secs_f64(index / rate)
}

/// A message body that carries its identity: a Signal-like envelope whose
/// base64-alphabet `body` is `LG s<step> p<pair> n<seq> z` followed by `A`s up
/// to `body_len` characters.
pub fn encode_envelope(step: u32, pair: u32, seq: u64, body_len: usize) -> String {
    let mut body = format!("LGs{step}p{pair}n{seq}z");
    while body.len() < body_len {
        body.push('A');
    }
    format!(r#"{{"__encrypted":true,"type":1,"body":"{body}"}}"#)
}

/// The `(step, pair, seq)` of an envelope made by [`encode_envelope`].
pub fn parse_envelope(envelope: &str) -> Option<(u32, u32, u64)> {
    let value: serde_json::Value = serde_json::from_str(envelope).ok()?;
    let body = value.get("body")?.as_str()?;
    let rest = body.strip_prefix("LGs")?;
    let (step, rest) = rest.split_once('p')?;
    let (pair, rest) = rest.split_once('n')?;
    let (seq, _) = rest.split_once('z')?;
    Some((step.parse().ok()?, pair.parse().ok()?, seq.parse().ok()?))
}

/// Counts how often each key was seen (e.g. one-time prekeys handed out).
#[derive(Debug, Clone)]
pub struct SeenCounter<K> {
    seen: HashMap<K, u32>,
    duplicates: u64,
}

impl<K> Default for SeenCounter<K> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
            duplicates: 0,
        }
    }
}

impl<K: Eq + Hash> SeenCounter<K> {
    /// Records `key`; `true` if it is the first time.
    pub fn record(&mut self, key: K) -> bool {
        let count = self.seen.entry(key).or_insert(0);
        *count += 1;
        if *count > 1 {
            self.duplicates += 1;
        }
        *count == 1
    }

    pub fn distinct(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Sightings beyond the first, over all keys.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_are_in_milliseconds() {
        let mut latency = Latency::new();
        for ms in 1..=1000 {
            latency.record(Duration::from_millis(ms));
        }
        let summary = latency.summary();
        assert_eq!(summary.count, 1000);
        // 3 significant digits: within 0.1 % of the exact value.
        assert!((summary.p50_ms - 500.0).abs() <= 0.5, "{summary:?}");
        assert!((summary.p99_ms - 990.0).abs() <= 1.0, "{summary:?}");
        assert!((summary.p999_ms - 999.0).abs() <= 1.0, "{summary:?}");
        assert!((summary.max_ms - 1000.0).abs() <= 1.0, "{summary:?}");
        assert!((summary.mean_ms - 500.5).abs() <= 0.5, "{summary:?}");
        assert_eq!(summary.clamped, 0);
    }

    #[test]
    fn latency_merges_and_clamps() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        a.record(Duration::from_micros(0)); // recorded as 1 µs
        b.record(Duration::from_secs(500)); // clamped to 120 s
        a.merge(&b);
        let summary = a.summary();
        assert_eq!(summary.count, 2);
        assert_eq!(summary.clamped, 1);
        assert!((summary.max_ms - 120_000.0).abs() <= 120.0, "{summary:?}");
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }

    #[test]
    fn ledger_counts_every_fate_exactly() {
        let mut ledger = Ledger::new();
        for seq in 0..6 {
            ledger.sent(seq);
        }
        ledger.acked(0, true); // delivered once
        ledger.acked(1, true); // delivered twice: one duplicate
        ledger.acked(2, true); // lost
        ledger.acked(3, false); // refused, never delivered
        // 4: no ack, but delivered
        // 5: no ack, not delivered
        assert_eq!(ledger.received(0), Receipt::First);
        assert_eq!(ledger.received(1), Receipt::First);
        assert_eq!(ledger.received(1), Receipt::Duplicate);
        assert_eq!(ledger.received(4), Receipt::First);
        assert_eq!(ledger.received(9), Receipt::Unknown);
        assert!(!ledger.settled());

        let tally = ledger.tally();
        assert_eq!(
            tally,
            Tally {
                sent: 6,
                stored: 3,
                failed: 1,
                ack_missing: 2,
                delivered: 3,
                lost: 1,
                duplicates: 1,
                delivered_unacked: 1,
                unknown: 1,
            }
        );
        assert_eq!(tally.errors(), 3);
    }

    #[test]
    fn ledger_settles_when_every_stored_message_arrived() {
        let mut ledger = Ledger::new();
        ledger.sent(0);
        ledger.sent(1);
        assert!(!ledger.settled());
        ledger.acked(0, true);
        ledger.acked(1, false);
        assert!(
            !ledger.settled(),
            "message 0 is stored but not yet received"
        );
        ledger.received(0);
        assert!(ledger.settled());
        // A message received before its ack is not settled until the ack.
        ledger.sent(2);
        ledger.received(2);
        assert!(!ledger.settled());
        ledger.acked(2, true);
        assert!(ledger.settled());
        assert_eq!(ledger.tally().lost, 0);
    }

    #[test]
    fn tallies_add_up() {
        let mut a = Ledger::new();
        a.sent(0);
        a.acked(0, true);
        let mut b = Ledger::new();
        b.sent(0);
        b.acked(0, true);
        b.received(0);
        let mut total = a.tally();
        total.add(&b.tally());
        assert_eq!(total.sent, 2);
        assert_eq!(total.stored, 2);
        assert_eq!(total.delivered, 1);
        assert_eq!(total.lost, 1);
    }

    #[test]
    fn schedule_is_evenly_spaced_across_pairs() {
        let (pairs, rate) = (4, 1000.0);
        let mut offsets: Vec<Duration> = (0..pairs)
            .flat_map(|pair| (0..10).map(move |seq| scheduled_offset(pair, seq, pairs, rate)))
            .collect();
        offsets.sort();
        assert_eq!(offsets.len(), 40);
        for (i, offset) in offsets.iter().enumerate() {
            let expected = Duration::from_secs_f64(i as f64 / rate);
            let diff = offset.abs_diff(expected);
            assert!(diff < Duration::from_nanos(10), "{i}: {offset:?}");
        }
        // Each stream sends every pairs/rate seconds.
        assert_eq!(scheduled_offset(1, 1, 4, 1000.0), Duration::from_millis(5));
    }

    #[test]
    fn envelopes_carry_their_identity() {
        let envelope = encode_envelope(3, 17, 123_456, 120);
        let value: serde_json::Value = serde_json::from_str(&envelope).unwrap();
        assert_eq!(value["__encrypted"], true);
        let body = value["body"].as_str().unwrap();
        assert_eq!(body.len(), 120);
        assert!(
            body.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'),
            "base64 alphabet: {body}"
        );
        assert_eq!(parse_envelope(&envelope), Some((3, 17, 123_456)));
        // Short bodies are not padded below their identity.
        assert_eq!(
            parse_envelope(&encode_envelope(0, 0, 0, 0)),
            Some((0, 0, 0))
        );
        for bad in [
            "",
            "{}",
            r#"{"body":"XYs1p2n3z"}"#,
            r#"{"body":"LGs1p2n3"}"#,
            r#"{"body":"LGsxp2n3z"}"#,
            r#"{"body":5}"#,
        ] {
            assert_eq!(parse_envelope(bad), None, "{bad}");
        }
    }

    #[test]
    fn seen_counter_finds_duplicates() {
        let mut seen = SeenCounter::default();
        assert!(seen.record(("alice", 1)));
        assert!(seen.record(("alice", 2)));
        assert!(seen.record(("bob", 1)));
        assert!(!seen.record(("alice", 1)));
        assert!(!seen.record(("alice", 1)));
        assert_eq!(seen.distinct(), 3);
        assert_eq!(seen.duplicates(), 2);
    }
}
