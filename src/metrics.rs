//! Metrics: each shard publishes a snapshot of its own counters about once a second (no
//! atomics on the data path); a scrape merges the snapshots and renders the Prometheus
//! text format with prometheus-client.

use crate::shard::pace;
use hdrhistogram::Histogram;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Sites listed by ready-queue depth in the metrics.
pub const TOP_SITES: usize = 10;

/// The queue for one recipient domain (like Postfix's qshape).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DomainSummary {
    pub messages: u64,
    pub recipients: u64,
    pub bytes: u64,
    /// Arrival of the oldest message, Unix microseconds.
    pub oldest_micros: u64,
}

impl DomainSummary {
    pub fn add(&mut self, other: &DomainSummary) {
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.bytes += other.bytes;
        self.oldest_micros = match (self.oldest_micros, other.oldest_micros) {
            (0, o) | (o, 0) => o,
            (a, b) => a.min(b),
        };
    }
}

#[derive(Debug, Clone, Default)]
pub struct ShardMetrics {
    pub accepted: u64,
    pub refusals: BTreeMap<String, u64>,
    pub connections_in: u64,
    pub connections_out: u64,
    pub outbound_connections: u64,
    pub transactions: u64,
    pub chained: u64,
    pub chunked: u64,
    pub trials: u64,
    pub paid_trials: u64,
    pub paused_rounds: u64,
    pub paused_us: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    pub queue_messages: u64,
    pub queue_bytes: u64,
    pub commits: u64,
    pub records: u64,
    pub log_bytes: u64,
    pub fsync_us: Option<Histogram<u64>>,
    pub store_us: Option<Histogram<u64>>,
    pub batch: Option<Histogram<u64>>,
    pub delay_us: Option<Histogram<u64>>,
    pub dns_queries: u64,
    pub dns_cache_hits: u64,
    pub dns_failures: u64,
    pub sites: Vec<(String, u64)>,
    pub domains: BTreeMap<String, DomainSummary>,
}

/// The latest snapshot of every shard.
#[derive(Default)]
pub struct Board {
    pub shards: Mutex<BTreeMap<usize, ShardMetrics>>,
}

