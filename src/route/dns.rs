//! DNS for delivery: hickory-proto messages over the shard's own glommio sockets (UDP,
//! TCP when the answer is truncated), with a per-shard TTL cache and a negative cache.
//! Each query uses its own ephemeral UDP socket, so answers cannot be confused across
//! queries and a forged answer must also match the id and the server's address.

use crate::shard::local::Latch;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpStream, UdpSocket};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A CNAME chain longer than this is treated as a loop.
pub const CNAME_CHAIN_MAX: usize = 8;
/// Largest answer read over UDP (EDNS is not used, so 512 is the norm; read more anyway).
const UDP_ANSWER_BYTES_MAX: usize = 4096;
/// Entries kept per shard; past this the cache is cleared (cheap, and rare).
const CACHE_ENTRIES_MAX: usize = 100_000;
/// Upper bound on any cached TTL.
const TTL_MAX: Duration = Duration::from_secs(86_400);
/// How long a failed lookup (timeout, SERVFAIL) is answered from memory.
const FAILURE_TTL: Duration = Duration::from_secs(1);

/// What a name has for a type, after following CNAMEs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Records(Vec<RData>),
    /// The name exists but has no record of this type.
    NoData,
    NxDomain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    ServFail,
    Timeout,
    /// A reply that does not parse, or a refused query.
    Bad(String),
    CnameLoop,
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::ServFail => f.write_str("SERVFAIL"),
            DnsError::Timeout => f.write_str("timeout"),
            DnsError::Bad(e) => write!(f, "bad answer: {e}"),
            DnsError::CnameLoop => f.write_str("CNAME loop"),
        }
    }
}

/// A cache key: the lowercase name without its final dot, and the record type.
type Question = (String, RecordType);

pub struct Resolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: u32,
    negative_ttl: Duration,
    cache: RefCell<HashMap<Question, (Instant, Answer)>>,
    /// Questions on the wire: everyone else asking the same waits for that answer, so a
    /// burst of mail to one domain makes one query, not one per message.
    inflight: RefCell<HashMap<Question, Rc<Latch<()>>>>,
    /// Recent failures (timeout, SERVFAIL), briefly remembered for the same reason.
    failed: RefCell<HashMap<Question, (Instant, DnsError)>>,
    next_id: Cell<u16>,
    pub stats: Cell<DnsStats>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DnsStats {
    pub queries: u64,
    pub cache_hits: u64,
    pub failures: u64,
}

/// The name servers of /etc/resolv.conf (port 53), or loopback if there are none.
pub fn system_servers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if servers.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 53))]
    } else {
        servers
    }
}

fn fqdn(name: &str) -> Result<Name, DnsError> {
    let n = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    Name::from_ascii(&n).map_err(|e| DnsError::Bad(format!("{name}: {e}")))
}

