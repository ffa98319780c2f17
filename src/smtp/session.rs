//! The inbound SMTP session: one state machine, no I/O.
//!
//! The connection task hands it whatever bytes arrived; it consumes every complete command
//! (PIPELINING, RFC 2920), appends the replies to one output buffer in order, and stops
//! early only for an [`Event`] the caller must act on: a message to store (its 250 comes
//! from [`Session::stored`] once the queue log has synced it), ETRN, or closing.

use super::address::Path;
use super::data::{self, ChunkCheck, DataScanner};
use super::parser::{self, Body, Command, Frame, MailParams, RcptParams, Ret};
use super::policy::{Lookup, Policy};
use super::sasl;
use crate::config::{Config, Expn, Vrfy};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;

/// Per-shard, read-only settings shared by every session on the shard.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub postmaster: String,
    pub max_errors: u32,
    pub max_junk_commands: u32,
    pub line_bytes_max: usize,
    pub policy: Policy,
    /// `[tls]` is configured: STARTTLS can be offered.
    pub tls: bool,
    /// `[auth]` is configured: AUTH can be offered.
    pub auth: bool,
    /// AUTH without TLS for clients on loopback.
    pub auth_plaintext_loopback: bool,
    /// Refusals by reply code ("554 5.7.1"), for the metrics. The shard owns this config
    /// and its sessions: one thread, so a RefCell.
    pub refusals: std::rc::Rc<std::cell::RefCell<std::collections::BTreeMap<String, u64>>>,
}

impl SessionConfig {
    pub fn from_config(c: &Config) -> SessionConfig {
        SessionConfig {
            hostname: c.server.hostname.clone(),
            postmaster: c.server.postmaster.clone(),
            max_errors: c.server.max_errors,
            max_junk_commands: c.server.max_junk_commands,
            line_bytes_max: c.server.command_line_bytes_max,
            policy: Policy::from_config(c),
            tls: c.tls.is_some(),
            auth: c.auth.is_some(),
            auth_plaintext_loopback: c.auth.as_ref().is_some_and(|a| a.allow_plaintext_loopback),
            refusals: std::rc::Rc::default(),
        }
    }
}

/// One queued recipient, after forward and list expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    /// RFC 3461 ORCPT (`addr-type;xtext`), given by the client or set by a forward.
    pub orcpt: Option<String>,
    /// `parser::notify` flags, when NOTIFY was given.
    pub notify: Option<u8>,
}

/// The envelope of the transaction in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path; empty for `<>`.
    pub sender: String,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub recipients: Vec<Recipient>,
    /// The content has octets above 127: relayed with BODY=8BITMIME.
    pub eight_bit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Everything complete was consumed; read more.
    NeedInput,
    /// A whole message is ready: store it, then call [`Session::stored`].
    Message,
    /// A trusted client asked for the queue of [`Session::etrn_node`] to run now.
    Etrn,
    /// "220 Ready to start TLS" is in the output: write it, drop any input the client
    /// pipelined after STARTTLS, do the handshake, then call [`Session::tls_started`].
    StartTls,
    /// Credentials to verify ([`Session::credentials`]); then call [`Session::auth_result`].
    Auth,
    /// Write the replies, then close the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Command,
    /// Skipping the rest of an overlong command line.
    Drain,
    Data,
    /// Reading a BDAT chunk; `reject` is the reply for a chunk that is read and dropped.
    Bdat {
        remaining: u64,
        last: bool,
        reject: Option<&'static str>,
    },
    /// Waiting for [`Session::stored`].
    Storing,
    /// Waiting for the caller (TLS handshake, password check).
    Paused,
    /// AUTH PLAIN without an initial response: the next line is the response.
    AuthPlain,
    /// AUTH LOGIN: the next line is the user name, then the password.
    AuthLoginUser,
    AuthLoginPassword,
    Closed,
}

/// What the caller's password check said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Ok,
    Invalid,
    /// Too many failures from this client recently.
    Locked,
    /// The check itself failed (users file unreadable, ...).
    Unavailable,
}

/// How the listener that accepted the session is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerMode {
    /// Offer STARTTLS (smtp and submission listeners, when `[tls]` is configured).
    pub starttls: bool,
    /// The connection is TLS from the start (smtps).
    pub implicit_tls: bool,
    /// Submission: AUTH before MAIL.
    pub auth_required: bool,
}

/// Why storing a message failed; each is one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The queue's disk is full: `452 4.3.1`.
    NoSpace,
    /// Any other I/O error: `451 4.3.0`.
    Io,
}

