//! Command parser throughput: a realistic pipelined transaction, framed and parsed.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringpost::smtp::parser::{frame, parse_command, Frame};
use std::hint::black_box;

const TRANSACTION: &[u8] = b"EHLO client.example.test\r\n\
MAIL FROM:<sender.name@example.test> SIZE=10240 BODY=8BITMIME\r\n\
RCPT TO:<first.recipient@destination.test> NOTIFY=FAILURE ORCPT=rfc822;first.recipient@destination.test\r\n\
RCPT TO:<\"quoted local\"@[192.0.2.1]>\r\n\
RCPT TO:<@relay.test:third@destination.test>\r\n\
DATA\r\nRSET\r\nNOOP\r\nQUIT\r\n";

/// Frames and parses every command in `buf`; returns how many parsed.
fn parse_all(buf: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    while let Ok(Frame::Line(line, used)) = frame(&buf[at..], 512) {
        if parse_command(line).is_ok() {
            n += 1;
        }
        at += used;
    }
    n
}

fn bench(c: &mut Criterion) {
    let commands = parse_all(TRANSACTION);
    assert_eq!(commands, 9);
    let mut g = c.benchmark_group("parser");
    g.throughput(Throughput::Elements(commands as u64));
    g.bench_function("pipelined transaction (commands)", |b| {
        b.iter(|| parse_all(black_box(TRANSACTION)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
