//! Where a recipient's mail goes: the route table (smarthost, LMTP), or the domain's MX
//! hosts. The result is a [`Site`]: the set of hosts a receiver is reached at. Domains
//! that share their MX hosts share a site, and so one ready queue and one connection pool,
//! on the one shard that owns the site (a pure hash of its key).

pub mod dns;

use crate::config::{self, Config, OutboundTls};
use dns::{Answer, DnsError, Resolver};
use hickory_proto::rr::{RData, RecordType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Smtp,
    Lmtp,
}

/// A destination: hosts in the order to try them, and how to speak to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The sorted host set, port and protocol: equal for domains sharing MX hosts.
    pub key: String,
    /// Hosts in preference order (ties in random order).
    pub hosts: Vec<String>,
    /// `hosts[..peers]` share the best preference: each new connection starts at the
    /// next of them in turn, so equal-preference MX hosts (a fleet) share the load.
    pub peers: usize,
    pub port: u16,
    pub protocol: Protocol,
    pub tls: OutboundTls,
}

impl Site {
    fn new(hosts: Vec<String>, port: u16, protocol: Protocol, tls: OutboundTls) -> Site {
        let n = hosts.len();
        Site::with_preferences(hosts.into_iter().zip(0..n as u16), port, protocol, tls)
    }

    /// Hosts with their MX preferences, already in the order to try them.
    fn with_preferences(
        ranked: impl IntoIterator<Item = (String, u16)>,
        port: u16,
        protocol: Protocol,
        tls: OutboundTls,
    ) -> Site {
        let mut ranked: Vec<(String, u16)> = ranked.into_iter().collect();
        ranked.dedup_by(|a, b| a.0 == b.0);
        let best = ranked.first().map(|r| r.1);
        let peers = ranked.iter().take_while(|r| Some(r.1) == best).count();
        let hosts: Vec<String> = ranked.into_iter().map(|r| r.0).collect();
        let mut sorted = hosts.clone();
        sorted.sort();
        sorted.dedup();
        let proto = match protocol {
            Protocol::Smtp => "smtp",
            Protocol::Lmtp => "lmtp",
        };
        let tls_key = match tls {
            OutboundTls::None => "none",
            OutboundTls::Opportunistic => "may",
            OutboundTls::Required => "must",
        };
        Site {
            key: format!("{proto}:{}:{port}:{tls_key}", sorted.join(",")),
            hosts,
            peers,
            port,
            protocol,
            tls,
        }
    }

    /// The hosts to try for the `turn`th connection: the best-preference peers rotated
    /// by `turn`, then the rest in order.
    pub fn connection_order(&self, turn: usize) -> impl Iterator<Item = &str> {
        let peers = self.peers.max(1);
        (0..self.hosts.len()).map(move |i| {
            let j = if i < peers { (i + turn) % peers } else { i };
            self.hosts[j].as_str()
        })
    }

    /// The shard that owns this site: FNV-1a of the key, so every shard agrees.
    pub fn owner(&self, shards: usize) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % shards.max(1) as u64) as usize
    }
}

/// Why a recipient cannot be routed now; the text is an SMTP-style reply for logs and DSNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    Permanent(String),
    Temporary(String),
}

/// Domain -> its static route's site, built once per config (every message to the
/// domain shares it).
type Routes = HashMap<String, Arc<Site>>;

fn routes_of(c: &Config) -> Routes {
    c.route
        .iter()
        .filter_map(|r| {
            let (target, protocol) = match (&r.smarthost, &r.lmtp) {
                (Some(t), None) => (t, Protocol::Smtp),
                (None, Some(t)) => (t, Protocol::Lmtp),
                _ => return None,
            };
            let (host, port) = config::split_host_port(target)?;
            let tls = r.tls.unwrap_or(c.delivery.tls);
            Some((
                r.domain.to_ascii_lowercase(),
                Arc::new(Site::new(vec![host], port, protocol, tls)),
            ))
        })
        .collect()
}

pub struct Router {
    routes: std::cell::RefCell<Routes>,
    default_tls: std::cell::Cell<OutboundTls>,
    pub resolver: Rc<Resolver>,
    port: u16,
    hostname: String,
    listen: Vec<SocketAddr>,
    rng: std::cell::Cell<u64>,
}

impl Router {
    pub fn new(c: &Config, resolver: Rc<Resolver>, seed: u64) -> Router {
        Router {
            routes: std::cell::RefCell::new(routes_of(c)),
            default_tls: std::cell::Cell::new(c.delivery.tls),
            resolver,
            port: c.delivery.port,
            hostname: c.server.hostname.to_ascii_lowercase(),
            listen: c.listen.iter().map(|l| l.addr).collect(),
            rng: std::cell::Cell::new(seed | 1),
        }
    }

    /// SIGHUP: the route table and the default TLS policy from a reloaded config.
    pub fn reconfigure(&self, c: &Config) {
        *self.routes.borrow_mut() = routes_of(c);
        self.default_tls.set(c.delivery.tls);
    }