pub struct Session<'c> {
    cfg: &'c SessionConfig,
    peer: IpAddr,
    trusted: bool,
    state: State,
    helo: Option<String>,
    esmtp: bool,
    /// MAIL was accepted and the transaction is open.
    in_tx: bool,
    envelope: Envelope,
    /// RCPT commands tried in this transaction (for "no valid recipients").
    rcpt_attempts: u32,
    /// RCPT commands accepted (for `max_recipients`).
    rcpt_accepted: u32,
    bdat_used: bool,
    body: Vec<u8>,
    scanner: DataScanner,
    bare: ChunkCheck,
    bdat_over_limit: bool,
    errors: u32,
    /// NOOP, RSET, VRFY, EXPN, HELP and ETRN since the last accepted message.
    junk: u32,
    etrn_node: String,
    mode: ListenerMode,
    /// The TLS protocol and cipher, once TLS is up.
    tls: Option<String>,
    authenticated: Option<String>,
    credentials: Option<crate::smtp::sasl::Credentials>,
    login_user: String,
}

const OK: &str = "250 2.0.0 Ok";
const NEED_HELO: &str = "503 5.5.1 Error: send HELO/EHLO first";
const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command";
const NEED_RCPT: &str = "503 5.5.1 Error: need RCPT command";
const NO_VALID_RCPT: &str = "554 5.5.1 Error: no valid recipients";
const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed limit";
const BARE_CONTENT: &str = "550 5.6.0 Message rejected: bare <CR> or <LF> in message content";
const LONG_LINE: &str =
    "550 5.6.0 Message rejected: a line is longer than 998 octets (RFC 5322 2.1.1)";

