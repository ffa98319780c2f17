//! The queue manager of one shard: the life of every message in this shard's log.
//!
//! It routes each recipient (route table or MX) to a site and hands the site's owner
//! shard a [`Job`]; it records every outcome the delivery shards report in the log; it
//! schedules retries on a timer wheel with exponential backoff and jitter, expires what
//! is older than `max_age`, and returns a DSN to the sender for what failed. A message
//! whose recipients are all final is finished, and its segment can go.

use super::bounce::{self, Dsn, DsnRcpt};
use super::wheel::TimerWheel;
use super::{Job, JobRcpt, Report};
use crate::config::Delivery as DeliveryConfig;
use crate::config::SitePools;
use crate::queue::index::RcptState;
use crate::queue::log::Log;
use crate::queue::record::{NewMessage, Outcome, OutcomeKind, QueueId};
use crate::route::{RouteError, Router, Site};
use crate::smtp::parser::notify;
use crate::smtp::session::{Envelope, Recipient};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Retry wheel: one-second slots, one hour per turn.
const WHEEL_SLOT: Duration = Duration::from_secs(1);
const WHEEL_SLOTS: usize = 3600;
/// How often the retry loop looks at the wheel.
const RETRY_TICK: Duration = Duration::from_millis(250);
/// Retry delays vary by up to this fraction either way, so retries do not come in waves.
const JITTER_FRACTION: f64 = 0.1;

/// What the queue manager remembers of a message with outcomes in flight.
#[derive(Default)]
struct Open {
    /// Recipients not final yet.
    remaining: usize,
    finals: HashSet<u32>,
    failures: Vec<Failure>,
    delay_warned: bool,
}

struct Failure {
    index: u32,
    reply: String,
    status: String,
    remote: Option<Arc<str>>,
}

pub struct QueueManager {
    /// This shard's mesh index; jobs carry it as their origin.
    me: usize,
    shards: usize,
    log: Rc<Log>,
    router: Router,
    cfg: DeliveryConfig,
    hostname: String,
    dispatch: Box<dyn Fn(usize, Job)>,
    wheel: RefCell<TimerWheel<(QueueId, u32)>>,
    /// Retry time per scheduled recipient; a wheel entry that no longer matches is stale.
    scheduled: RefCell<HashMap<(QueueId, u32), u64>>,
    attempts: RefCell<HashMap<(QueueId, u32), u32>>,
    open: RefCell<HashMap<QueueId, Open>>,
    rng: Cell<u64>,
    stopping: Cell<bool>,
    /// Arrival to delivery per recipient, microseconds.
    delay_us: RefCell<hdrhistogram::Histogram<u64>>,
}

impl QueueManager {
    pub fn new(
        me: usize,
        shards: usize,
        log: Rc<Log>,
        router: Router,
        cfg: DeliveryConfig,
        hostname: String,
        dispatch: Box<dyn Fn(usize, Job)>,
    ) -> QueueManager {
        let now = crate::time::unix_micros();
        QueueManager {
            me,
            shards,
            log,
            router,
            cfg,
            hostname,
            dispatch,
            wheel: RefCell::new(TimerWheel::new(WHEEL_SLOT, WHEEL_SLOTS, now)),
            scheduled: RefCell::new(HashMap::new()),
            attempts: RefCell::new(HashMap::new()),
            open: RefCell::new(HashMap::new()),
            rng: Cell::new(now | 1),
            stopping: Cell::new(false),
            delay_us: RefCell::new(crate::queue::log::sync_histogram()),
        }
    }

