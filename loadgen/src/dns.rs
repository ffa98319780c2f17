//! `loadgen dns`: an authoritative DNS server for tests, on UDP and TCP, answering from a
//! small zone: MX, A, AAAA, CNAME, null MX, and on purpose NXDOMAIN, SERVFAIL, truncation
//! (to force TCP), delays and dropped queries. Wire format by hickory-proto.
//!
//! Zone file lines (`#` starts a comment):
//!   example.test   MX 10 mx1.example.test
//!   mx1.example.test A 127.0.0.1
//!   v6.test        AAAA ::1
//!   alias.test     CNAME example.test
//!   nullmx.test    MX 0 .
//!   gone.test      NXDOMAIN
//!   broken.test    SERVFAIL
//!   big.test       TRUNCATE        (UDP answers carry TC and no records)
//!   slow.test      DELAY 2s        (before answering)
//!   silent.test    DROP            (never answers)
//!   junk.test      GARBAGE         (answers with bytes that are not DNS)
//!   forged.test    WRONGID         (answers with another query id)

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, UdpSocket};
use glommio::{LocalExecutorBuilder, Placement};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest UDP answer without EDNS (RFC 1035 4.2.1).
const UDP_PAYLOAD_MAX: usize = 512;
/// A CNAME chain longer than this is a loop.
const CNAME_CHAIN_MAX: usize = 8;
const TCP_MESSAGE_MAX: usize = 65_535;

#[derive(Debug, Clone, Default)]
pub struct Zone {
    records: HashMap<String, Vec<RData>>,
    nxdomain: HashSet<String>,
    servfail: HashSet<String>,
    truncate: HashSet<String>,
    drop: HashSet<String>,
    garbage: HashSet<String>,
    wrong_id: HashSet<String>,
    delay: HashMap<String, Duration>,
    pub ttl: u32,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn dns_name(s: &str) -> Result<Name, String> {
    let fqdn = if s.ends_with('.') {
        s.to_string()
    } else {
        format!("{s}.")
    };
    Name::from_ascii(&fqdn).map_err(|e| format!("bad name {s:?}: {e}"))
}

impl Zone {
    pub fn new(ttl: u32) -> Zone {
        Zone {
            ttl,
            ..Zone::default()
        }
    }

    /// One zone line: `name TYPE data...`.
    pub fn add_line(&mut self, line: &str) -> Result<(), String> {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            return Ok(());
        }
        let mut w = line.split_whitespace();
        let (Some(name), Some(kind)) = (w.next(), w.next()) else {
            return Err(format!("zone line {line:?}: expected `name TYPE data`"));
        };
        let rest: Vec<&str> = w.collect();
        let name = key(name);
        let bad = || format!("zone line {line:?}: bad data");
        match kind.to_ascii_uppercase().as_str() {
            "MX" => {
                let [pref, host] = rest.as_slice() else {
                    return Err(bad());
                };
                let pref: u16 = pref.parse().map_err(|_| bad())?;
                let exchange = if *host == "." {
                    Name::root()
                } else {
                    dns_name(host)?
                };
                self.add(name, RData::MX(MX::new(pref, exchange)));
            }
            "A" => {
                let ip = rest.first().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                self.add(name, RData::A(A(ip)));
            }
            "AAAA" => {
                let ip = rest.first().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                self.add(name, RData::AAAA(AAAA(ip)));
            }
            "CNAME" => {
                let target = dns_name(rest.first().ok_or_else(bad)?)?;
                self.add(name, RData::CNAME(CNAME(target)));
            }
            "NXDOMAIN" => {
                self.nxdomain.insert(name);
            }
            "SERVFAIL" => {
                self.servfail.insert(name);
            }
            "TRUNCATE" => {
                self.truncate.insert(name);
            }
            "DROP" => {
                self.drop.insert(name);
            }
            "GARBAGE" => {
                self.garbage.insert(name);
            }
            "WRONGID" => {
                self.wrong_id.insert(name);
            }
            "DELAY" => {
                let d = rest
                    .first()
                    .ok_or_else(bad)
                    .and_then(|d| ringpost::config::duration::parse(d))?;
                self.delay.insert(name, d);
            }
            other => return Err(format!("zone line {line:?}: unknown type {other}")),
        }
        Ok(())
    }

    fn add(&mut self, name: String, data: RData) {
        self.records.entry(name).or_default().push(data);
    }

    /// `--mx domain=host:pref`
    pub fn add_mx_flag(&mut self, v: &str) -> Result<(), String> {
        let (domain, rest) = v
            .split_once('=')
            .ok_or_else(|| format!("--mx {v:?}: use domain=host:pref"))?;
        let (host, pref) = rest.rsplit_once(':').unwrap_or((rest, "10"));
        self.add_line(&format!("{domain} MX {pref} {host}"))
    }