impl<'c> Session<'c> {
    pub fn new(cfg: &'c SessionConfig, peer: IpAddr) -> Session<'c> {
        Session::with_mode(cfg, peer, ListenerMode::default())
    }

    pub fn with_mode(cfg: &'c SessionConfig, peer: IpAddr, mode: ListenerMode) -> Session<'c> {
        Session {
            cfg,
            peer,
            trusted: cfg.policy.is_trusted(peer),
            state: State::Command,
            helo: None,
            esmtp: false,
            in_tx: false,
            envelope: Envelope::default(),
            rcpt_attempts: 0,
            rcpt_accepted: 0,
            bdat_used: false,
            body: Vec::new(),
            scanner: DataScanner::wire_form(cfg.policy.max_message_bytes),
            bare: ChunkCheck::default(),
            bdat_over_limit: false,
            errors: 0,
            junk: 0,
            etrn_node: String::new(),
            mode,
            tls: mode.implicit_tls.then(String::new),
            authenticated: None,
            credentials: None,
            login_user: String::new(),
        }
    }

    pub fn greeting(&self, out: &mut Vec<u8>) {
        line(
            out,
            format_args!("220 {} ESMTP ringpost", self.cfg.hostname),
        );
    }

    /// The greeting for a connection over a limit; the caller closes after writing it.
    pub fn too_many_connections(&self, out: &mut Vec<u8>) {
        line(
            out,
            format_args!(
                "421 4.7.0 {} Error: too many connections; try again later",
                self.cfg.hostname
            ),
        );
    }

    pub fn timeout(&mut self, out: &mut Vec<u8>) {
        line(
            out,
            format_args!("421 4.4.2 {} Error: timeout exceeded", self.cfg.hostname),
        );
        self.tally("421 4.4.2");
        self.state = State::Closed;
    }

    /// The client sent something during greet_pause; the caller closes after writing it.
    pub fn pregreet(&mut self, out: &mut Vec<u8>) {
        line(
            out,
            format_args!(
                "554 5.5.1 {} Protocol error: talked before the greeting",
                self.cfg.hostname
            ),
        );
        self.tally("554 5.5.1");
        self.state = State::Closed;
    }

    /// Counts a refusal by its code, for the metrics.
    fn tally(&self, code: &str) {
        *self
            .cfg
            .refusals
            .borrow_mut()
            .entry(code.to_string())
            .or_default() += 1;
    }

    pub fn shutting_down(&mut self, out: &mut Vec<u8>) {
        line(
            out,
            format_args!(
                "421 4.3.2 {} Service shutting down; try again later",
                self.cfg.hostname
            ),
        );
        self.state = State::Closed;
    }

    /// Message content is being read (the data timeout applies rather than the command one).
    pub fn in_content(&self) -> bool {
        matches!(self.state, State::Data | State::Bdat { .. })
    }

    /// A transaction is open: MAIL accepted, not yet finished or reset.
    pub fn in_transaction(&self) -> bool {
        self.in_tx
    }

    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    pub fn helo(&self) -> &str {
        self.helo.as_deref().unwrap_or("")
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The envelope of the message being stored, handed to the queue (no copy); the
    /// session's is empty until the next MAIL.
    pub fn take_envelope(&mut self) -> Envelope {
        std::mem::take(&mut self.envelope)
    }

    /// The message content in wire form (dot-stuffed, as DATA carries it), without our
    /// Received header.
    pub fn content(&self) -> &[u8] {
        &self.body
    }

    pub fn etrn_node(&self) -> &str {
        &self.etrn_node
    }

    /// Writes our trace header for the message being stored (RFC 5321 4.4).
    pub fn received_header(&self, id: &str, unix_secs: u64, out: &mut Vec<u8>) {
        // RFC 3848: S for TLS, A for an authenticated client.
        let base = match (self.envelope.smtputf8, self.esmtp) {
            (true, _) => "UTF8SMTP",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        };
        let tls = if self.tls.is_some() { "S" } else { "" };
        let auth = if self.authenticated.is_some() {
            "A"
        } else {
            ""
        };
        let _ = write!(
            out,
            "Received: from {} ([{}])\r\n\tby {} (ringpost) with {base}{tls}{auth} id {}",
            self.helo(),
            self.peer,
            self.cfg.hostname,
            id
        );
        if let Some(t) = self.tls.as_deref().filter(|t| !t.is_empty()) {
            let _ = write!(out, "\r\n\t(using {t})");
        }
        if let [only] = self.envelope.recipients.as_slice() {
            let _ = write!(out, "\r\n\tfor <{}>", only.address);
        }
        out.extend_from_slice(b"; ");
        crate::time::push_rfc5322(out, unix_secs);
        out.extend_from_slice(b"\r\n");
    }

    /// Consumes input; see the module doc. Returns the octets consumed and why it stopped.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Event) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Closed => return (input.len(), Event::Close),
                State::Storing => return (used, Event::Message),
                State::Paused => return (used, Event::NeedInput),
                // Commands and the lines of an AUTH exchange are framed alike.
                State::Command
                | State::AuthPlain
                | State::AuthLoginUser
                | State::AuthLoginPassword => match parser::frame(rest, self.cfg.line_bytes_max) {
                    Ok(Frame::Incomplete) => return (used, Event::NeedInput),
                    Ok(Frame::Line(line, n)) => {
                        used += n;
                        let event = if self.state == State::Command {
                            self.command(line, out)
                        } else {
                            self.auth_line(line, out)
                        };
                        if let Some(event) = event {
                            return (used, event);
                        }
                    }
                    Err(e) => {
                        let (n, complete) = match e {
                            parser::FrameError::TooLong { consumed, complete } => {
                                (consumed, complete)
                            }
                            parser::FrameError::BareLf { consumed } => (consumed, true),
                        };
                        used += n;
                        // A bad line in an AUTH exchange ends the exchange too.
                        self.state = State::Command;
                        self.reject(e.reply(), out);
                        if !complete && self.state == State::Command {
                            self.state = State::Drain;
                        }
                    }
                },
                State::Drain => {
                    let (n, found) = parser::skip_line(rest);
                    used += n;
                    if !found {
                        return (used, Event::NeedInput);
                    }
                    self.state = State::Command;
                }
                State::Data => {
                    let (n, end) = self.scanner.feed(rest, &mut self.body);
                    used += n;
                    match end {
                        None => return (used, Event::NeedInput),
                        Some(end) => {
                            if let Some(event) = self.end_of_data(end, out) {
                                return (used, event);
                            }
                        }
                    }
                }
                State::Bdat {
                    remaining,
                    last,
                    reject,
                } => {
                    let take = remaining.min(rest.len() as u64) as usize;
                    self.bdat_chunk(&rest[..take], reject.is_some());
                    used += take;
                    let remaining = remaining - take as u64;
                    if remaining > 0 {
                        self.state = State::Bdat {
                            remaining,
                            last,
                            reject,
                        };
                        return (used, Event::NeedInput);
                    }
                    self.state = State::Command;
                    if let Some(event) = self.end_of_chunk(last, reject, out) {
                        return (used, event);
                    }
                }
            }
        }
    }