    pub fn delay_histogram(&self) -> hdrhistogram::Histogram<u64> {
        self.delay_us.borrow().clone()
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Everything recovered from the log: pending recipients go now, deferred ones at
    /// their time.
    pub fn recover(self: &Rc<Self>) {
        let mut now_list: Vec<(QueueId, Vec<u32>)> = Vec::new();
        let mut later: Vec<(u64, QueueId, u32)> = Vec::new();
        self.log.with_index(|ix| {
            for e in ix.live() {
                let mut pending = Vec::new();
                for (i, s) in e.rcpt_states.iter().enumerate() {
                    match s {
                        RcptState::Pending => pending.push(i as u32),
                        RcptState::Deferred { until_micros } => {
                            later.push((*until_micros, e.message.id, i as u32))
                        }
                        _ => {}
                    }
                }
                if !pending.is_empty() {
                    now_list.push((e.message.id, pending));
                }
            }
        });
        for (until, id, i) in later {
            self.schedule(id, i, until);
        }
        for (id, rcpts) in now_list {
            glommio::spawn_local(Rc::clone(self).route(id, rcpts)).detach();
        }
    }

    /// A message was just stored: route all its recipients.
    pub fn submit(self: &Rc<Self>, id: QueueId) {
        let n = self
            .log
            .with_index(|ix| ix.get(id).map_or(0, |e| e.rcpt_states.len()));
        glommio::spawn_local(Rc::clone(self).route(id, (0..n as u32).collect())).detach();
    }

    /// ETRN: retry now every deferred recipient in `domain`.
    pub fn flush_domain(self: &Rc<Self>, domain: &str) -> usize {
        // An empty domain means every domain (`queue flush` without one).
        let domain = domain.to_ascii_lowercase();
        let keys: Vec<(QueueId, u32)> = self.scheduled.borrow().keys().copied().collect();
        let mut by_id: BTreeMap<QueueId, Vec<u32>> = BTreeMap::new();
        self.log.with_index(|ix| {
            for (id, i) in keys {
                let matches = ix
                    .get(id)
                    .and_then(|e| e.message.envelope.recipients.get(i as usize))
                    .and_then(|r| r.address.rsplit_once('@'))
                    .is_some_and(|(_, d)| domain.is_empty() || d.eq_ignore_ascii_case(&domain));
                if matches {
                    by_id.entry(id).or_default().push(i);
                }
            }
        });
        let mut n = 0;
        for (id, rcpts) in by_id {
            for i in &rcpts {
                self.scheduled.borrow_mut().remove(&(id, *i));
            }
            n += rcpts.len();
            glommio::spawn_local(Rc::clone(self).route(id, rcpts)).detach();
        }
        n
    }

    /// An operator's command for one message of this shard's log. Returns false when the
    /// message is not here (another shard has it, or it is gone).
    pub async fn admin(self: Rc<Self>, op: super::AdminOp, id: QueueId) -> bool {
        use super::AdminOp;
        let Some(pending) = self.log.with_index(|ix| {
            ix.get(id).map(|e| {
                e.rcpt_states
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !s.is_final())
                    .map(|(i, _)| i as u32)
                    .collect::<Vec<u32>>()
            })
        }) else {
            return false;
        };
        let now = crate::time::unix_micros();
        let record = |kind| Outcome {
            id,
            rcpt: u32::MAX,
            kind,
            at_micros: now,
            reply: format!("{op:?} by the administrator"),
        };
        match op {
            AdminOp::Hold | AdminOp::Release | AdminOp::Delete => {
                let kind = match op {
                    AdminOp::Hold => OutcomeKind::Held,
                    AdminOp::Release => OutcomeKind::Released,
                    _ => OutcomeKind::Deleted,
                };
                if let Err(e) = self.log.append_outcome(record(kind)).wait().await {
                    log::error!("{id}: cannot record {op:?}: {e:?}");
                    return true;
                }
                log::info!("{id}: {op:?} by the administrator");
                if op == AdminOp::Release {
                    glommio::spawn_local(Rc::clone(&self).route(id, pending)).detach();
                } else if op == AdminOp::Delete {
                    self.forget(id, pending.iter().copied());
                }
            }
            AdminOp::Bounce => {
                let report = Report::all(
                    self.me,
                    id,
                    pending,
                    OutcomeKind::Failed,
                    "550 5.0.0 returned to the sender by the administrator",
                );
                Rc::clone(&self).on_report(report).await;
            }
        }
        true
    }

    pub fn stop(&self) {
        self.stopping.set(true);
    }

    fn schedule(&self, id: QueueId, index: u32, until_micros: u64) {
        self.scheduled
            .borrow_mut()
            .insert((id, index), until_micros);
        self.wheel.borrow_mut().insert(until_micros, (id, index));
    }

