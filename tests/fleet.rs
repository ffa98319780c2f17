//! A fleet on one machine: two ringpost nodes on different loopback addresses behind
//! equal-preference MX records from `loadgen dns`, both delivering to one sink. An edge
//! ringpost relays to the fleet by MX, as any sending MTA would. The nodes share nothing:
//! each has its own queue, and either one takes all the mail when the other is drained.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Messages in each phase.
const MESSAGES: u64 = 200;

/// One fleet node: listens on `ip:port`, relays fleet.test to the sink.
fn node(name: &str, ip: &str, port: u16, edge: &Relay) -> Server {
    Server::start(&format!(
        "[[listen]]\naddr = \"{ip}:{port}\"\n\
         [server]\nhostname = \"{name}\"\n\
         [policy]\nrelay_domains = [\"fleet.test\"]\nrelay_networks = [\"127.0.0.0/8\"]\n\
         [[route]]\ndomain = \"fleet.test\"\nsmarthost = \"127.0.0.1:{sink}\"\n\
         [delivery]\ndns = [\"127.0.0.1:{dns}\"]\nport = {sink}\n\
         retry_initial = \"1s\"\nretry_max = \"2s\"\n[tuning]\nshards = 1\n",
        sink = edge.sink_port,
        dns = edge.dns_port,
    ))
}

/// Messages a node accepted, from its log (info lines are flushed within a second).
fn accepted(node: &Server) -> usize {
    node.stderr().matches(": accepted from=").count()
}

fn wait_accepted(nodes: &[&Server], n: usize) -> Vec<usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let counts: Vec<usize> = nodes.iter().map(|s| accepted(s)).collect();
        if counts.iter().sum::<usize>() >= n {
            return counts;
        }
        assert!(
            Instant::now() < deadline,
            "nodes accepted {counts:?} of {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// MESSAGES messages to fleet.test through the edge, all accepted.
fn send_batch(edge: &Relay) {
    let n = MESSAGES.to_string();
    let sent = edge.send(&[
        "--messages",
        &n,
        "--connections",
        "4",
        "--domain",
        "fleet.test",
    ]);
    assert_eq!(sent["messages_accepted"].as_u64(), Some(MESSAGES), "{sent}");
}

#[test]
fn two_nodes_behind_equal_mx_share_the_load_and_either_takes_it_all() {
    let port = free_port();
    let zone = "fleet.test MX 10 a.fleet.test\nfleet.test MX 10 b.fleet.test\n\
                a.fleet.test A 127.0.0.3\nb.fleet.test A 127.0.0.4\n";
    // The edge: a new connection every 10 messages, each starting at the next MX peer.
    let edge = Relay::start(
        zone,
        "",
        &format!("port = {port}\nmax_messages_per_connection = 10\nmax_connections_per_host = 2\n"),
        &["--no-tls"],
    );
    let a = node("a.fleet.test", "127.0.0.3", port, &edge);
    let mut b = node("b.fleet.test", "127.0.0.4", port, &edge);

    send_batch(&edge);
    edge.wait_sink("delivered_messages", MESSAGES);
    let counts = wait_accepted(&[&a, &b], MESSAGES as usize);
    assert!(
        counts.iter().all(|c| *c >= 40),
        "equal-preference peers share the load: a and b accepted {counts:?}"
    );
    assert_eq!(counts.iter().sum::<usize>(), MESSAGES as usize);

    // Drain b: it says 421 to new sessions and exits; the edge's next connections find
    // it gone and go to a, which takes the whole next batch.
    assert!(b.terminate().success());
    send_batch(&edge);
    let stats = edge.wait_sink("delivered_messages", 2 * MESSAGES);
    assert_eq!(stats["corrupted"].as_u64().unwrap_or(0), 0, "{stats}");
    let after = wait_accepted(&[&a], counts[0] + MESSAGES as usize);
    assert_eq!(after[0], counts[0] + MESSAGES as usize);
    eprintln!(
        "fleet: first {MESSAGES} split a={} b={}; after draining b, a took the next {MESSAGES}",
        counts[0], counts[1]
    );
}
