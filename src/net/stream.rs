//! A TCP stream that may have been upgraded to TLS (STARTTLS), with buffered SMTP line
//! and reply reading on top. Used by the delivery client and by loadgen.

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub enum Stream {
    Plain(TcpStream),
    Client(Box<futures_rustls::client::TlsStream<TcpStream>>),
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
    /// Transient, while an upgrade owns the socket.
    Gone,
}

impl Stream {
    pub async fn upgrade_client(
        self,
        config: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> io::Result<Stream> {
        let Stream::Plain(tcp) = self else {
            return Err(io::Error::other("already TLS"));
        };
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = futures_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await?;
        Ok(Stream::Client(Box::new(tls)))
    }

    pub async fn upgrade_server(self, config: Arc<rustls::ServerConfig>) -> io::Result<Stream> {
        let Stream::Plain(tcp) = self else {
            return Err(io::Error::other("already TLS"));
        };
        let tls = futures_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await?;
        Ok(Stream::Server(Box::new(tls)))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Client(_) | Stream::Server(_))
    }

    /// The TCP socket under any TLS, for timeouts and addresses.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Client(s) => Some(s.get_ref().0),
            Stream::Server(s) => Some(s.get_ref().0),
            Stream::Gone => None,
        }
    }

    /// The negotiated TLS version and cipher suite, for logs and trace headers.
    pub fn tls_info(&self) -> Option<String> {
        let (version, suite) = match self {
            Stream::Client(s) => (
                s.get_ref().1.protocol_version(),
                s.get_ref().1.negotiated_cipher_suite(),
            ),
            Stream::Server(s) => (
                s.get_ref().1.protocol_version(),
                s.get_ref().1.negotiated_cipher_suite(),
            ),
            _ => return None,
        };
        Some(format!("{:?} {:?}", version?, suite?.suite()))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected))),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected))),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Client(s) => Pin::new(s).poll_close(cx),
            Stream::Server(s) => Pin::new(s).poll_close(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// Makes room at the end of a read buffer whose unread bytes are `buf[start..end]`:
/// rewinds when all was read, moves the unread bytes to the front when the end is full.
pub fn make_room(buf: &mut [u8], start: &mut usize, end: &mut usize) {
    if start == end {
        *start = 0;
        *end = 0;
    } else if *end == buf.len() {
        buf.copy_within(*start..*end, 0);
        *end -= *start;
        *start = 0;
    }
}

/// Read buffer size: a whole pipelined burst of replies or commands fits.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A stream with a read buffer.
pub struct Conn {
    pub stream: Stream,
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
}

/// One SMTP reply: its code and the text of its last line.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn has_keyword(&self, kw: &str) -> bool {
        self.lines.iter().any(|l| {
            l.get(4..).is_some_and(|t| {
                t.split_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(kw))
            })
        })
    }
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            buf: vec![0; READ_BUFFER_BYTES],
            start: 0,
            end: 0,
        }
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Reads more bytes into the buffer; Ok(false) at EOF.
    pub async fn fill(&mut self) -> io::Result<bool> {
        make_room(&mut self.buf, &mut self.start, &mut self.end);
        if self.end == self.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "line longer than the read buffer",
            ));
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next CRLF-terminated line (without CRLF), reading as needed; None at EOF.
    pub async fn line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(lf) = memchr::memchr(b'\n', self.buffered()) {
                let raw = &self.buf[self.start..self.start + lf];
                let text =
                    String::from_utf8_lossy(raw.strip_suffix(b"\r").unwrap_or(raw)).into_owned();
                self.start += lf + 1;
                return Ok(Some(text));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// One whole reply.
    pub async fn reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self
                .line()
                .await?
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))?;
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad reply line {line:?}"),
                ));
            };
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// Whether the peer spoke unasked or hung up while the connection sat idle: bytes
    /// buffered or waiting, end of file, or an error. One non-blocking peek at the
    /// socket, no wait: a next hop that closed an idle connection is found before
    /// anything is sent on it.
    pub fn peer_spoke_or_left(&self) -> bool {
        if !self.buffered().is_empty() {
            return true;
        }
        let Some(tcp) = self.stream.tcp() else {
            return true;
        };
        let mut byte = 0u8;
        // SAFETY: recv(2) peeks at most one octet into a local; the fd is the open socket.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(tcp),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }
}