    /// Fires due retries until stopped.
    pub async fn retry_loop(self: Rc<Self>) {
        let mut due = Vec::new();
        while !self.stopping.get() {
            glommio::timer::sleep(RETRY_TICK).await;
            let now = crate::time::unix_micros();
            self.wheel.borrow_mut().advance(now, &mut due);
            let mut by_id: BTreeMap<QueueId, Vec<u32>> = BTreeMap::new();
            for (id, i) in due.drain(..) {
                let current = self.scheduled.borrow().get(&(id, i)).copied();
                if current.is_some_and(|t| t <= now) {
                    self.scheduled.borrow_mut().remove(&(id, i));
                    by_id.entry(id).or_default().push(i);
                }
            }
            for (id, rcpts) in by_id {
                glommio::spawn_local(Rc::clone(&self).route(id, rcpts)).detach();
            }
        }
    }

    /// Routes recipients of one message and dispatches a job per site.
    async fn route(self: Rc<Self>, id: QueueId, rcpts: Vec<u32>) {
        let Some(snapshot) = self.snapshot(id, &rcpts) else {
            return;
        };
        let mut by_domain: BTreeMap<String, Vec<JobRcpt>> = BTreeMap::new();
        for r in snapshot.rcpts {
            let domain = r
                .address
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase();
            by_domain.entry(domain).or_default().push(r);
        }
        let mut by_site: HashMap<String, (Arc<Site>, Vec<JobRcpt>)> = HashMap::new();
        for (domain, rs) in by_domain {
            match self.router.route(&domain).await {
                Ok(site) => by_site
                    .entry(site.key.clone())
                    .or_insert_with(|| (site, Vec::new()))
                    .1
                    .extend(rs),
                Err(e) => {
                    let (kind, reply) = match e {
                        RouteError::Permanent(t) => (OutcomeKind::Failed, t),
                        RouteError::Temporary(t) => (OutcomeKind::Deferred, t),
                    };
                    let report = Report::all(self.me, id, rs.iter().map(|r| r.index), kind, &reply);
                    glommio::spawn_local(Rc::clone(&self).on_report(report)).detach();
                }
            }
        }
        let chunk = self.cfg.max_recipients_per_transaction.max(1) as usize;
        for (_, (site, rs)) in by_site {
            for part in rs.chunks(chunk) {
                let job = Job {
                    origin: self.me,
                    id,
                    segment: Arc::clone(&snapshot.segment),
                    content_offset: snapshot.content_offset,
                    content_len: snapshot.content_len,
                    sender: snapshot.envelope.sender.clone(),
                    smtputf8: snapshot.envelope.smtputf8,
                    eight_bit: snapshot.envelope.eight_bit,
                    ret: snapshot.envelope.ret,
                    envid: snapshot.envelope.envid.clone(),
                    site: Arc::clone(&site),
                    rcpts: part.to_vec(),
                };
                // Resolved for the shard count before the shard starts: never `auto`.
                let shard = if self.cfg.site_pools == SitePools::Shard {
                    self.me
                } else {
                    site.owner(self.shards)
                };
                (self.dispatch)(shard, job);
            }
        }
    }

    fn snapshot(&self, id: QueueId, rcpts: &[u32]) -> Option<Snapshot> {
        let (home, offset, len, envelope, states) = self.log.with_index(|ix| {
            // A message on hold is not delivered until it is released.
            let e = ix.get(id).filter(|e| !e.held)?;
            Some((
                e.home,
                e.content_offset(),
                e.message.content_len,
                Rc::clone(&e.message.envelope),
                e.rcpt_states.clone(),
            ))
        })?;
        let segment = Arc::new(self.log.segment_path(home)?);
        let rcpts = rcpts
            .iter()
            .filter(|&&i| states.get(i as usize).is_some_and(|s| !s.is_final()))
            .filter_map(|&i| {
                let r: &Recipient = envelope.recipients.get(i as usize)?;
                Some(JobRcpt {
                    index: i,
                    address: r.address.clone(),
                    notify: r.notify,
                    orcpt: r.orcpt.clone(),
                })
            })
            .collect();
        Some(Snapshot {
            segment,
            content_offset: offset,
            content_len: len,
            envelope,
            rcpts,
        })
    }