fn key(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

impl Resolver {
    pub fn new(
        servers: Vec<SocketAddr>,
        timeout: Duration,
        attempts: u32,
        negative_ttl: Duration,
        seed: u16,
    ) -> Resolver {
        Resolver {
            servers,
            timeout,
            attempts,
            negative_ttl,
            cache: RefCell::new(HashMap::new()),
            inflight: RefCell::new(HashMap::new()),
            failed: RefCell::new(HashMap::new()),
            next_id: Cell::new(seed),
            stats: Cell::new(DnsStats::default()),
        }
    }

    fn count(&self, f: impl FnOnce(&mut DnsStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Records of `t` for `name`, following CNAMEs, from the cache or the servers.
    pub async fn lookup(&self, name: &str, t: RecordType) -> Result<Answer, DnsError> {
        let mut current = fqdn(name)?;
        for _ in 0..CNAME_CHAIN_MAX {
            let k = (key(&current), t);
            if let Some((expires, answer)) = self.cache.borrow().get(&k) {
                if *expires > Instant::now() {
                    self.count(|s| s.cache_hits += 1);
                    match answer {
                        Answer::Records(r) if t != RecordType::CNAME => {
                            if let Some(RData::CNAME(c)) = r.first() {
                                current = c.0.clone();
                                continue;
                            }
                        }
                        _ => {}
                    }
                    return Ok(answer.clone());
                }
            }
            let recent_failure = self
                .failed
                .borrow()
                .get(&k)
                .filter(|(until, _)| *until > Instant::now())
                .map(|(_, e)| e.clone());
            if let Some(e) = recent_failure {
                return Err(e);
            }
            let waiting = self.inflight.borrow().get(&k).cloned();
            if let Some(latch) = waiting {
                latch.wait().await;
                continue;
            }
            let latch = Rc::new(Latch::default());
            self.inflight
                .borrow_mut()
                .insert(k.clone(), Rc::clone(&latch));
            let result = self.query(&current, t).await;
            let absorbed = result.and_then(|reply| self.absorb(&current, t, &reply));
            self.inflight.borrow_mut().remove(&k);
            latch.set(());
            let next = match absorbed {
                Ok(next) => next,
                Err(e) => {
                    self.count(|s| s.failures += 1);
                    let mut failed = self.failed.borrow_mut();
                    if failed.len() > CACHE_ENTRIES_MAX {
                        failed.clear();
                    }
                    failed.insert(k, (Instant::now() + FAILURE_TTL, e.clone()));
                    return Err(e);
                }
            };
            match next {
                Some(next) => current = next,
                None => {
                    let cached = self.cache.borrow().get(&k).map(|(_, a)| a.clone());
                    return Ok(cached.unwrap_or(Answer::NoData));
                }
            }
        }
        Err(DnsError::CnameLoop)
    }

    /// Caches what a reply says about `name`; returns the CNAME target to follow, if the
    /// reply does not already hold the answer.
    fn absorb(
        &self,
        name: &Name,
        t: RecordType,
        reply: &Message,
    ) -> Result<Option<Name>, DnsError> {
        let now = Instant::now();
        let mut cache = self.cache.borrow_mut();
        if cache.len() > CACHE_ENTRIES_MAX {
            cache.clear();
        }
        match reply.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => {
                cache.insert((key(name), t), (now + self.negative_ttl, Answer::NxDomain));
                return Ok(None);
            }
            ResponseCode::ServFail => return Err(DnsError::ServFail),
            other => return Err(DnsError::Bad(format!("response code {other}"))),
        }
        // Walk the chain inside the answer section.
        let mut current = name.clone();
        for _ in 0..CNAME_CHAIN_MAX {
            let here: Vec<_> = reply
                .answers
                .iter()
                .filter(|r| key(&r.name) == key(&current))
                .collect();
            let wanted: Vec<RData> = here
                .iter()
                .filter(|r| r.record_type() == t)
                .map(|r| r.data.clone())
                .collect();
            if !wanted.is_empty() {
                let ttl = here.iter().map(|r| r.ttl).min().unwrap_or(0);
                let expires = now + Duration::from_secs(u64::from(ttl)).min(TTL_MAX);
                cache.insert((key(&current), t), (expires, Answer::Records(wanted)));
                if current != *name {
                    // The caller looks the original name up again and follows the CNAME.
                    return Ok(Some(current));
                }
                return Ok(None);
            }
            let cname = here.iter().find_map(|r| match &r.data {
                RData::CNAME(c) => Some((c.0.clone(), r.ttl)),
                _ => None,
            });
            match cname {
                Some((target, ttl)) => {
                    let expires = now + Duration::from_secs(u64::from(ttl)).min(TTL_MAX);
                    cache.insert(
                        (key(&current), t),
                        (
                            expires,
                            Answer::Records(vec![RData::CNAME(hickory_proto::rr::rdata::CNAME(
                                target.clone(),
                            ))]),
                        ),
                    );
                    current = target;
                }
                None => {
                    if current == *name {
                        cache.insert((key(name), t), (now + self.negative_ttl, Answer::NoData));
                        return Ok(None);
                    }
                    // The chain leaves the answer: look the target up.
                    return Ok(Some(current));
                }
            }
        }
        Err(DnsError::CnameLoop)
    }

    /// Feeds an arbitrary answer to the cache logic, as if it had come for its own first
    /// question (for fuzzing the reply handling without sockets).
    pub fn absorb_untrusted(&self, bytes: &[u8]) {
        let Ok(m) = Message::from_vec(bytes) else {
            return;
        };
        let Some(q) = m.queries.first() else { return };
        let _ = self.absorb(q.name(), q.query_type(), &m);
    }

    /// One question to the servers, in turn, `attempts` rounds; TCP when truncated.
    async fn query(&self, name: &Name, t: RecordType) -> Result<Message, DnsError> {
        let mut last = DnsError::Timeout;
        for _ in 0..self.attempts {
            for server in &self.servers {
                self.count(|s| s.queries += 1);
                let id = self.next_id.get().wrapping_mul(25_173).wrapping_add(13_849);
                self.next_id.set(id);
                let mut q = Message::query();
                q.metadata.id = id;
                q.metadata.recursion_desired = true;
                q.add_query(Query::query(name.clone(), t));
                let bytes = q.to_vec().map_err(|e| DnsError::Bad(e.to_string()))?;
                match self.udp(*server, id, &bytes).await {
                    Ok(m) if m.metadata.truncation => match self.tcp(*server, id, &bytes).await {
                        Ok(m) => return Ok(m),
                        Err(e) => last = e,
                    },
                    Ok(m) if m.metadata.response_code == ResponseCode::ServFail => {
                        last = DnsError::ServFail
                    }
                    Ok(m) => return Ok(m),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    async fn udp(&self, server: SocketAddr, id: u16, query: &[u8]) -> Result<Message, DnsError> {
        let local: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let sock = UdpSocket::bind(local).map_err(|e| DnsError::Bad(e.to_string()))?;
        sock.send_to(query, server)
            .await
            .map_err(|e| DnsError::Bad(e.to_string()))?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = vec![0u8; UDP_ANSWER_BYTES_MAX];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DnsError::Timeout);
            }
            let got = glommio::timer::timeout(left, async { sock.recv_from(&mut buf).await }).await;
            let Ok((n, from)) = got else {
                return Err(DnsError::Timeout);
            };
            if from != server {
                continue;
            }
            // Answers with another id or garbage are ignored: a forger must also guess.
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == id && m.queries.len() <= 1 => return Ok(m),
                _ => continue,
            }
        }
    }

    async fn tcp(&self, server: SocketAddr, id: u16, query: &[u8]) -> Result<Message, DnsError> {
        let timeout = self.timeout;
        let work = async {
            let mut s = TcpStream::connect_timeout(server, timeout)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(query);
            s.write_all(&framed).await?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let buf = glommio::timer::timeout(timeout, async {
            work.await.map_err(glommio::GlommioError::from)
        })
        .await
        .map_err(|_| DnsError::Timeout)?;
        match Message::from_vec(&buf) {
            Ok(m) if m.metadata.id == id => Ok(m),
            Ok(_) => Err(DnsError::Bad("id mismatch over TCP".into())),
            Err(e) => Err(DnsError::Bad(e.to_string())),
        }
    }

    /// A and AAAA addresses of a host (A first).
    pub async fn addresses(&self, host: &str) -> Result<Answer, DnsError> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Answer::Records(vec![match ip {
                IpAddr::V4(v4) => RData::A(hickory_proto::rr::rdata::A(v4)),
                IpAddr::V6(v6) => RData::AAAA(hickory_proto::rr::rdata::AAAA(v6)),
            }]));
        }
        let a = self.lookup(host, RecordType::A).await?;
        let aaaa = self
            .lookup(host, RecordType::AAAA)
            .await
            .unwrap_or(Answer::NoData);
        Ok(match (a, aaaa) {
            (Answer::Records(mut x), Answer::Records(y)) => {
                x.extend(y);
                Answer::Records(x)
            }
            (Answer::Records(x), _) | (_, Answer::Records(x)) => Answer::Records(x),
            (Answer::NxDomain, _) => Answer::NxDomain,
            _ => Answer::NoData,
        })
    }
}

/// The IP addresses in an answer.
pub fn ips(records: &[RData]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|r| match r {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}
