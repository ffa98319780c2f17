//! The relay's address tables, built once from the config: who may relay to where, the
//! forward table, mailing lists. Lookups are case-insensitive; keys are stored lowercase.

use crate::config::{Cidr, Config, Expn, ForwardMode, Vrfy};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

#[derive(Debug, Clone)]
pub struct Policy {
    relay_exact: HashSet<String>,
    /// ".example.test" entries: match any subdomain of example.test.
    relay_suffixes: Vec<String>,
    relay_networks: Vec<Cidr>,
    forwards: HashMap<String, (String, ForwardMode)>,
    lists: HashMap<String, Vec<String>>,
    pub max_message_bytes: u64,
    pub max_recipients: u32,
    pub max_hops: u32,
    pub vrfy: Vrfy,
    pub expn: Expn,
}

/// What we know about an address, for RCPT, VRFY and EXPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    Forward(&'a str),
    Moved(&'a str),
    List(&'a [String]),
    Relay,
    Unknown,
}

impl Policy {
    pub fn from_config(c: &Config) -> Policy {
        let p = &c.policy;
        let mut relay_exact = HashSet::new();
        let mut relay_suffixes = Vec::new();
        for d in &p.relay_domains {
            let d = d.to_ascii_lowercase();
            match d.strip_prefix('.') {
                Some(_) => relay_suffixes.push(d),
                None => {
                    relay_exact.insert(d);
                }
            }
        }
        let forwards = c
            .forward
            .iter()
            .map(|f| (f.from.to_ascii_lowercase(), (f.to.clone(), f.mode)))
            .collect();
        let lists = c
            .list
            .iter()
            .map(|l| (l.address.to_ascii_lowercase(), l.members.clone()))
            .collect();
        Policy {
            relay_exact,
            relay_suffixes,
            relay_networks: p.relay_networks.clone(),
            forwards,
            lists,
            max_message_bytes: p.max_message_bytes,
            max_recipients: p.max_recipients,
            max_hops: p.max_hops,
            vrfy: p.vrfy,
            expn: p.expn,
        }
    }

    /// May this client relay to any domain (and use ETRN, and EXPN when "trusted")?
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.relay_networks.iter().any(|n| n.contains(ip))
    }

    pub fn is_relay_domain(&self, domain: &str) -> bool {
        let d = domain.to_ascii_lowercase();
        self.relay_exact.contains(&d) || self.relay_suffixes.iter().any(|s| d.ends_with(s.as_str()))
    }

    /// Looks up a full address (`local@domain`).
    pub fn lookup(&self, address: &str) -> Lookup<'_> {
        let key = address.to_ascii_lowercase();
        if let Some((to, mode)) = self.forwards.get(&key) {
            return match mode {
                ForwardMode::Forward => Lookup::Forward(to),
                ForwardMode::Moved => Lookup::Moved(to),
            };
        }
        if let Some(members) = self.lists.get(&key) {
            return Lookup::List(members);
        }
        match address.rsplit_once('@') {
            Some((_, domain)) if self.is_relay_domain(domain) => Lookup::Relay,
            _ => Lookup::Unknown,
        }
    }

    /// For VRFY/EXPN with a bare name: the table entries whose local part matches.
    pub fn entries_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        let mut found: Vec<&str> = self
            .forwards
            .keys()
            .chain(self.lists.keys())
            .filter(|k| k.split_once('@').is_some_and(|(local, _)| local == name))
            .map(String::as_str)
            .collect();
        found.sort_unstable();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let c = Config::parse(
            r#"
[[listen]]
addr = "127.0.0.1:2525"
[policy]
relay_domains = ["example.test", ".sub.test"]
relay_networks = ["10.0.0.0/8"]
[[forward]]
from = "old@example.test"
to = "new@elsewhere.test"
[[forward]]
from = "gone@example.test"
to = "there@elsewhere.test"
mode = "moved"
[[list]]
address = "team@example.test"
members = ["a@one.test", "b@two.test"]
[[list]]
address = "team@other.test"
members = ["c@one.test"]
"#,
            "t",
        )
        .unwrap();
        Policy::from_config(&c)
    }

    #[test]
    fn lookups() {
        let p = policy();
        assert_eq!(
            p.lookup("OLD@Example.Test"),
            Lookup::Forward("new@elsewhere.test")
        );
        assert_eq!(
            p.lookup("gone@example.test"),
            Lookup::Moved("there@elsewhere.test")
        );
        assert!(matches!(p.lookup("team@example.test"), Lookup::List(m) if m.len() == 2));
        assert_eq!(p.lookup("anyone@EXAMPLE.test"), Lookup::Relay);
        assert_eq!(p.lookup("x@a.sub.test"), Lookup::Relay);
        assert_eq!(p.lookup("x@sub.test"), Lookup::Unknown);
        assert_eq!(p.lookup("x@nowhere.test"), Lookup::Unknown);
        assert!(p.is_trusted("10.1.2.3".parse().unwrap()));
        assert!(!p.is_trusted("127.0.0.1".parse().unwrap()));
        assert_eq!(
            p.entries_named("team"),
            vec!["team@example.test", "team@other.test"]
        );
        assert_eq!(p.entries_named("old"), vec!["old@example.test"]);
    }
}