    /// Records the outcomes of one report, then retries, expires or bounces as they say.
    /// A report is one transaction's recipients: their records go to disk in one commit,
    /// and the message is looked up once, not once per recipient.
    pub async fn on_report(self: Rc<Self>, r: Report) {
        let Some((arrival, envelope)) = self.log.with_index(|ix| {
            ix.get(r.id)
                .map(|e| (e.message.arrival_micros, Rc::clone(&e.message.envelope)))
        }) else {
            return;
        };
        let now = crate::time::unix_micros();
        let age = Duration::from_micros(now.saturating_sub(arrival));
        let id = r.id;
        let remote = r.remote.as_deref();
        let relay = remote.unwrap_or("none");
        let mut outcomes = Vec::with_capacity(r.rcpts.len());
        let mut finished = false;
        for x in r.rcpts {
            let expired = x.kind == OutcomeKind::Deferred && age >= self.cfg.max_age;
            let (kind, reply) = if expired {
                let reply = format!(
                    "{} (delivery time expired after {})",
                    x.reply,
                    crate::config::duration::format(self.cfg.max_age)
                );
                (OutcomeKind::Failed, reply)
            } else {
                (x.kind, x.reply)
            };
            let address = envelope
                .recipients
                .get(x.index as usize)
                .map_or("", |a| a.address.as_str());
            match kind {
                // Operator records are written by `admin`, never reported by a delivery.
                OutcomeKind::Held | OutcomeKind::Released | OutcomeKind::Deleted => {}
                OutcomeKind::Deferred => {
                    let until = self.retry_time(id, x.index, now);
                    log::info!("{id}: to=<{address}>, relay={relay}, status=deferred ({reply})");
                    outcomes.push(Outcome {
                        id,
                        rcpt: x.index,
                        kind,
                        at_micros: until,
                        reply,
                    });
                }
                OutcomeKind::Delivered | OutcomeKind::Failed => {
                    let (fresh, last) = self.mark_final(id, x.index);
                    if !fresh {
                        continue;
                    }
                    finished |= last;
                    if kind == OutcomeKind::Failed {
                        let status = if expired {
                            "4.4.7".to_string()
                        } else {
                            bounce::status_of(&reply, true)
                        };
                        if let Some(open) = self.open.borrow_mut().get_mut(&id) {
                            open.failures.push(Failure {
                                index: x.index,
                                reply: reply.clone(),
                                status,
                                remote: r.remote.clone(),
                            });
                        }
                        log::info!("{id}: to=<{address}>, relay={relay}, status=bounced ({reply})");
                    } else {
                        self.delay_us
                            .borrow_mut()
                            .saturating_record((age.as_micros() as u64).max(1));
                        log::info!(
                            "{id}: to=<{address}>, relay={relay}, delay={}s, status=sent ({reply})",
                            crate::time::Millis3(age)
                        );
                    }
                    outcomes.push(Outcome {
                        id,
                        rcpt: x.index,
                        kind,
                        at_micros: now,
                        reply,
                    });
                }
            }
        }
        // The content is still on disk: the message is not finished until the outcomes
        // below are written.
        let reported = Reported {
            id,
            outcomes: &outcomes,
            remote,
            envelope: &envelope,
            now,
        };
        if !r.next_hop_dsn {
            self.success_notice(&reported).await;
        }
        if age >= self.cfg.delay_warning && !self.cfg.delay_warning.is_zero() {
            self.delay_warning(&reported).await;
        }
        if finished {
            self.bounce_if_needed(id, &envelope, arrival, now).await;
        }
        let retries: Vec<(u32, u64)> = outcomes
            .iter()
            .filter(|o| o.kind == OutcomeKind::Deferred)
            .map(|o| (o.rcpt, o.at_micros))
            .collect();
        if !outcomes.is_empty() {
            if let Err(e) = self.log.append_outcomes(outcomes).wait().await {
                log::error!("{id}: cannot record outcomes: {e:?}; final ones are retried after a restart, deferrals retried anyway");
            }
        }
        for (index, until) in retries {
            self.schedule(id, index, until);
        }
        if finished {
            self.forget(id, 0..envelope.recipients.len() as u32);
        }
    }

    /// Drops what this shard remembers of a finished (or deleted) message: its open
    /// entry and the attempt counts of `rcpts`. By key, not by a scan of every deferred
    /// recipient: a large retry backlog must not make each finished message cost more.
    fn forget(&self, id: QueueId, rcpts: impl IntoIterator<Item = u32>) {
        self.open.borrow_mut().remove(&id);
        let mut attempts = self.attempts.borrow_mut();
        for i in rcpts {
            attempts.remove(&(id, i));
        }
    }