    fn random(&self) -> u64 {
        // xorshift64: only for shuffling equal MX preferences.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    /// The site for a recipient domain.
    pub async fn route(&self, domain: &str) -> Result<Arc<Site>, RouteError> {
        let domain = domain.to_ascii_lowercase();
        if let Some(site) = self.routes.borrow().get(&domain) {
            return Ok(Arc::clone(site));
        }
        let tls = self.tls_policy(&domain);
        if domain.starts_with('[') {
            // An address literal is its own (only) host.
            let ip = domain.trim_start_matches('[').trim_end_matches(']');
            let ip = ip.strip_prefix("ipv6:").unwrap_or(ip);
            return Ok(Arc::new(Site::new(
                vec![ip.to_string()],
                self.port,
                Protocol::Smtp,
                tls,
            )));
        }
        let hosts = self.mx_hosts(&domain).await?;
        self.check_loop(&domain, &hosts).await?;
        Ok(Arc::new(Site::with_preferences(
            hosts.into_iter().map(|(p, h)| (h, p)),
            self.port,
            Protocol::Smtp,
            tls,
        )))
    }

    /// The TLS policy for a destination domain without a route of its own. This is where
    /// MTA-STS (RFC 8461: `enforce` makes a domain `Required`, checked against the policy's
    /// MX names) and DANE (RFC 7672: TLSA records) plug in; today it is `[delivery] tls`.
    fn tls_policy(&self, _domain: &str) -> OutboundTls {
        self.default_tls.get()
    }

    /// MX hosts by preference (ties shuffled), or the domain itself (implicit MX).
    async fn mx_hosts(&self, domain: &str) -> Result<Vec<(u16, String)>, RouteError> {
        let temp = |e: DnsError| {
            RouteError::Temporary(format!("451 4.4.3 cannot resolve MX of {domain}: {e}"))
        };
        match self
            .resolver
            .lookup(domain, RecordType::MX)
            .await
            .map_err(temp)?
        {
            Answer::NxDomain => Err(RouteError::Permanent(format!(
                "550 5.1.2 {domain}: Host or domain name not found (NXDOMAIN)"
            ))),
            Answer::NoData => match self.resolver.addresses(domain).await.map_err(temp)? {
                Answer::Records(_) => Ok(vec![(0, domain.to_string())]),
                _ => Err(RouteError::Permanent(format!(
                    "550 5.1.2 {domain}: no MX and no address records"
                ))),
            },
            Answer::Records(records) => {
                let mut mx: Vec<(u16, u64, String)> = records
                    .iter()
                    .filter_map(|r| match r {
                        RData::MX(m) => Some((
                            m.preference,
                            self.random(),
                            m.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        )),
                        _ => None,
                    })
                    .collect();
                // RFC 7505: a single MX of "." with preference 0 says "no mail here".
                if mx.len() == 1 && mx[0].2.is_empty() {
                    return Err(RouteError::Permanent(format!(
                        "556 5.1.10 {domain}: domain does not accept mail (null MX)"
                    )));
                }
                mx.retain(|m| !m.2.is_empty());
                if mx.is_empty() {
                    return Err(RouteError::Permanent(format!(
                        "550 5.1.2 {domain}: no usable MX host"
                    )));
                }
                mx.sort();
                Ok(mx.into_iter().map(|(p, _, h)| (p, h)).collect())
            }
        }
    }

    /// Postfix's rule: if the best MX host is this relay, the mail would loop.
    async fn check_loop(&self, domain: &str, hosts: &[(u16, String)]) -> Result<(), RouteError> {
        let Some(best) = hosts.first().map(|h| h.0) else {
            return Ok(());
        };
        for (_, host) in hosts.iter().filter(|h| h.0 == best) {
            let mut is_me = *host == self.hostname;
            if !is_me {
                if let Ok(Answer::Records(r)) = self.resolver.addresses(host).await {
                    is_me = dns::ips(&r).into_iter().any(|ip| {
                        self.listen.iter().any(|l| {
                            l.port() == self.port && (l.ip() == ip || l.ip().is_unspecified())
                        })
                    });
                }
            }
            if is_me {
                return Err(RouteError::Permanent(format!(
                    "554 5.4.6 mail for {domain} loops back to myself"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_share_by_host_set() {
        let a = Site::new(
            vec!["mx2.test".into(), "mx1.test".into()],
            25,
            Protocol::Smtp,
            OutboundTls::Opportunistic,
        );
        let b = Site::new(
            vec!["mx1.test".into(), "mx2.test".into()],
            25,
            Protocol::Smtp,
            OutboundTls::Opportunistic,
        );
        assert_eq!(a.key, b.key);
        assert_eq!(
            a.hosts,
            vec!["mx2.test", "mx1.test"],
            "preference order kept"
        );
        assert_eq!(a.owner(7), b.owner(7));
        assert_eq!(a.peers, 1, "a fixed order has no peers");
        let fleet = Site::with_preferences(
            [
                ("a.test".into(), 10),
                ("b.test".into(), 10),
                ("c.test".into(), 20),
            ],
            25,
            Protocol::Smtp,
            OutboundTls::None,
        );
        assert_eq!(fleet.peers, 2);
        assert_eq!(
            fleet.connection_order(1).collect::<Vec<_>>(),
            ["b.test", "a.test", "c.test"]
        );
        assert_eq!(
            fleet.connection_order(2).collect::<Vec<_>>(),
            ["a.test", "b.test", "c.test"]
        );
        let c = Site::new(
            vec!["mx1.test".into()],
            24,
            Protocol::Lmtp,
            OutboundTls::Opportunistic,
        );
        assert_ne!(a.key, c.key);
        for n in 1..8 {
            assert!(a.owner(n) < n);
        }
    }
}