    /// The queue log's answer for the message of the last [`Event::Message`].
    pub fn stored(&mut self, result: Result<&str, StoreError>, out: &mut Vec<u8>) {
        debug_assert_eq!(self.state, State::Storing);
        self.state = State::Command;
        match result {
            Ok(id) => {
                self.junk = 0;
                line(out, format_args!("250 2.0.0 Ok: queued as {id}"));
            }
            Err(StoreError::NoSpace) => {
                line(out, format_args!("452 4.3.1 Insufficient system storage"))
            }
            Err(StoreError::Io) => {
                line(out, format_args!("451 4.3.0 Error: queue file write error"))
            }
        }
        self.reset_transaction();
    }

    fn reset_transaction(&mut self) {
        self.in_tx = false;
        self.envelope.sender.clear();
        self.envelope.body = None;
        self.envelope.smtputf8 = false;
        self.envelope.ret = None;
        self.envelope.envid = None;
        self.envelope.recipients.clear();
        self.envelope.eight_bit = false;
        self.rcpt_attempts = 0;
        self.rcpt_accepted = 0;
        self.bdat_used = false;
        self.bdat_over_limit = false;
        self.body.clear();
        self.bare = ChunkCheck::default();
    }

    /// Writes an error reply and counts it; past `max_errors` the session ends.
    fn reject(&mut self, reply: &str, out: &mut Vec<u8>) {
        line(out, format_args!("{reply}"));
        self.tally(reply.get(..9).unwrap_or(reply));
        self.count_error(out);
    }