    /// What to remember of a message from its first report on: its recipients not final.
    fn open_entry(&self, id: QueueId) -> Open {
        let remaining = self.log.with_index(|ix| {
            ix.get(id).map_or(0, |e| {
                e.rcpt_states.iter().filter(|s| !s.is_final()).count()
            })
        });
        Open {
            remaining,
            ..Open::default()
        }
    }

    /// Marks a recipient final; returns (not seen before, it was the last one).
    fn mark_final(&self, id: QueueId, index: u32) -> (bool, bool) {
        let mut open = self.open.borrow_mut();
        let o = open.entry(id).or_insert_with(|| self.open_entry(id));
        if !o.finals.insert(index) {
            return (false, false);
        }
        o.remaining = o.remaining.saturating_sub(1);
        (true, o.remaining == 0)
    }

    /// NOTIFY=SUCCESS and the next hop did not take the DSN parameters: we say "relayed"
    /// (RFC 3464 2.3.3), as the final MTA will not. One DSN for the recipients of a report.
    async fn success_notice(&self, v: &Reported<'_>) {
        let rcpts = v.notice_rcpts(OutcomeKind::Delivered, |n| {
            n.is_some_and(|n| n & notify::SUCCESS != 0)
        });
        if rcpts.is_empty() || v.envelope.sender.is_empty() {
            return;
        }
        self.send_dsn(v.id, v.envelope, v.now, rcpts).await;
    }

    /// A deferred recipient's next attempt: exponential backoff from `retry_initial` up
    /// to `retry_max`, with jitter.
    fn retry_time(&self, id: QueueId, index: u32, now: u64) -> u64 {
        let attempt = {
            let mut a = self.attempts.borrow_mut();
            let n = a.entry((id, index)).or_insert(0);
            *n += 1;
            *n
        };
        let base = self
            .cfg
            .retry_initial
            .saturating_mul(1u32 << (attempt - 1).min(20))
            .min(self.cfg.retry_max);
        now + self.jitter(base).as_micros() as u64
    }

    fn jitter(&self, d: Duration) -> Duration {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64; // 0..1
        d.mul_f64(1.0 + JITTER_FRACTION * (2.0 * unit - 1.0))
    }

    /// The first deferral of a message older than `delay_warning`: one "delayed" DSN for
    /// the deferred recipients of that report that did not say NOTIFY=NEVER (or left
    /// DELAY out).
    async fn delay_warning(&self, v: &Reported<'_>) {
        if v.envelope.sender.is_empty() {
            return;
        }
        let rcpts = v.notice_rcpts(OutcomeKind::Deferred, |n| {
            n.is_none_or(|n| n & notify::DELAY != 0)
        });
        if rcpts.is_empty() {
            return;
        }
        let first = {
            let mut open = self.open.borrow_mut();
            let o = open.entry(v.id).or_insert_with(|| self.open_entry(v.id));
            !std::mem::replace(&mut o.delay_warned, true)
        };
        if first {
            self.send_dsn(v.id, v.envelope, v.now, rcpts).await;
        }
    }

    /// When the last recipient is final: a DSN for the failed ones that asked for it.
    async fn bounce_if_needed(&self, id: QueueId, envelope: &Envelope, _arrival: u64, now: u64) {
        let failures = self
            .open
            .borrow_mut()
            .get_mut(&id)
            .map(|o| std::mem::take(&mut o.failures))
            .unwrap_or_default();
        if failures.is_empty() {
            return;
        }
        if envelope.sender.is_empty() {
            for f in &failures {
                let to = envelope
                    .recipients
                    .get(f.index as usize)
                    .map_or("", |r| r.address.as_str());
                log::warn!("{id}: bounce to <{to}> failed too ({}); dropped, as no bounce is sent for a bounce", f.reply);
            }
            return;
        }
        let rcpts: Vec<DsnRcpt<'_>> = failures
            .iter()
            .filter_map(|f| {
                let r = envelope.recipients.get(f.index as usize)?;
                let wants = r.notify.is_none_or(|n| n & notify::FAILURE != 0);
                wants.then(|| DsnRcpt {
                    address: &r.address,
                    orcpt: r.orcpt.as_deref(),
                    action: "failed",
                    status: f.status.clone(),
                    diagnostic: &f.reply,
                    remote: f.remote.as_deref(),
                })
            })
            .collect();
        if !rcpts.is_empty() {
            self.send_dsn(id, envelope, now, rcpts).await;
        }
    }