impl Board {
    pub fn publish(&self, shard: usize, m: ShardMetrics) {
        if let Ok(mut s) = self.shards.lock() {
            s.insert(shard, m);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<usize, ShardMetrics> {
        self.shards.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The live queue by destination domain: recipients not final, and the messages (with
/// their bytes and oldest arrival) that have at least one there.
pub fn domains_of<'a>(
    entries: impl Iterator<Item = &'a crate::queue::index::Entry>,
) -> BTreeMap<String, DomainSummary> {
    let mut domains: BTreeMap<String, DomainSummary> = BTreeMap::new();
    for e in entries {
        let mut seen: Vec<String> = Vec::new();
        for (r, s) in e.message.envelope.recipients.iter().zip(&e.rcpt_states) {
            if s.is_final() {
                continue;
            }
            let d = r
                .address
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase();
            let entry = domains.entry(d.clone()).or_default();
            entry.recipients += 1;
            if !seen.contains(&d) {
                seen.push(d);
                let m = &e.message;
                entry.add(&DomainSummary {
                    messages: 1,
                    recipients: 0,
                    bytes: m.content_len,
                    oldest_micros: m.arrival_micros,
                });
            }
        }
    }
    domains
}

/// The queue by domain, all shards together.
pub fn summary(shards: &BTreeMap<usize, ShardMetrics>) -> BTreeMap<String, DomainSummary> {
    let mut all: BTreeMap<String, DomainSummary> = BTreeMap::new();
    for m in shards.values() {
        for (d, s) in &m.domains {
            all.entry(d.clone()).or_default().add(s);
        }
    }
    all
}

type ShardLabel = Vec<(String, String)>;

fn counter(reg: &mut Registry, name: &str, help: &str, values: impl Iterator<Item = (usize, u64)>) {
    let f = Family::<ShardLabel, Counter>::default();
    for (shard, v) in values {
        f.get_or_create(&vec![("shard".into(), shard.to_string())])
            .inc_by(v);
    }
    reg.register(name, help, f);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, values: impl Iterator<Item = (usize, u64)>) {
    let f = Family::<ShardLabel, Gauge>::default();
    for (shard, v) in values {
        f.get_or_create(&vec![("shard".into(), shard.to_string())])
            .set(v as i64);
    }
    reg.register(name, help, f);
}

/// Quantiles of a microsecond histogram, in seconds, as a gauge family.
fn quantiles(reg: &mut Registry, name: &str, help: &str, h: Option<Histogram<u64>>) {
    let fam = Family::<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    if let Some(h) = h.filter(|h| !h.is_empty()) {
        for q in [0.5, 0.9, 0.99, 0.999] {
            fam.get_or_create(&vec![("quantile".into(), q.to_string())])
                .set(h.value_at_quantile(q) as f64 / 1e6);
        }
    }
    reg.register(name, help, fam);
}

/// The Prometheus text exposition of all shards' snapshots.
pub fn render(shards: &BTreeMap<usize, ShardMetrics>) -> String {
    let mut reg = Registry::with_prefix("ringpost");
    let each = |f: fn(&ShardMetrics) -> u64| shards.iter().map(move |(k, m)| (*k, f(m)));
    counter(
        &mut reg,
        "accepted_messages",
        "Messages accepted (250 after the sync)",
        each(|m| m.accepted),
    );
    counter(
        &mut reg,
        "delivered_recipients",
        "Recipients delivered",
        each(|m| m.delivered),
    );
    counter(
        &mut reg,
        "deferred_recipients",
        "Recipient attempts deferred",
        each(|m| m.deferred),
    );
    counter(
        &mut reg,
        "failed_recipients",
        "Recipients failed (bounced)",
        each(|m| m.failed),
    );
    counter(
        &mut reg,
        "outbound_connections",
        "Outbound connections opened",
        each(|m| m.outbound_connections),
    );
    counter(
        &mut reg,
        "outbound_transactions",
        "Outbound transactions",
        each(|m| m.transactions),
    );
    counter(
        &mut reg,
        "outbound_chained",
        "Outbound transactions whose envelope went out behind the previous message's content",
        each(|m| m.chained),
    );
    counter(
        &mut reg,
        "outbound_chunked",
        "Outbound transactions whose content went out as one BDAT chunk behind their envelope",
        each(|m| m.chunked),
    );
    counter(
        &mut reg,
        "loop_pace_trials",
        &format!(
            "Loop pacing trials: {} ms unpaced against {} ms paced ([tuning] loop_period)",
            pace::TRIAL_SPELL.as_millis(),
            pace::TRIAL_SPELL.as_millis()
        ),
        each(|m| m.trials),
    );
    counter(
        &mut reg,
        "loop_pace_paid_trials",
        &format!(
            "Trials in which pacing spent less CPU per task ({} ms paced follow each)",
            pace::PACED_SPELL.as_millis()
        ),
        each(|m| m.paid_trials),
    );
    counter(
        &mut reg,
        "loop_paused_rounds",
        "Rounds of the shard's loop held back by a pause",
        each(|m| m.paused_rounds),
    );
    counter(
        &mut reg,
        "loop_paused_microseconds",
        "Time the shard's thread slept in loop pauses",
        each(|m| m.paused_us),
    );
    gauge(
        &mut reg,
        "connections_in",
        "Open inbound sessions",
        each(|m| m.connections_in),
    );
    gauge(
        &mut reg,
        "connections_out",
        "Open outbound connections",
        each(|m| m.connections_out),
    );
    gauge(
        &mut reg,
        "queue_messages",
        "Live messages in the queue",
        each(|m| m.queue_messages),
    );
    gauge(
        &mut reg,
        "queue_bytes",
        "Content bytes of live messages",
        each(|m| m.queue_bytes),
    );
    counter(
        &mut reg,
        "log_commits",
        "Group commits (one write and one fdatasync each)",
        each(|m| m.commits),
    );
    counter(
        &mut reg,
        "log_records",
        "Records committed",
        each(|m| m.records),
    );
    counter(
        &mut reg,
        "log_bytes",
        "Bytes committed",
        each(|m| m.log_bytes),
    );
    counter(
        &mut reg,
        "dns_queries",
        "DNS queries sent",
        each(|m| m.dns_queries),
    );
    counter(
        &mut reg,
        "dns_cache_hits",
        "DNS answers from the cache",
        each(|m| m.dns_cache_hits),
    );
    counter(
        &mut reg,
        "dns_failures",
        "DNS lookups that failed (timeout, SERVFAIL)",
        each(|m| m.dns_failures),
    );
    let refused = Family::<Vec<(String, String)>, Counter>::default();
    for (k, m) in shards {
        for (code, n) in &m.refusals {
            refused
                .get_or_create(&vec![
                    ("shard".into(), k.to_string()),
                    ("code".into(), code.clone()),
                ])
                .inc_by(*n);
        }
    }
    reg.register(
        "refused_commands",
        "Commands refused, by reply code",
        refused,
    );
    let merge = |f: fn(&ShardMetrics) -> Option<&Histogram<u64>>| {
        let mut merged: Option<Histogram<u64>> = None;
        for h in shards.values().filter_map(f) {
            match merged.as_mut() {
                Some(all) => {
                    let _ = all.add(h);
                }
                None => merged = Some(h.clone()),
            }
        }
        merged
    };
    let batch = Family::<Vec<(String, String)>, Gauge>::default();
    if let Some(h) = merge(|m| m.batch.as_ref()).filter(|h| !h.is_empty()) {
        for q in [0.5, 0.9, 0.99] {
            batch
                .get_or_create(&vec![("quantile".into(), q.to_string())])
                .set(h.value_at_quantile(q) as i64);
        }
    }
    reg.register(
        "commit_batch_records",
        "Records per group commit, quantiles since start",
        batch,
    );
    quantiles(
        &mut reg,
        "fsync_seconds",
        "Group-commit write+fdatasync latency quantiles since start",
        merge(|m| m.fsync_us.as_ref()),
    );
    quantiles(
        &mut reg,
        "store_seconds",
        "End of content to 250 (the commit the message waited for), quantiles since start",
        merge(|m| m.store_us.as_ref()),
    );
    quantiles(
        &mut reg,
        "delivery_delay_seconds",
        "Arrival to delivery per recipient, quantiles since start",
        merge(|m| m.delay_us.as_ref()),
    );
    let sites = Family::<Vec<(String, String)>, Gauge>::default();
    let mut top: Vec<(String, u64)> = shards
        .values()
        .flat_map(|m| m.sites.iter().cloned())
        .collect();
    top.sort_by_key(|s| std::cmp::Reverse(s.1));
    for (site, depth) in top.into_iter().take(TOP_SITES) {
        sites
            .get_or_create(&vec![("site".into(), site)])
            .set(depth as i64);
    }
    reg.register(
        "site_ready_depth",
        "Jobs waiting in a site's ready queue (top sites)",
        sites,
    );
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_merges() {
        let mut a = ShardMetrics {
            accepted: 5,
            delivered: 4,
            ..ShardMetrics::default()
        };
        a.refusals.insert("554 5.7.1".into(), 2);
        a.domains.insert(
            "x.test".into(),
            DomainSummary {
                messages: 1,
                recipients: 2,
                bytes: 10,
                oldest_micros: 7,
            },
        );
        let mut b = ShardMetrics {
            accepted: 1,
            ..ShardMetrics::default()
        };
        b.domains.insert(
            "x.test".into(),
            DomainSummary {
                messages: 2,
                recipients: 2,
                bytes: 5,
                oldest_micros: 3,
            },
        );
        let shards: BTreeMap<usize, ShardMetrics> = [(0, a), (1, b)].into_iter().collect();
        let text = render(&shards);
        assert!(
            text.contains("ringpost_accepted_messages_total{shard=\"0\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("ringpost_refused_commands_total{shard=\"0\",code=\"554 5.7.1\"} 2"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        let s = summary(&shards);
        assert_eq!(
            s["x.test"],
            DomainSummary {
                messages: 3,
                recipients: 4,
                bytes: 15,
                oldest_micros: 3
            }
        );
    }
}