    /// One more error; at `max_errors` the session ends with `421`.
    fn count_error(&mut self, out: &mut Vec<u8>) {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            line(
                out,
                format_args!("421 4.7.0 {} Error: too many errors", self.cfg.hostname),
            );
            self.state = State::Closed;
        }
    }

    fn closing(&self) -> Option<Event> {
        (self.state == State::Closed).then_some(Event::Close)
    }

    /// One command line; returns an event when the caller must act before going on.
    fn command(&mut self, cmd_line: &[u8], out: &mut Vec<u8>) -> Option<Event> {
        let cmd = match parser::parse_command(cmd_line) {
            Ok(cmd) => cmd,
            Err(reply) => {
                self.reject(reply, out);
                return self.closing();
            }
        };
        if matches!(
            cmd,
            Command::Noop
                | Command::Rset
                | Command::Vrfy(_)
                | Command::Expn(_)
                | Command::Help
                | Command::Etrn(_)
        ) {
            // A flood of harmless commands is still a flood: past the limit each one
            // counts as an error, and the one that reaches max_errors ends the session.
            self.junk += 1;
            if self.junk > self.cfg.max_junk_commands {
                self.count_error(out);
                if let Some(close) = self.closing() {
                    return Some(close);
                }
            }
        }
        match cmd {
            Command::Ehlo(name) => self.hello(name, true, out),
            Command::Helo(name) => self.hello(name, false, out),
            Command::Mail(path, params) => self.mail(path, params, out),
            Command::Rcpt(path, params) => self.rcpt(path, params, out),
            Command::Data => self.data(out),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.reset_transaction();
                line(out, format_args!("{OK}"));
            }
            Command::Noop => line(out, format_args!("{OK}")),
            Command::Quit => {
                line(out, format_args!("221 2.0.0 Bye"));
                self.state = State::Closed;
            }
            Command::Vrfy(arg) => self.vrfy(arg, out),
            Command::Expn(arg) => self.expn(arg, out),
            Command::Help => self.help(out),
            Command::Turn => self.reject(
                "502 5.5.1 TURN is obsolete and unsafe; use ETRN (RFC 1985)",
                out,
            ),
            Command::Etrn(node) => return self.etrn(node, out),
            Command::StartTls => return self.starttls(out),
            Command::Auth(args) => return self.auth(args, out),
        }
        match self.state {
            State::Closed => Some(Event::Close),
            _ => None,
        }
    }

    fn hello(&mut self, name: &[u8], esmtp: bool, out: &mut Vec<u8>) {
        self.reset_transaction();
        self.helo = Some(String::from_utf8_lossy(name).into_owned());
        self.esmtp = esmtp;
        if !esmtp {
            line(out, format_args!("250 {}", self.cfg.hostname));
            return;
        }
        let p = &self.cfg.policy;
        let _ = write!(
            out,
            "250-{} Hello {} [{}]\r\n",
            self.cfg.hostname,
            self.helo(),
            self.peer
        );
        let _ = write!(
            out,
            "250-PIPELINING\r\n250-SIZE {}\r\n",
            p.max_message_bytes
        );
        if p.vrfy == Vrfy::On {
            out.extend_from_slice(b"250-VRFY\r\n");
        }
        if p.expn != Expn::Off {
            out.extend_from_slice(b"250-EXPN\r\n");
        }
        if self.starttls_offered() {
            out.extend_from_slice(b"250-STARTTLS\r\n");
        }
        if self.auth_offered() {
            out.extend_from_slice(b"250-AUTH PLAIN LOGIN\r\n");
        }
        out.extend_from_slice(b"250-ETRN\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n");
    }

    fn mail(&mut self, path: Path<'_>, params: MailParams<'_>, out: &mut Vec<u8>) {
        if self.helo.is_none() {
            return self.reject(NEED_HELO, out);
        }
        if self.in_tx {
            return self.reject("503 5.5.1 Error: nested MAIL command", out);
        }
        if self.mode.auth_required && self.authenticated.is_none() {
            return self.reject("530 5.7.0 Authentication required", out);
        }
        if !self.esmtp && params != MailParams::default() {
            return self.reject("555 5.5.4 Error: ESMTP parameters need EHLO", out);
        }
        if params
            .size
            .is_some_and(|s| s > self.cfg.policy.max_message_bytes)
        {
            return self.reject(TOO_BIG, out);
        }
        let sender = match path {
            Path::Null => String::new(),
            Path::Mailbox(m) => {
                if m.utf8 && !params.smtputf8 {
                    return self.reject("553 5.6.7 Error: non-ASCII address needs SMTPUTF8", out);
                }
                m.to_string_lossless()
            }
            Path::Postmaster => return self.reject("501 5.1.7 Bad sender address syntax", out),
        };
        self.reset_transaction();
        self.in_tx = true;
        self.envelope.sender = sender;
        self.envelope.body = params.body;
        self.envelope.smtputf8 = params.smtputf8;
        self.envelope.ret = params.ret;
        self.envelope.envid = params
            .envid
            .map(|e| String::from_utf8_lossy(e).into_owned());
        line(out, format_args!("250 2.1.0 Ok"));
    }

    fn rcpt(&mut self, path: Path<'_>, params: RcptParams<'_>, out: &mut Vec<u8>) {
        if !self.in_tx {
            return self.reject(NEED_MAIL, out);
        }
        self.rcpt_attempts += 1;
        if self.rcpt_accepted >= self.cfg.policy.max_recipients {
            return self.reject("452 4.5.3 Error: too many recipients", out);
        }
        let orcpt = params
            .orcpt
            .map(|o| String::from_utf8_lossy(o).into_owned());
        let mailbox = match path {
            Path::Postmaster => {
                // RFC 5321 4.5.1: always accepted, whatever the relay policy.
                let postmaster = self.cfg.postmaster.clone();
                self.add_recipient(postmaster, orcpt, params.notify);
                self.rcpt_accepted += 1;
                return line(out, format_args!("250 2.1.5 Ok"));
            }
            Path::Mailbox(m) => m,
            Path::Null => return self.reject("501 5.1.3 Bad recipient address syntax", out),
        };
        if mailbox.utf8 && !self.envelope.smtputf8 {
            return self.reject("553 5.6.7 Error: non-ASCII address needs SMTPUTF8", out);
        }
        let address = mailbox.to_string_lossless();
        if self.rcpt_to_mailbox(address, orcpt, params.notify, out) {
            self.rcpt_accepted += 1;
        }
    }

    /// Applies the forward table, lists and relay policy; true when accepted.
    fn rcpt_to_mailbox(
        &mut self,
        address: String,
        orcpt: Option<String>,
        notify: Option<u8>,
        out: &mut Vec<u8>,
    ) -> bool {
        match self.cfg.policy.lookup(&address) {
            Lookup::Forward(to) => {
                let orcpt = orcpt.or_else(|| Some(format!("rfc822;{}", xtext(&address))));
                self.add_recipient(to.to_string(), orcpt, notify);
                line(
                    out,
                    format_args!("251 2.1.5 User not local; will forward to <{to}>"),
                );
                true
            }
            Lookup::Moved(to) => {
                let reply = format!("551 5.1.6 User not local; please try <{to}>");
                self.reject(&reply, out);
                false
            }
            Lookup::List(members) => {
                for m in members {
                    let orcpt = Some(format!("rfc822;{}", xtext(&address)));
                    self.add_recipient(m.clone(), orcpt, notify);
                }
                line(out, format_args!("250 2.1.5 Ok"));
                true
            }
            // Address literals get the same policy as domains: only trusted clients.
            Lookup::Relay => self.accept_as_is(address, orcpt, notify, out),
            Lookup::Unknown if self.trusted || self.authenticated.is_some() => {
                self.accept_as_is(address, orcpt, notify, out)
            }
            Lookup::Unknown => {
                self.reject("554 5.7.1 Relay access denied", out);
                false
            }
        }
    }

    fn accept_as_is(
        &mut self,
        address: String,
        orcpt: Option<String>,
        notify: Option<u8>,
        out: &mut Vec<u8>,
    ) -> bool {
        self.add_recipient(address, orcpt, notify);
        line(out, format_args!("250 2.1.5 Ok"));
        true
    }

    /// Queues one recipient (of possibly several for a list); `max_recipients` counts
    /// RCPT commands, in [`Session::rcpt`].
    fn add_recipient(&mut self, address: String, orcpt: Option<String>, notify: Option<u8>) {
        let dup = self
            .envelope
            .recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&address));
        if !dup {
            self.envelope.recipients.push(Recipient {
                address,
                orcpt,
                notify,
            });
        }
    }

    fn no_recipients_reply(&self) -> &'static str {
        if self.rcpt_attempts > 0 {
            NO_VALID_RCPT
        } else {
            NEED_RCPT
        }
    }

    fn data(&mut self, out: &mut Vec<u8>) {
        if !self.in_tx {
            return self.reject(NEED_MAIL, out);
        }
        if self.envelope.recipients.is_empty() {
            return self.reject(self.no_recipients_reply(), out);
        }
        if self.bdat_used {
            return self.reject("503 5.5.1 Error: DATA after BDAT", out);
        }
        line(out, format_args!("354 End data with <CR><LF>.<CR><LF>"));
        self.body.clear();
        self.scanner = DataScanner::wire_form(self.cfg.policy.max_message_bytes);
        self.state = State::Data;
    }

    fn end_of_data(&mut self, end: data::DataEnd, out: &mut Vec<u8>) -> Option<Event> {
        self.state = State::Command;
        let refusal = if end.over_limit {
            Some(TOO_BIG)
        } else if end.bare_newline {
            Some(BARE_CONTENT)
        } else if end.long_line {
            Some(LONG_LINE)
        } else {
            None
        };
        self.finish_content(refusal, out)
    }

    /// The content is complete: refuse it, or hand it to the caller for storing.
    fn finish_content(
        &mut self,
        refusal: Option<&'static str>,
        out: &mut Vec<u8>,
    ) -> Option<Event> {
        let refusal = refusal.or_else(|| {
            (data::count_received(&self.body) > self.cfg.policy.max_hops)
                .then_some("554 5.4.6 Too many hops")
        });
        if let Some(reply) = refusal {
            self.reset_transaction();
            self.reject(reply, out);
            return self.closing();
        }
        self.envelope.eight_bit = self.body.iter().any(|&b| b >= 0x80);
        self.state = State::Storing;
        Some(Event::Message)
    }

    fn bdat(&mut self, size: u64, last: bool) {
        // The chunk is read whatever happens (RFC 3030 2); a refused one is dropped.
        let reject = if self.helo.is_none() {
            Some(NEED_HELO)
        } else if !self.in_tx {
            Some(NEED_MAIL)
        } else if self.envelope.recipients.is_empty() {
            Some(self.no_recipients_reply())
        } else {
            None
        };
        if reject.is_none() && !self.bdat_used {
            self.bdat_used = true;
            self.body.clear();
        }
        self.state = State::Bdat {
            remaining: size,
            last,
            reject,
        };
    }

    fn bdat_chunk(&mut self, chunk: &[u8], rejected: bool) {
        if rejected || self.bdat_over_limit {
            return;
        }
        if self.body.len() as u64 + chunk.len() as u64 > self.cfg.policy.max_message_bytes {
            self.bdat_over_limit = true;
            return;
        }
        self.bare.feed(chunk, &mut self.body);
    }

    fn end_of_chunk(
        &mut self,
        last: bool,
        reject: Option<&'static str>,
        out: &mut Vec<u8>,
    ) -> Option<Event> {
        if let Some(reply) = reject {
            self.reject(reply, out);
            return self.closing();
        }
        if self.bdat_over_limit {
            // RFC 3030 3: after a failed chunk the client sends no more; start afresh.
            self.reset_transaction();
            self.reject(TOO_BIG, out);
            return self.closing();
        }
        if !last {
            line(
                out,
                format_args!("250 2.0.0 Ok: {} octets", self.body.len()),
            );
            return None;
        }
        let refusal = match self.bare.finish() {
            (true, _) => Some(BARE_CONTENT),
            (_, true) => Some(LONG_LINE),
            _ => None,
        };
        self.finish_content(refusal, out)
    }

    fn vrfy(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        if self.cfg.policy.vrfy == Vrfy::Off {
            return line(
                out,
                format_args!(
                    "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
                ),
            );
        }
        let Some(address) = self.resolve_name(arg, out) else {
            return;
        };
        match self.cfg.policy.lookup(&address) {
            Lookup::Forward(to) => line(
                out,
                format_args!("251 2.1.5 User not local; will forward to <{to}>"),
            ),
            Lookup::Moved(to) => {
                let reply = format!("551 5.1.6 User not local; please try <{to}>");
                self.reject(&reply, out)
            }
            Lookup::List(_) | Lookup::Relay => line(out, format_args!("250 2.1.5 <{address}>")),
            Lookup::Unknown => self.reject("550 5.1.1 User unknown", out),
        }
    }

    fn expn(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        let allowed = match self.cfg.policy.expn {
            Expn::Off => return self.reject("502 5.5.1 Error: EXPN is disabled", out),
            Expn::Trusted => self.trusted,
            Expn::On => true,
        };
        if !allowed {
            return self.reject("550 5.7.1 Error: EXPN is not allowed from this client", out);
        }
        let Some(address) = self.resolve_name(arg, out) else {
            return;
        };
        match self.cfg.policy.lookup(&address) {
            Lookup::List(members) => {
                for (i, m) in members.iter().enumerate() {
                    let sep = if i + 1 == members.len() { ' ' } else { '-' };
                    let _ = write!(out, "250{sep}2.1.5 <{m}>\r\n");
                }
            }
            _ => self.reject("550 5.1.1 Error: not a mailing list", out),
        }
    }

    /// VRFY/EXPN take an address or a bare name; a name must match exactly one entry.
    fn resolve_name(&mut self, arg: &[u8], out: &mut Vec<u8>) -> Option<String> {
        let text = String::from_utf8_lossy(arg);
        let text = text.trim_start_matches('<').trim_end_matches('>');
        if text.contains('@') {
            return Some(text.to_string());
        }
        let names = self.cfg.policy.entries_named(text);
        match names.as_slice() {
            [] => {
                self.reject("550 5.1.1 User unknown", out);
                None
            }
            [one] => Some(one.to_string()),
            many => {
                for (i, n) in many.iter().enumerate() {
                    let sep = if i + 1 == many.len() { ' ' } else { '-' };
                    let _ = write!(
                        out,
                        "553{sep}5.1.4 Ambiguous; possibilities include <{n}>\r\n"
                    );
                }
                self.errors += 1;
                None
            }
        }
    }

    fn starttls_offered(&self) -> bool {
        self.cfg.tls && self.mode.starttls && self.tls.is_none()
    }

    /// AUTH is offered over TLS, or in the clear to loopback clients when allowed.
    fn auth_offered(&self) -> bool {
        self.cfg.auth
            && (self.tls.is_some() || (self.cfg.auth_plaintext_loopback && self.peer.is_loopback()))
    }

    fn starttls(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        if !self.starttls_offered() {
            self.reject("502 5.5.1 Error: STARTTLS is not available", out);
            return self.closing();
        }
        line(out, format_args!("220 2.0.0 Ready to start TLS"));
        self.state = State::Paused;
        Some(Event::StartTls)
    }

    /// The handshake is done: RFC 3207 4.2, everything learned before is forgotten.
    pub fn tls_started(&mut self, description: String) {
        self.reset_transaction();
        self.helo = None;
        self.esmtp = false;
        self.authenticated = None;
        self.tls = Some(description);
        self.state = State::Command;
    }

    pub fn tls_active(&self) -> bool {
        self.tls.is_some()
    }

    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    fn auth(&mut self, args: &[u8], out: &mut Vec<u8>) -> Option<Event> {
        let refusal = if !self.cfg.auth {
            Some("503 5.5.1 Error: authentication not enabled")
        } else if self.helo.is_none() {
            Some(NEED_HELO)
        } else if self.authenticated.is_some() {
            Some("503 5.5.1 Error: already authenticated")
        } else if self.in_tx {
            Some("503 5.5.1 Error: MAIL transaction in progress")
        } else if !self.auth_offered() {
            Some("538 5.7.11 Encryption required for requested authentication mechanism")
        } else {
            None
        };
        if let Some(r) = refusal {
            self.reject(r, out);
            return self.closing();
        }
        let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let mech = words.next().unwrap_or_default();
        let initial = words.next();
        if mech.eq_ignore_ascii_case(b"PLAIN") {
            match initial {
                Some(resp) => return self.auth_complete(sasl::plain(resp), out),
                None => {
                    line(out, format_args!("334 "));
                    self.state = State::AuthPlain;
                }
            }
        } else if mech.eq_ignore_ascii_case(b"LOGIN") {
            match initial.map(sasl::login_part) {
                Some(Ok(user)) => {
                    self.login_user = user;
                    line(out, format_args!("{}", sasl::LOGIN_PASSWORD));
                    self.state = State::AuthLoginPassword;
                }
                Some(Err(e)) => self.reject(e, out),
                None => {
                    line(out, format_args!("{}", sasl::LOGIN_USER));
                    self.state = State::AuthLoginUser;
                }
            }
        } else {
            self.reject(
                "504 5.5.4 Error: unrecognized authentication type (PLAIN, LOGIN)",
                out,
            );
        }
        self.closing()
    }

    /// A line of an AUTH exchange.
    fn auth_line(&mut self, resp: &[u8], out: &mut Vec<u8>) -> Option<Event> {
        let state = self.state;
        self.state = State::Command;
        if sasl::is_cancel(resp) {
            self.reject(sasl::ABORTED, out);
            return self.closing();
        }
        match state {
            State::AuthPlain => self.auth_complete(sasl::plain(resp), out),
            State::AuthLoginUser => match sasl::login_part(resp) {
                Ok(user) => {
                    self.login_user = user;
                    line(out, format_args!("{}", sasl::LOGIN_PASSWORD));
                    self.state = State::AuthLoginPassword;
                    None
                }
                Err(e) => {
                    self.reject(e, out);
                    self.closing()
                }
            },
            _ => {
                let user = std::mem::take(&mut self.login_user);
                let creds =
                    sasl::login_part(resp).map(|password| sasl::Credentials { user, password });
                self.auth_complete(creds, out)
            }
        }
    }

    fn auth_complete(
        &mut self,
        creds: Result<sasl::Credentials, &'static str>,
        out: &mut Vec<u8>,
    ) -> Option<Event> {
        match creds {
            Ok(c) => {
                self.credentials = Some(c);
                self.state = State::Paused;
                Some(Event::Auth)
            }
            Err(e) => {
                self.reject(e, out);
                self.closing()
            }
        }
    }

    /// The credentials of the last [`Event::Auth`].
    pub fn credentials(&self) -> Option<&sasl::Credentials> {
        self.credentials.as_ref()
    }

    pub fn auth_result(&mut self, result: AuthResult, out: &mut Vec<u8>) {
        self.state = State::Command;
        let creds = self.credentials.take();
        match result {
            AuthResult::Ok => {
                self.authenticated = creds.map(|c| c.user);
                line(out, format_args!("235 2.7.0 Authentication successful"));
            }
            AuthResult::Invalid => self.reject("535 5.7.8 Authentication credentials invalid", out),
            AuthResult::Locked => self.reject(
                "454 4.7.0 Too many authentication failures; try again later",
                out,
            ),
            AuthResult::Unavailable => {
                self.reject("454 4.7.0 Temporary authentication failure", out)
            }
        }
    }

    fn help(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"214-2.0.0 ringpost: an SMTP relay. Commands:\r\n\
              214-2.0.0   EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT\r\n\
              214-2.0.0   VRFY EXPN HELP ETRN\r\n\
              214 2.0.0 TURN is refused; use ETRN (RFC 1985) to pull queued mail\r\n",
        );
    }

    fn etrn(&mut self, node: &[u8], out: &mut Vec<u8>) -> Option<Event> {
        if self.helo.is_none() {
            self.reject(NEED_HELO, out);
            return self.closing();
        }
        if self.in_tx {
            self.reject("503 5.5.1 Error: MAIL transaction in progress", out);
            return self.closing();
        }
        let node = String::from_utf8_lossy(node);
        let domain = node.trim_start_matches(['@', '#']);
        if !self.trusted {
            let reply = format!("459 4.7.1 <{domain}>: Node not allowed: client not trusted");
            self.reject(&reply, out);
            return self.closing();
        }
        line(
            out,
            format_args!("250 2.0.0 Queuing for node <{domain}> started"),
        );
        self.etrn_node.clear();
        self.etrn_node.push_str(domain);
        Some(Event::Etrn)
    }
}

/// RFC 3461 4 xtext encoding of an address for ORCPT.
fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

fn line(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
    out.extend_from_slice(b"\r\n");
}