    /// `--a host=ip` (A or AAAA by the address).
    pub fn add_addr_flag(&mut self, v: &str) -> Result<(), String> {
        let (host, ip) = v
            .split_once('=')
            .ok_or_else(|| format!("--a {v:?}: use host=ip"))?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("--a {v:?}: bad address"))?;
        let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
        self.add_line(&format!("{host} {kind} {ip}"))
    }

    /// The response to a query: None means "do not answer".
    fn answer(&self, query: &Message, over_udp: bool) -> Option<Message> {
        let q = query.queries.first()?;
        let name = key(&q.name().to_ascii());
        if self.drop.contains(&name) {
            return None;
        }
        let id = if self.wrong_id.contains(&name) {
            query.metadata.id ^ 0x5A5A
        } else {
            query.metadata.id
        };
        let mut resp = Message::new(id, MessageType::Response, OpCode::Query);
        resp.metadata.recursion_desired = query.metadata.recursion_desired;
        resp.metadata.authoritative = true;
        resp.add_query(q.clone());
        if self.servfail.contains(&name) {
            resp.metadata.response_code = ResponseCode::ServFail;
            return Some(resp);
        }
        if over_udp && self.truncate.contains(&name) {
            resp.metadata.truncation = true;
            return Some(resp);
        }
        let qtype = q.query_type();
        let mut current = name.clone();
        let mut current_name = q.name().clone();
        for _ in 0..CNAME_CHAIN_MAX {
            if self.nxdomain.contains(&current) {
                resp.metadata.response_code = ResponseCode::NXDomain;
                return Some(resp);
            }
            let Some(rdatas) = self.records.get(&current) else {
                resp.metadata.response_code = ResponseCode::NXDomain;
                return Some(resp);
            };
            let matching: Vec<&RData> =
                rdatas.iter().filter(|r| r.record_type() == qtype).collect();
            if !matching.is_empty() {
                for r in matching {
                    resp.add_answer(Record::from_rdata(
                        current_name.clone(),
                        self.ttl,
                        r.clone(),
                    ));
                }
                return Some(resp);
            }
            let cname = rdatas.iter().find_map(|r| match r {
                RData::CNAME(c) if qtype != RecordType::CNAME => Some(c.0.clone()),
                _ => None,
            });
            match cname {
                Some(target) => {
                    resp.add_answer(Record::from_rdata(
                        current_name.clone(),
                        self.ttl,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    current = key(&target.to_ascii());
                    current_name = target;
                }
                // The name exists with other types: NOERROR, no answers (NODATA).
                None => return Some(resp),
            }
        }
        Some(resp)
    }

    fn garbage_for(&self, query: &Message) -> bool {
        query
            .queries
            .first()
            .is_some_and(|q| self.garbage.contains(&key(&q.name().to_ascii())))
    }

    fn delay_for(&self, query: &Message) -> Option<Duration> {
        let q = query.queries.first()?;
        self.delay.get(&key(&q.name().to_ascii())).copied()
    }
}

/// Counters for the exit report.
#[derive(Default)]
pub struct DnsStats {
    pub udp_queries: AtomicU64,
    pub tcp_queries: AtomicU64,
    pub malformed: AtomicU64,
}

pub struct DnsServer {
    pub zone: Zone,
    pub listen: SocketAddr,
    pub stats: DnsStats,
    pub stop: AtomicBool,
}

impl DnsServer {
    /// Serves UDP and TCP on one executor until `stop`.
    pub fn run(self: &Arc<Self>, ready: impl FnOnce()) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let me = Arc::clone(self);
        let h = LocalExecutorBuilder::new(Placement::Unbound)
            .name("dns")
            .spawn(move || async move { me.serve(tx).await })
            .map_err(|e| format!("cannot start the DNS executor: {e}"))?;
        match rx.recv() {
            Ok(Ok(())) => ready(),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the DNS executor died at start".into()),
        }
        h.join().map_err(|e| format!("dns failed: {e}"))
    }

    async fn serve(self: Arc<Self>, tx: std::sync::mpsc::Sender<Result<(), String>>) {
        let udp = match UdpSocket::bind(self.listen) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                let _ = tx.send(Err(format!("cannot bind UDP {}: {e}", self.listen)));
                return;
            }
        };
        let tcp = match TcpListener::bind(self.listen) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(format!("cannot bind TCP {}: {e}", self.listen)));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        let me = Arc::clone(&self);
        let u = glommio::spawn_local(async move {
            let mut buf = vec![0u8; TCP_MESSAGE_MAX];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                me.stats.udp_queries.fetch_add(1, Ordering::Relaxed);
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    me.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let me = Arc::clone(&me);
                let udp = Rc::clone(&udp);
                glommio::spawn_local(async move {
                    if let Some(d) = me.zone.delay_for(&query) {
                        glommio::timer::sleep(d).await;
                    }
                    if me.zone.garbage_for(&query) {
                        let _ = udp
                            .send_to(b"\x12\x34 this is not a DNS message", peer)
                            .await;
                        return;
                    }
                    if let Some(resp) = me.zone.answer(&query, true) {
                        let bytes = match resp.to_vec() {
                            // Too big for plain UDP: say so (TC) and let the client use TCP.
                            Ok(b) if b.len() > UDP_PAYLOAD_MAX => {
                                let mut t = resp.truncate();
                                t.metadata.truncation = true;
                                t.to_vec()
                            }
                            other => other,
                        };
                        if let Ok(bytes) = bytes {
                            let _ = udp.send_to(&bytes, peer).await;
                        }
                    }
                })
                .detach();
            }
        });
        let me = Arc::clone(&self);
        let t = glommio::spawn_local(async move {
            loop {
                let Ok(mut stream) = tcp.accept().await else {
                    continue;
                };
                let me = Arc::clone(&me);
                glommio::spawn_local(async move {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    loop {
                        let mut len = [0u8; 2];
                        if stream.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if stream.read_exact(&mut msg).await.is_err() {
                            return;
                        }
                        me.stats.tcp_queries.fetch_add(1, Ordering::Relaxed);
                        let Ok(query) = Message::from_vec(&msg) else {
                            me.stats.malformed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        if let Some(d) = me.zone.delay_for(&query) {
                            glommio::timer::sleep(d).await;
                        }
                        let Some(resp) = me.zone.answer(&query, false) else {
                            continue;
                        };
                        let Ok(bytes) = resp.to_vec() else { return };
                        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&bytes);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                })
                .detach();
            }
        });
        while !self.stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        u.cancel().await;
        t.cancel().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn zone() -> Zone {
        let mut z = Zone::new(60);
        for l in [
            "example.test MX 10 mx1.example.test",
            "example.test MX 20 mx2.example.test",
            "mx1.example.test A 127.0.0.1",
            "v6.test AAAA ::1",
            "alias.test CNAME example.test",
            "loop1.test CNAME loop2.test",
            "loop2.test CNAME loop1.test",
            "nullmx.test MX 0 .",
            "gone.test NXDOMAIN",
            "broken.test SERVFAIL",
            "big.test TRUNCATE",
            "big.test MX 10 mx1.example.test",
            "silent.test DROP",
        ] {
            z.add_line(l).unwrap();
        }
        z
    }

    fn ask(z: &Zone, name: &str, t: RecordType, udp: bool) -> Option<Message> {
        let mut q = Message::query();
        q.metadata.id = 7;
        q.add_query(Query::query(dns_name(name).unwrap(), t));
        z.answer(&q, udp)
    }

    #[test]
    fn answers() {
        let z = zone();
        let r = ask(&z, "Example.Test", RecordType::MX, true).unwrap();
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.answers.len(), 2);
        let r = ask(&z, "mx1.example.test", RecordType::A, true).unwrap();
        assert!(matches!(r.answers[0].data, RData::A(A(ip)) if ip.to_string() == "127.0.0.1"));
        assert_eq!(
            ask(&z, "v6.test", RecordType::AAAA, true)
                .unwrap()
                .answers
                .len(),
            1
        );
        // NODATA: the name exists, not with this type.
        let r = ask(&z, "mx1.example.test", RecordType::MX, true).unwrap();
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0)
        );
        let r = ask(&z, "alias.test", RecordType::MX, true).unwrap();
        assert_eq!(r.answers.len(), 3, "CNAME then the target's two MX");
        let r = ask(&z, "loop1.test", RecordType::A, true).unwrap();
        assert_eq!(r.answers.len(), CNAME_CHAIN_MAX);
        let r = ask(&z, "nullmx.test", RecordType::MX, true).unwrap();
        assert!(matches!(&r.answers[0].data, RData::MX(mx) if mx.exchange.is_root()));
        assert_eq!(
            ask(&z, "gone.test", RecordType::MX, true)
                .unwrap()
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask(&z, "unknown.test", RecordType::MX, true)
                .unwrap()
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask(&z, "broken.test", RecordType::MX, true)
                .unwrap()
                .metadata
                .response_code,
            ResponseCode::ServFail
        );
        let r = ask(&z, "big.test", RecordType::MX, true).unwrap();
        assert!(r.metadata.truncation && r.answers.is_empty());
        assert_eq!(
            ask(&z, "big.test", RecordType::MX, false)
                .unwrap()
                .answers
                .len(),
            1
        );
        assert!(ask(&z, "silent.test", RecordType::MX, true).is_none());
    }

    #[test]
    fn bad_lines() {
        let mut z = Zone::new(60);
        assert!(z.add_line("x.test MX ten host").is_err());
        assert!(z.add_line("x.test BOGUS 1").is_err());
        assert!(z.add_line("x.test").is_err());
        assert!(z.add_line("# comment only").is_ok());
        assert!(z.add_mx_flag("d.test=mx.test:5").is_ok());
        assert!(z.add_addr_flag("mx.test=::1").is_ok());
        assert!(z.add_addr_flag("mx.test").is_err());
    }
}