    /// Builds a DSN about `id` for `rcpts`, stores it from `<>` to the sender, routes it.
    async fn send_dsn(&self, id: QueueId, envelope: &Envelope, now: u64, rcpts: Vec<DsnRcpt<'_>>) {
        let Some((segment, offset, len, arrival)) = self.log.with_index(|ix| {
            ix.get(id).map(|e| {
                (
                    e.home,
                    e.content_offset(),
                    e.message.content_len,
                    e.message.arrival_micros,
                )
            })
        }) else {
            return;
        };
        let Some(path) = self.log.segment_path(segment) else {
            return;
        };
        let original = match read_content(&path, offset, len).await {
            Ok(c) => c,
            Err(e) => {
                log::error!("{id}: cannot read the message for its DSN: {e}");
                return;
            }
        };
        let id_text = id.to_string();
        let dsn = bounce::build(&Dsn {
            hostname: &self.hostname,
            queue_id: &id_text,
            envid: envelope.envid.as_deref(),
            arrival_secs: arrival / 1_000_000,
            now_secs: now / 1_000_000,
            sender: &envelope.sender,
            ret: envelope.ret,
            rcpts,
            original: &original,
        });
        let dsn_envelope = Envelope {
            sender: String::new(),
            smtputf8: envelope.sender.bytes().any(|b| b >= 0x80),
            eight_bit: dsn.iter().any(|&b| b >= 0x80),
            recipients: vec![Recipient {
                address: envelope.sender.clone(),
                orcpt: None,
                notify: None,
            }],
            ..Envelope::default()
        };
        let dsn_id = self.log.next_id();
        let ticket = self.log.append_message(&NewMessage {
            id: dsn_id,
            arrival_micros: now,
            client: "127.0.0.1",
            helo: &self.hostname,
            envelope: Rc::new(dsn_envelope),
            received: b"",
            content: &dsn,
        });
        match ticket.wait().await {
            Ok(()) => {
                log::info!(
                    "{id}: sender notification: {dsn_id} to <{}>",
                    envelope.sender
                );
                // Safe to call without Rc<Self>: routing happens on its own task.
                self.route_later(dsn_id);
            }
            Err(e) => log::error!("{id}: cannot queue the DSN: {e:?}"),
        }
    }

    fn route_later(&self, id: QueueId) {
        self.schedule(id, 0, 0);
    }
}

/// A report's outcomes, as its notices (relayed, delayed) are made from them.
struct Reported<'a> {
    id: QueueId,
    outcomes: &'a [Outcome],
    remote: Option<&'a str>,
    envelope: &'a Envelope,
    now: u64,
}

impl<'a> Reported<'a> {
    /// The DSN lines for the outcomes of `kind` whose recipient's NOTIFY asks for them.
    fn notice_rcpts(
        &self,
        kind: OutcomeKind,
        wants: impl Fn(Option<u8>) -> bool,
    ) -> Vec<DsnRcpt<'a>> {
        let relayed = kind == OutcomeKind::Delivered;
        self.outcomes
            .iter()
            .filter(|o| o.kind == kind)
            .filter_map(|o| {
                let r = self.envelope.recipients.get(o.rcpt as usize)?;
                wants(r.notify).then(|| DsnRcpt {
                    address: &r.address,
                    orcpt: r.orcpt.as_deref(),
                    action: if relayed { "relayed" } else { "delayed" },
                    status: if relayed {
                        "2.0.0".into()
                    } else {
                        bounce::status_of(&o.reply, false)
                    },
                    diagnostic: &o.reply,
                    remote: self.remote,
                })
            })
            .collect()
    }
}

struct Snapshot {
    segment: Arc<PathBuf>,
    content_offset: u64,
    content_len: u64,
    envelope: Rc<Envelope>,
    rcpts: Vec<JobRcpt>,
}

/// Reads message content from a log segment (through the shard's ring).
pub async fn read_content(
    path: &std::path::Path,
    offset: u64,
    len: u64,
) -> std::io::Result<Vec<u8>> {
    let f = crate::queue::open_segment_for_reading(path).await?;
    let r = f
        .read_at(offset, len as usize)
        .await
        .map_err(std::io::Error::from);
    let _ = f.close().await;
    Ok(r?.to_vec())
}
