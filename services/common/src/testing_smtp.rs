//! An embedded SMTP server for tests (feature `test-support`).
//!
//! [`SmtpServer::start`] binds `127.0.0.1` on a free port and serves plain SMTP
//! (no TLS) from a background task, so a test can point the notification
//! service's `lettre` transport at [`SmtpServer::port`] and then look at what
//! arrived with [`SmtpServer::received`] or [`SmtpServer::wait_for`]. Every
//! stored message is parsed with `mail-parser`: subject, `From`/`To` headers,
//! the decoded `text/plain` and `text/html` bodies and the top-level content
//! type are ready to assert on ([`ReceivedMail`]).
//!
//! The test controls the server's behaviour:
//!
//! - [`SmtpServer::set_mode`] makes every `RCPT TO` fail temporarily
//!   (`451 4.3.0`) or permanently (`550 5.1.1`);
//! - [`SmtpServer::reject_recipient`] rejects one address (`550 5.1.1`) and
//!   accepts the others;
//! - [`SmtpServer::stop`] closes the listener and drops every open session (new
//!   connections are refused, open ones are closed), and [`SmtpServer::restart`]
//!   listens on the same port again;
//! - [`SmtpServer::sessions`] counts accepted connections, to observe pooling;
//!   [`SmtpServer::last_auth`] tells which credentials the client sent.
//!
//! # Protocol
//!
//! The greeting is `220`. `EHLO` advertises `PIPELINING`, `8BITMIME`,
//! `SIZE 10485760`, `ENHANCEDSTATUSCODES`, `AUTH PLAIN LOGIN` and `SMTPUTF8`;
//! `HELO` works too. `AUTH PLAIN` (initial response inline or after a `334`)
//! and `AUTH LOGIN` accept any credentials; authentication is optional. `MAIL
//! FROM` accepts the `SIZE=`, `BODY=7BIT|8BITMIME`, `SMTPUTF8` and `AUTH=`
//! parameters, `RCPT TO` answers per mode, `DATA` answers `354`, reads up to
//! `<CRLF>.<CRLF>`, removes dot-stuffing, stores the message and answers `250`.
//! `RSET`, `NOOP`, `VRFY` (`252`) and `QUIT` (`221`) are understood, unknown
//! commands get `500`, commands out of sequence `503`. Several commands may
//! arrive in one packet (pipelining); every reply is written as soon as its
//! command is handled.
//!
//! Everything is bounded: a command line may be 4096 bytes (a longer one gets
//! `500 5.5.2` and is skipped), a message 10 MiB (a larger one is read to its
//! end and refused with `552 5.3.4`), a transaction 1000 recipients, the server
//! 512 concurrent sessions (more get `421` and are closed), and a session that
//! stays silent, or does not read its replies, for 60 seconds gets `421 4.4.2`
//! and is closed. Malformed input never panics.
//!
//! # With lettre
//!
//! - lettre sends the message and then `CRLF . CRLF`; that CRLF belongs to the
//!   data, so a body `"Hi"` arrives as `"Hi\r\n"`, and a single-part body,
//!   which lettre already ends with a CRLF, arrives with one line break more
//!   than it had. Parts of a multipart message arrive exactly.
//! - With lettre's `pool` feature every `AsyncSmtpTransport` pools its
//!   connections. A used connection is put back by a task lettre spawns, so a
//!   send issued right after another may open a second connection: count
//!   [`SmtpServer::sessions`] only after letting that task run (a short sleep).
//! - Across [`SmtpServer::stop`] and [`SmtpServer::restart`], a pooled
//!   transport needs no retry: before reusing a parked connection lettre sends
//!   `NOOP`; on the connection the stop closed that fails, lettre drops it and
//!   connects anew. So a send while the server is stopped fails with a
//!   connection error (the `io::Error` in its source chain is
//!   `ConnectionRefused`; neither `is_transient` nor `is_permanent`), and the
//!   first send after the restart succeeds on a new session.
//!
//! ```ignore
//! let smtp = SmtpServer::start().await;
//! let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
//!     .port(smtp.port())
//!     .build();
//! mailer.send(message).await?;
//! let mails = smtp.wait_for(1, Duration::from_secs(5)).await;
//! assert_eq!(mails[0].subject, "Welcome");
//!
//! smtp.set_mode(Mode::TempFail);
//! assert!(mailer.send(message).await.unwrap_err().is_transient());
//! ```

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mail_parser::{Address, ContentType, MessageParser, MimeHeaders, PartType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, timeout};

/// Longest command line accepted, without its CRLF.
const MAX_LINE: usize = 4096;
/// Largest message accepted (the DATA after dot-unstuffing), as advertised by
/// `SIZE`.
const MAX_MESSAGE: usize = 10 * 1024 * 1024;
/// Most recipients accepted in one transaction.
const MAX_RECIPIENTS: usize = 1000;
/// Most sessions served at once; further connections get `421` and are closed.
const MAX_SESSIONS: usize = 512;
/// How long a session may wait for the client to send or to take a reply.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`SmtpServer::restart`] keeps trying to bind the port again.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// Name the server gives itself in its replies.
const HOSTNAME: &str = "parley-test-smtp";

/// How the server answers `RCPT TO` (see [`SmtpServer::set_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accept every recipient (except those given to
    /// [`SmtpServer::reject_recipient`]).
    Accept,
    /// Answer every `RCPT TO` with `451 4.3.0`, a transient failure.
    TempFail,
    /// Answer every `RCPT TO` with `550 5.1.1`, a permanent failure.
    Reject,
}

/// A message the server accepted, with its envelope and its parsed content.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The `MAIL FROM` address (empty for the null reverse-path `<>`).
    pub from: String,
    /// The accepted `RCPT TO` addresses, in order.
    pub to: Vec<String>,
    /// The message as sent after `DATA`, dot-unstuffed, without the final
    /// `.` line (every line, the last one included, ends with CRLF).
    pub raw: Vec<u8>,
    /// The decoded `Subject` header (empty when absent).
    pub subject: String,
    /// The `From` header with encoded words decoded, as `Name <address>` or
    /// `address`, several joined by `", "` (empty when absent).
    pub header_from: String,
    /// The `To` header, rendered like [`header_from`](Self::header_from).
    pub header_to: String,
    /// The first `text/plain` body part (a message without `Content-Type` is
    /// one), transfer-decoded (quoted-printable, base64) and converted to
    /// UTF-8, line breaks kept; `None` when the message has none.
    pub text: Option<String>,
    /// The first `text/html` body part, decoded like [`text`](Self::text).
    pub html: Option<String>,
    /// The top-level content type with its parameters, e.g.
    /// `multipart/alternative; boundary="..."` (`text/plain; charset=us-ascii`,
    /// the MIME default, when the header is absent).
    pub content_type: String,
}

/// Handle to a running test SMTP server; clones share the same server.
///
/// The server stops when the last handle is dropped (or the runtime shuts
/// down).
#[derive(Clone)]
pub struct SmtpServer {
    shared: Arc<Shared>,
    control: Arc<Control>,
}

/// State the accept loop and the sessions share with the handles.
struct Shared {
    state: Mutex<State>,
    /// Connections accepted so far.
    sessions: AtomicUsize,
    /// Number of messages stored, for [`SmtpServer::wait_for`].
    stored: watch::Sender<usize>,
}

struct State {
    mode: Mode,
    /// Lowercased addresses answered with `550`.
    rejected: HashSet<String>,
    received: Vec<ReceivedMail>,
    last_auth: Option<(String, String)>,
}

/// Owned by the handles only, so that dropping the last handle stops the server.
struct Control {
    addr: SocketAddr,
    running: tokio::sync::Mutex<Option<Running>>,
}

/// The accept loop of a listening server.
struct Running {
    /// Sending (or dropping) this stops the accept loop, which then drops
    /// every session.
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpServer")
            .field("addr", &self.control.addr)
            .field("sessions", &self.sessions())
            .field("received", &self.shared.lock().received.len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SmtpServer {
    /// Binds `127.0.0.1` on a free port and starts accepting connections in a
    /// background task, in [`Mode::Accept`].
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("test SMTP server: bind 127.0.0.1:0")
    }

    /// Like [`start`](Self::start), on a given address (port 0 for a free
    /// one), e.g. the fixed address a separately started platform was told to
    /// send to. Fails when the address cannot be bound.
    pub async fn start_on(addr: SocketAddr) -> io::Result<Self> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let (stored, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Accept,
                rejected: HashSet::new(),
                received: Vec::new(),
                last_auth: None,
            }),
            sessions: AtomicUsize::new(0),
            stored,
        });
        let running = spawn_accept_loop(listener, Arc::clone(&shared));
        Ok(Self {
            shared,
            control: Arc::new(Control {
                addr,
                running: tokio::sync::Mutex::new(Some(running)),
            }),
        })
    }

    /// The address the server listens on (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.control.addr
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.control.addr.port()
    }

    /// Sets how `RCPT TO` is answered from now on (it is checked at each
    /// `RCPT TO`). Recipients given to [`reject_recipient`](Self::reject_recipient)
    /// are rejected in every mode.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Answers `RCPT TO` for `address` (compared case-insensitively) with
    /// `550 5.1.1` from now on; other recipients are answered per the mode.
    pub fn reject_recipient(&self, address: &str) {
        self.shared
            .lock()
            .rejected
            .insert(address.trim().to_lowercase());
    }

    /// Stops listening and drops every open session: new connections are
    /// refused and open ones are closed (clients see EOF or a reset). The port
    /// is free when this returns. Does nothing when already stopped.
    pub async fn stop(&self) {
        let mut running = self.control.running.lock().await;
        if let Some(Running { shutdown, task }) = running.take() {
            // The loop may already be gone if the runtime is shutting down.
            let _ = shutdown.send(());
            let _ = task.await;
        }
    }

    /// Listens on the same port again after [`stop`](Self::stop), retrying for a
    /// few seconds while the OS still holds the port. Does nothing when the
    /// server is running. Received mails, mode and counters are kept.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound within 5 seconds (another process took
    /// it).
    pub async fn restart(&self) {
        let mut running = self.control.running.lock().await;
        if running.is_some() {
            return;
        }
        let deadline = Instant::now() + REBIND_TIMEOUT;
        let listener = loop {
            match bind(self.control.addr) {
                Ok(listener) => break listener,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!(
                    "test SMTP server: cannot bind {} again: {err}",
                    self.control.addr
                ),
            }
        };
        *running = Some(spawn_accept_loop(listener, Arc::clone(&self.shared)));
    }

    /// Every message stored so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.shared.lock().received.clone()
    }

    /// Waits until at least `count` messages were stored, or `timeout` passed,
    /// and returns every message stored by then (possibly fewer than `count`).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let mut stored = self.shared.stored.subscribe();
        // The sender lives as long as `self`, so the wait can only time out.
        let _ = tokio::time::timeout(timeout, stored.wait_for(|n| *n >= count)).await;
        self.received()
    }

    /// Connections accepted so far, across restarts (a pooled transport
    /// reuses its connections, so this stays low).
    pub fn sessions(&self) -> usize {
        self.shared.sessions.load(Ordering::SeqCst)
    }

    /// The username and password of the last successful `AUTH`, if any.
    pub fn last_auth(&self) -> Option<(String, String)> {
        self.shared.lock().last_auth.clone()
    }
}

/// Binds a listener with `SO_REUSEADDR`, so that the port can be bound again
/// while closed connections linger in `TIME_WAIT`.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn spawn_accept_loop(listener: TcpListener, shared: Arc<Shared>) -> Running {
    let (shutdown, shutdown_rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, shared, shutdown_rx));
    Running { shutdown, task }
}

/// Accepts connections until told to stop (or until every handle is dropped),
/// then closes the listener and aborts every session, dropping its socket.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.sessions.fetch_add(1, Ordering::SeqCst);
                    let busy = sessions.len() >= MAX_SESSIONS;
                    sessions.spawn(serve(stream, Arc::clone(&shared), busy));
                }
                // Out of file descriptors or similar: back off briefly.
                Err(_) => sleep(Duration::from_millis(10)).await,
            },
        }
    }
    drop(listener);
    sessions.shutdown().await;
}

/// Why a session ended early.
#[derive(Debug)]
enum End {
    /// The client closed the connection.
    Closed,
    /// The client sent nothing, or took no reply, for [`IDLE_TIMEOUT`].
    Idle,
    /// A socket error.
    Io,
}

/// A line read from the client.
enum Line {
    /// The line without its CRLF.
    Complete(Vec<u8>),
    /// The line was longer than allowed; it has been read and discarded.
    TooLong,
}

/// A client connection with its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    start: usize,
    /// Bytes of `buf` before this index hold no CRLF that starts at or after
    /// `start`.
    scanned: usize,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
        }
    }

    /// Reads one CRLF-terminated line of at most `max` bytes (without CRLF).
    /// A longer line is consumed to its end and reported as [`Line::TooLong`],
    /// holding no more than `max` + one read chunk in memory meanwhile.
    async fn read_line(&mut self, max: usize) -> Result<Line, End> {
        let mut too_long = false;
        loop {
            let from = self.scanned.max(self.start);
            if let Some(offset) = self.buf[from..].windows(2).position(|w| w == b"\r\n") {
                let end = from + offset;
                let len = end - self.start;
                let line = if too_long || len > max {
                    Line::TooLong
                } else {
                    Line::Complete(self.buf[self.start..end].to_vec())
                };
                self.start = end + 2;
                self.scanned = self.start;
                return Ok(line);
            }
            // A CR at the very end may start a CRLF completed by the next read.
            self.scanned = self.buf.len().saturating_sub(1).max(self.start);
            if self.buf.len() - self.start > max.saturating_add(1) {
                too_long = true;
                self.start = self.buf.len() - 1;
                self.scanned = self.start;
            }
            self.fill().await?;
        }
    }

    /// Drops consumed bytes and reads more from the socket.
    async fn fill(&mut self) -> Result<(), End> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let read = timeout(IDLE_TIMEOUT, self.stream.read(&mut self.buf[old..])).await;
        let read = match read {
            Err(_) => Err(End::Idle),
            Ok(Err(_)) => Err(End::Io),
            Ok(Ok(0)) => Err(End::Closed),
            Ok(Ok(n)) => Ok(n),
        };
        self.buf.truncate(old + *read.as_ref().unwrap_or(&0));
        read.map(|_| ())
    }

    /// Writes one reply (lines separated by CRLF, without the final CRLF).
    async fn reply(&mut self, text: &str) -> Result<(), End> {
        let mut bytes = Vec::with_capacity(text.len() + 2);
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        match timeout(IDLE_TIMEOUT, self.stream.write_all(&bytes)).await {
            Err(_) => Err(End::Idle),
            Ok(Err(_)) => Err(End::Io),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// Serves one connection to its end.
async fn serve(stream: TcpStream, shared: Arc<Shared>, busy: bool) {
    let mut session = Session {
        conn: Conn::new(stream),
        shared,
        greeted: false,
        authenticated: false,
        transaction: None,
    };
    if busy {
        let _ = session
            .conn
            .reply("421 4.3.2 Too many connections, try again later")
            .await;
        return;
    }
    if let Err(End::Idle) = session.run().await {
        // Best effort: the client may not be reading at all.
        let _ = timeout(
            Duration::from_secs(1),
            session
                .conn
                .reply("421 4.4.2 Idle timeout, closing connection"),
        )
        .await;
    }
}

/// A mail transaction in progress (after `MAIL FROM`).
struct Transaction {
    from: String,
    to: Vec<String>,
    /// `RCPT TO` commands received, accepted or not.
    rcpt_attempts: usize,
}

/// Whether the session goes on after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

struct Session {
    conn: Conn,
    shared: Arc<Shared>,
    /// `EHLO` or `HELO` was received.
    greeted: bool,
    authenticated: bool,
    transaction: Option<Transaction>,
}

impl Session {
    async fn run(&mut self) -> Result<(), End> {
        self.conn
            .reply(&format!("220 {HOSTNAME} ESMTP ready"))
            .await?;
        loop {
            let line = match self.conn.read_line(MAX_LINE).await? {
                Line::Complete(line) => line,
                Line::TooLong => {
                    self.conn.reply("500 5.5.2 Line too long").await?;
                    continue;
                }
            };
            if self.command(&line).await? == Flow::Quit {
                return Ok(());
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> Result<Flow, End> {
        let line = String::from_utf8_lossy(line);
        let line = line.trim();
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb, arg.trim()),
            None => (line, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if arg.is_empty() => {
                self.conn
                    .reply(&format!("501 5.5.4 Syntax: {} hostname", verb))
                    .await?;
            }
            "EHLO" => {
                self.greeted = true;
                self.transaction = None;
                self.conn
                    .reply(&format!(
                        "250-{HOSTNAME} greets {arg}\r\n\
                         250-PIPELINING\r\n\
                         250-8BITMIME\r\n\
                         250-SIZE {MAX_MESSAGE}\r\n\
                         250-ENHANCEDSTATUSCODES\r\n\
                         250-AUTH PLAIN LOGIN\r\n\
                         250 SMTPUTF8"
                    ))
                    .await?;
            }
            "HELO" => {
                self.greeted = true;
                self.transaction = None;
                self.conn.reply(&format!("250 {HOSTNAME}")).await?;
            }
            "AUTH" => self.auth(arg).await?,
            "MAIL" => self.mail(arg).await?,
            "RCPT" => self.rcpt(arg).await?,
            "DATA" => self.data(arg).await?,
            "RSET" => {
                self.transaction = None;
                self.conn.reply("250 2.0.0 Ok").await?;
            }
            "NOOP" => self.conn.reply("250 2.0.0 Ok").await?,
            "VRFY" if arg.is_empty() => self.conn.reply("501 5.5.4 Syntax: VRFY address").await?,
            "VRFY" => {
                self.conn
                    .reply("252 2.5.2 Cannot VRFY user, but will accept message")
                    .await?;
            }
            "QUIT" => {
                self.conn.reply("221 2.0.0 Bye").await?;
                return Ok(Flow::Quit);
            }
            _ => self.conn.reply("500 5.5.2 Command not recognized").await?,
        }
        Ok(Flow::Continue)
    }

    async fn auth(&mut self, arg: &str) -> Result<(), End> {
        if !self.greeted {
            return self.conn.reply("503 5.5.1 Send EHLO first").await;
        }
        if self.authenticated {
            return self.conn.reply("503 5.5.1 Already authenticated").await;
        }
        if self.transaction.is_some() {
            return self
                .conn
                .reply("503 5.5.1 Mail transaction in progress")
                .await;
        }
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((mechanism, initial)) => (mechanism, Some(initial.trim())),
            None => (arg, None),
        };
        let credentials = match mechanism.to_ascii_uppercase().as_str() {
            "" => return self.conn.reply("501 5.5.4 Syntax: AUTH mechanism").await,
            "PLAIN" => {
                let Some(response) = self.auth_response(initial, "334 ").await? else {
                    return Ok(());
                };
                let mut fields = response.split(|&b| b == 0);
                match (fields.next(), fields.next(), fields.next(), fields.next()) {
                    (Some(_authzid), Some(user), Some(pass), None) => (
                        String::from_utf8_lossy(user).into_owned(),
                        String::from_utf8_lossy(pass).into_owned(),
                    ),
                    _ => return self.conn.reply("501 5.5.2 Invalid PLAIN response").await,
                }
            }
            "LOGIN" => {
                // "Username:" and "Password:" in base64.
                let Some(user) = self.auth_response(initial, "334 VXNlcm5hbWU6").await? else {
                    return Ok(());
                };
                let Some(pass) = self.auth_response(None, "334 UGFzc3dvcmQ6").await? else {
                    return Ok(());
                };
                (
                    String::from_utf8_lossy(&user).into_owned(),
                    String::from_utf8_lossy(&pass).into_owned(),
                )
            }
            _ => {
                return self
                    .conn
                    .reply("504 5.5.4 Unrecognized authentication type")
                    .await;
            }
        };
        self.shared.lock().last_auth = Some(credentials);
        self.authenticated = true;
        self.conn.reply("235 2.7.0 Authentication successful").await
    }

    /// The decoded client response of an AUTH exchange: `initial` if given,
    /// else the line sent after the `challenge`. `None` when the exchange
    /// failed and the error reply has been sent.
    async fn auth_response(
        &mut self,
        initial: Option<&str>,
        challenge: &str,
    ) -> Result<Option<Vec<u8>>, End> {
        let line = match initial {
            Some(initial) => initial.to_owned(),
            None => {
                self.conn.reply(challenge).await?;
                match self.conn.read_line(MAX_LINE).await? {
                    Line::Complete(line) => String::from_utf8_lossy(&line).trim().to_owned(),
                    Line::TooLong => {
                        self.conn.reply("500 5.5.2 Line too long").await?;
                        return Ok(None);
                    }
                }
            }
        };
        if line == "*" {
            self.conn
                .reply("501 5.7.0 Authentication cancelled")
                .await?;
            return Ok(None);
        }
        // "=" is an empty initial response (RFC 4954).
        let decoded = if line == "=" {
            Some(Vec::new())
        } else {
            decode_base64(&line)
        };
        match decoded {
            Some(decoded) => Ok(Some(decoded)),
            None => {
                self.conn.reply("501 5.5.2 Cannot decode response").await?;
                Ok(None)
            }
        }
    }

    async fn mail(&mut self, arg: &str) -> Result<(), End> {
        if !self.greeted {
            return self.conn.reply("503 5.5.1 Send HELO/EHLO first").await;
        }
        if self.transaction.is_some() {
            return self.conn.reply("503 5.5.1 Nested MAIL command").await;
        }
        let Some((from, params)) = parse_path(arg, "FROM:") else {
            return self
                .conn
                .reply("501 5.5.4 Syntax: MAIL FROM:<address>")
                .await;
        };
        for param in params.split_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(size) if size > MAX_MESSAGE as u64 => {
                        return self
                            .conn
                            .reply("552 5.3.4 Message size exceeds fixed maximum message size")
                            .await;
                    }
                    Ok(_) => {}
                    Err(_) => return self.conn.reply("501 5.5.4 Invalid SIZE parameter").await,
                },
                "BODY" => {
                    if !value.eq_ignore_ascii_case("7BIT")
                        && !value.eq_ignore_ascii_case("8BITMIME")
                    {
                        return self.conn.reply("501 5.5.4 Invalid BODY parameter").await;
                    }
                }
                "SMTPUTF8" | "AUTH" => {}
                _ => return self.conn.reply("555 5.5.4 Unsupported parameter").await,
            }
        }
        self.transaction = Some(Transaction {
            from: from.to_owned(),
            to: Vec::new(),
            rcpt_attempts: 0,
        });
        self.conn.reply("250 2.1.0 Ok").await
    }

    async fn rcpt(&mut self, arg: &str) -> Result<(), End> {
        let Some(transaction) = self.transaction.as_mut() else {
            return self.conn.reply("503 5.5.1 Need MAIL command").await;
        };
        let Some((to, params)) = parse_path(arg, "TO:") else {
            return self.conn.reply("501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        if to.is_empty() {
            return self
                .conn
                .reply("501 5.1.3 Bad recipient address syntax")
                .await;
        }
        if !params.trim().is_empty() {
            return self.conn.reply("555 5.5.4 Unsupported parameter").await;
        }
        transaction.rcpt_attempts += 1;
        if transaction.to.len() >= MAX_RECIPIENTS {
            return self.conn.reply("452 4.5.3 Too many recipients").await;
        }
        let verdict = {
            let state = self.shared.lock();
            if state.rejected.contains(&to.to_lowercase()) {
                Mode::Reject
            } else {
                state.mode
            }
        };
        match verdict {
            Mode::Accept => {
                transaction.to.push(to.to_owned());
                self.conn.reply("250 2.1.5 Ok").await
            }
            Mode::TempFail => {
                self.conn
                    .reply(&format!(
                        "451 4.3.0 <{to}>: Temporary failure, try again later"
                    ))
                    .await
            }
            Mode::Reject => {
                self.conn
                    .reply(&format!("550 5.1.1 <{to}>: Recipient address rejected"))
                    .await
            }
        }
    }

    async fn data(&mut self, arg: &str) -> Result<(), End> {
        let Some(transaction) = &self.transaction else {
            return self.conn.reply("503 5.5.1 Need MAIL command").await;
        };
        if transaction.to.is_empty() {
            let reply = if transaction.rcpt_attempts == 0 {
                "503 5.5.1 Need RCPT command"
            } else {
                "554 5.5.1 No valid recipients"
            };
            return self.conn.reply(reply).await;
        }
        if !arg.is_empty() {
            return self.conn.reply("501 5.5.4 Syntax: DATA").await;
        }
        self.conn
            .reply("354 End data with <CR><LF>.<CR><LF>")
            .await?;

        let mut data = Vec::new();
        let mut too_big = false;
        loop {
            // One more byte than the room left, for a stuffed dot; only the
            // final "." matters once the message is too big.
            let room = if too_big { 0 } else { MAX_MESSAGE - data.len() };
            let line = match self.conn.read_line(room + 1).await? {
                Line::Complete(line) => line,
                Line::TooLong => {
                    too_big = true;
                    continue;
                }
            };
            if line == b"." {
                break;
            }
            if too_big {
                continue;
            }
            let content = line.strip_prefix(b".").unwrap_or(&line);
            if data.len() + content.len() + 2 > MAX_MESSAGE {
                too_big = true;
                data = Vec::new();
                continue;
            }
            data.extend_from_slice(content);
            data.extend_from_slice(b"\r\n");
        }

        let Some(transaction) = self.transaction.take() else {
            return Ok(());
        };
        if too_big {
            return self
                .conn
                .reply("552 5.3.4 Message size exceeds fixed maximum message size")
                .await;
        }
        let mail = store_mail(transaction.from, transaction.to, data).await;
        let queued = {
            let mut state = self.shared.lock();
            state.received.push(mail);
            state.received.len()
        };
        self.shared.stored.send_modify(|stored| *stored += 1);
        self.conn
            .reply(&format!("250 2.0.0 Ok: queued as {queued}"))
            .await
    }
}

/// Splits `FROM:<address> params` (or `TO:`), case-insensitively and allowing
/// spaces after the colon, into the address (without brackets or source route)
/// and the parameters. Addresses without brackets are tolerated.
fn parse_path<'a>(arg: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let (path, params) = match rest.strip_prefix('<') {
        Some(inner) => {
            let end = inner.find('>')?;
            (&inner[..end], &inner[end + 1..])
        }
        None => rest.split_once(' ').unwrap_or((rest, "")),
    };
    // Drop an obsolete source route: "@relay1,@relay2:user@example.com".
    let address = match path.split_once(':') {
        Some((_, address)) if path.starts_with('@') => address,
        _ => path,
    };
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some((address, params))
}

/// Decodes standard base64, padding optional; `None` on any other character.
fn decode_base64(input: &str) -> Option<Vec<u8>> {
    let digits = input.trim_end_matches('=');
    if digits.len() % 4 == 1 || input.len() - digits.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in digits.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Builds a [`ReceivedMail`] off the async workers (a large message takes a
/// while to parse); should the parser ever panic, the mail is kept unparsed.
async fn store_mail(from: String, to: Vec<String>, raw: Vec<u8>) -> ReceivedMail {
    let envelope = (from.clone(), to.clone());
    let fallback = raw.clone();
    match tokio::task::spawn_blocking(move || parse_mail(from, to, raw)).await {
        Ok(mail) => mail,
        Err(_) => {
            let (from, to) = envelope;
            let mut mail = parse_mail(from, to, Vec::new());
            mail.raw = fallback;
            mail
        }
    }
}

/// Builds a [`ReceivedMail`], parsing the message with `mail-parser`.
fn parse_mail(from: String, to: Vec<String>, raw: Vec<u8>) -> ReceivedMail {
    let mut mail = ReceivedMail {
        from,
        to,
        raw: Vec::new(),
        subject: String::new(),
        header_from: String::new(),
        header_to: String::new(),
        text: None,
        html: None,
        content_type: render_content_type(None),
    };
    if let Some(message) = MessageParser::default().parse(&raw) {
        mail.subject = message.subject().unwrap_or_default().to_owned();
        mail.header_from = render_addresses(message.from(), message.header_raw("From"));
        mail.header_to = render_addresses(message.to(), message.header_raw("To"));
        mail.content_type = render_content_type(message.content_type());
        // Without a text/plain (or text/html) part, mail-parser offers the
        // other one, converted, in its place: skip those.
        mail.text = message
            .text_bodies()
            .find(|part| {
                matches!(part.body, PartType::Text(_))
                    && part.content_type().is_none_or(|ct| {
                        ct.ctype().eq_ignore_ascii_case("text")
                            && ct
                                .subtype()
                                .is_none_or(|sub| sub.eq_ignore_ascii_case("plain"))
                    })
            })
            .and_then(|part| part.text_contents())
            .map(str::to_owned);
        mail.html = message
            .html_bodies()
            .find(|part| matches!(part.body, PartType::Html(_)))
            .and_then(|part| part.text_contents())
            .map(str::to_owned);
    }
    mail.raw = raw;
    mail
}

/// Renders an address header as `Name <address>, address`; falls back to the
/// unfolded raw header when it did not parse as addresses.
fn render_addresses(parsed: Option<&Address<'_>>, raw: Option<&str>) -> String {
    fn one(name: Option<&str>, address: Option<&str>) -> String {
        match (name, address) {
            (Some(name), Some(address)) => format!("{name} <{address}>"),
            (None, Some(address)) => address.to_owned(),
            (Some(name), None) => name.to_owned(),
            (None, None) => String::new(),
        }
    }
    match parsed {
        Some(Address::List(list)) => list
            .iter()
            .map(|addr| one(addr.name(), addr.address()))
            .collect::<Vec<_>>()
            .join(", "),
        Some(Address::Group(groups)) => groups
            .iter()
            .map(|group| {
                let members = group
                    .addresses
                    .iter()
                    .map(|addr| one(addr.name(), addr.address()))
                    .collect::<Vec<_>>()
                    .join(", ");
                match group.name.as_deref() {
                    Some(name) => format!("{name}: {members};"),
                    None => members,
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => raw
            .map(|raw| raw.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    }
}

/// Renders a content type as `type/subtype; name=value`, quoting values that
/// need it.
fn render_content_type(content_type: Option<&ContentType<'_>>) -> String {
    let Some(content_type) = content_type else {
        return "text/plain; charset=us-ascii".to_owned();
    };
    let mut out = content_type.ctype().to_ascii_lowercase();
    if let Some(subtype) = content_type.subtype() {
        out.push('/');
        out.push_str(&subtype.to_ascii_lowercase());
    }
    for attribute in content_type.attributes().unwrap_or_default() {
        out.push_str("; ");
        out.push_str(&attribute.name);
        out.push('=');
        let value = &attribute.value;
        let plain = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c));
        if plain {
            out.push_str(value);
        } else {
            out.push('"');
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    const WAIT: Duration = Duration::from_secs(5);

    /// A raw SMTP client that reads replies line by line.
    struct Client {
        stream: BufReader<TcpStream>,
    }

    impl Client {
        /// Connects and checks the greeting.
        async fn connect(server: &SmtpServer) -> Self {
            let stream = TcpStream::connect(server.addr()).await.expect("connect");
            let mut client = Self {
                stream: BufReader::new(stream),
            };
            let greeting = client.reply().await;
            assert!(greeting.starts_with("220 "), "{greeting}");
            client
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.stream.get_mut().write_all(bytes).await.expect("write");
        }

        /// Reads one (possibly multi-line) reply, lines joined with '\n'.
        async fn reply(&mut self) -> String {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let n = timeout(WAIT, self.stream.read_line(&mut line))
                    .await
                    .expect("reply in time")
                    .expect("read");
                assert!(n > 0, "connection closed after {lines:?}");
                let line = line.strip_suffix("\r\n").expect("CRLF").to_owned();
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    return lines.join("\n");
                }
            }
        }

        async fn cmd(&mut self, line: &str) -> String {
            self.send(format!("{line}\r\n").as_bytes()).await;
            self.reply().await
        }

        /// True when the server closed the connection (EOF or reset).
        async fn closed(&mut self) -> bool {
            let mut rest = Vec::new();
            match timeout(WAIT, self.stream.read_to_end(&mut rest)).await {
                Ok(Ok(_)) => rest.is_empty(),
                Ok(Err(_)) => true,
                Err(_) => false,
            }
        }
    }

    fn encode_base64(input: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn ehlo_advertises_the_extensions() {
        let server = SmtpServer::start().await;
        let mut client = Client::connect(&server).await;
        let ehlo = client.cmd("EHLO client.test").await;
        for line in [
            "250-PIPELINING",
            "250-8BITMIME",
            "250-SIZE 10485760",
            "250-AUTH PLAIN LOGIN",
            "250 SMTPUTF8",
        ] {
            assert!(ehlo.lines().any(|l| l == line), "{line} missing in {ehlo}");
        }
        assert!(client.cmd("HELO client.test").await.starts_with("250 "));
        assert!(client.cmd("ehlo").await.starts_with("501 "));
        assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye");
        assert!(client.closed().await);
        assert_eq!(server.sessions(), 1);
    }

    #[tokio::test]
    async fn commands_out_of_order_and_unknown_ones_are_refused() {
        let server = SmtpServer::start().await;
        let mut client = Client::connect(&server).await;
        assert!(client.cmd("MAIL FROM:<a@x.test>").await.starts_with("503 "));
        assert!(client.cmd("AUTH PLAIN").await.starts_with("503 "));
        assert!(client.cmd("RCPT TO:<b@x.test>").await.starts_with("503 "));
        assert!(client.cmd("DATA").await.starts_with("503 "));
        assert!(client.cmd("BOGUS").await.starts_with("500 "));
        assert!(client.cmd("").await.starts_with("500 "));
        assert!(client.cmd("STARTTLS").await.starts_with("500 "));
        assert!(client.cmd("VRFY someone").await.starts_with("252 "));
        assert!(client.cmd("NOOP").await.starts_with("250 "));
        assert!(client.cmd("EHLO c").await.starts_with("250-"));
        assert!(client.cmd("RCPT TO:<b@x.test>").await.starts_with("503 "));
        assert!(client.cmd("MAIL FROM:<a@x.test>").await.starts_with("250 "));
        assert!(client.cmd("MAIL FROM:<a@x.test>").await.starts_with("503 "));
        assert!(client.cmd("DATA").await.starts_with("503 "));
        assert!(client.cmd("RSET").await.starts_with("250 "));
        assert!(client.cmd("RCPT TO:<b@x.test>").await.starts_with("503 "));
        assert!(client.cmd("MAIL FROM:a@x.test").await.starts_with("250 "));
        assert!(client.cmd("RCPT TO:<>").await.starts_with("501 "));
        assert!(client.cmd("RCPT TO b@x.test").await.starts_with("501 "));
        assert!(
            client
                .cmd("RCPT TO:<b@x.test> NOTIFY=NEVER")
                .await
                .starts_with("555 ")
        );
        assert!(client.cmd("AUTH PLAIN").await.starts_with("503 "));
        assert!(client.cmd("QUIT").await.starts_with("221 "));
        assert!(server.received().is_empty());
    }

    #[tokio::test]
    async fn pipelined_transaction_is_stored_dot_unstuffed() {
        let server = SmtpServer::start().await;
        server.reject_recipient("Nobody@X.test");
        let mut client = Client::connect(&server).await;
        client
            .send(
                b"EHLO c\r\nMAIL FROM:<> BODY=8BITMIME SIZE=100 SMTPUTF8\r\n\
                  RCPT TO:<a@x.test>\r\nRCPT TO:<nobody@x.test>\r\n\
                  RCPT TO:<@relay.test:b@x.test>\r\nDATA\r\n",
            )
            .await;
        assert!(client.reply().await.ends_with("250 SMTPUTF8"));
        assert!(client.reply().await.starts_with("250 "));
        assert!(client.reply().await.starts_with("250 "));
        assert!(client.reply().await.starts_with("550 5.1.1 "));
        assert!(client.reply().await.starts_with("250 "));
        assert!(client.reply().await.starts_with("354 "));
        client
            .send(
                b"Subject: dots\r\n\r\n..leading dot\r\n...\r\n.x\r\nend\r\n.\r\nNOOP\r\nQUIT\r\n",
            )
            .await;
        assert!(client.reply().await.starts_with("250 2.0.0 Ok"));
        assert!(client.reply().await.starts_with("250 "));
        assert!(client.reply().await.starts_with("221 "));
        let mails = server.wait_for(1, WAIT).await;
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].from, "");
        assert_eq!(mails[0].to, ["a@x.test", "b@x.test"]);
        assert_eq!(
            mails[0].raw,
            b"Subject: dots\r\n\r\n.leading dot\r\n..\r\nx\r\nend\r\n"
        );
        assert_eq!(mails[0].subject, "dots");
    }

    #[tokio::test]
    async fn every_recipient_rejected_fails_data() {
        let server = SmtpServer::start().await;
        let mut client = Client::connect(&server).await;
        client.cmd("EHLO c").await;
        server.set_mode(Mode::TempFail);
        client.cmd("MAIL FROM:<a@x.test>").await;
        assert!(
            client
                .cmd("RCPT TO:<b@x.test>")
                .await
                .starts_with("451 4.3.0 ")
        );
        server.set_mode(Mode::Reject);
        assert!(
            client
                .cmd("RCPT TO:<b@x.test>")
                .await
                .starts_with("550 5.1.1 ")
        );
        assert!(client.cmd("DATA").await.starts_with("554 "));
        server.set_mode(Mode::Accept);
        assert!(client.cmd("RCPT TO:<b@x.test>").await.starts_with("250 "));
    }

    #[tokio::test]
    async fn auth_plain_and_login_record_the_credentials() {
        let server = SmtpServer::start().await;
        let mut client = Client::connect(&server).await;
        client.cmd("EHLO c").await;
        assert!(client.cmd("AUTH CRAM-MD5").await.starts_with("504 "));
        assert!(client.cmd("AUTH PLAIN !!!").await.starts_with("501 "));
        assert_eq!(client.cmd("AUTH PLAIN").await, "334 ");
        assert!(client.cmd("*").await.starts_with("501 "));
        assert_eq!(client.cmd("AUTH PLAIN").await, "334 ");
        let plain = encode_base64(b"\0alice\0s3cr\xc3\xa9t");
        assert!(client.cmd(&plain).await.starts_with("235 "));
        assert_eq!(
            server.last_auth(),
            Some(("alice".into(), "s3cr\u{e9}t".into()))
        );
        assert!(client.cmd("AUTH PLAIN").await.starts_with("503 "));

        let mut client = Client::connect(&server).await;
        client.cmd("HELO c").await;
        let user = encode_base64(b"bob");
        assert_eq!(
            client.cmd(&format!("AUTH LOGIN {user}")).await,
            "334 UGFzc3dvcmQ6"
        );
        assert!(client.cmd(&encode_base64(b"pw")).await.starts_with("235 "));
        assert_eq!(server.last_auth(), Some(("bob".into(), "pw".into())));

        let mut client = Client::connect(&server).await;
        client.cmd("EHLO c").await;
        assert_eq!(client.cmd("auth login").await, "334 VXNlcm5hbWU6");
        assert_eq!(
            client.cmd(&encode_base64(b"carol")).await,
            "334 UGFzc3dvcmQ6"
        );
        assert!(client.cmd("=").await.starts_with("235 "));
        assert_eq!(server.last_auth(), Some(("carol".into(), String::new())));
    }

    #[tokio::test]
    async fn long_lines_and_oversized_messages_are_refused() {
        let server = SmtpServer::start().await;
        let mut client = Client::connect(&server).await;
        let long = format!("NOOP {}\r\n", "x".repeat(MAX_LINE));
        client.send(long.as_bytes()).await;
        assert!(client.reply().await.starts_with("500 5.5.2"));
        assert!(client.cmd("EHLO c").await.starts_with("250-"));
        assert!(
            client
                .cmd("MAIL FROM:<a@x.test> SIZE=10485761")
                .await
                .starts_with("552 ")
        );
        assert!(
            client
                .cmd("MAIL FROM:<a@x.test> SIZE=x")
                .await
                .starts_with("501 ")
        );
        assert!(
            client
                .cmd("MAIL FROM:<a@x.test> BODY=9BIT")
                .await
                .starts_with("501 ")
        );
        assert!(
            client
                .cmd("MAIL FROM:<a@x.test> FOO=1")
                .await
                .starts_with("555 ")
        );
        assert!(client.cmd("MAIL FROM:<a@x.test>").await.starts_with("250 "));
        assert!(client.cmd("RCPT TO:<b@x.test>").await.starts_with("250 "));
        assert!(client.cmd("DATA").await.starts_with("354 "));
        // 11 MiB in short lines, then one 11 MiB line: both too big.
        let line = "y".repeat(1022) + "\r\n";
        let chunk = line.repeat(1024);
        for _ in 0..11 {
            client.send(chunk.as_bytes()).await;
        }
        client.send(b".\r\n").await;
        assert!(client.reply().await.starts_with("552 5.3.4"));
        assert!(client.cmd("MAIL FROM:<a@x.test>").await.starts_with("250 "));
        assert!(client.cmd("RCPT TO:<b@x.test>").await.starts_with("250 "));
        assert!(client.cmd("DATA").await.starts_with("354 "));
        let huge = "z".repeat(11 * 1024 * 1024);
        client.send(huge.as_bytes()).await;
        client.send(b"\r\n.\r\n").await;
        assert!(client.reply().await.starts_with("552 5.3.4"));
        assert!(client.cmd("NOOP").await.starts_with("250 "));
        assert!(server.received().is_empty());

        // Exactly the limit is fine.
        assert!(client.cmd("MAIL FROM:<a@x.test>").await.starts_with("250 "));
        assert!(client.cmd("RCPT TO:<b@x.test>").await.starts_with("250 "));
        assert!(client.cmd("DATA").await.starts_with("354 "));
        let exact = "w".repeat(MAX_MESSAGE - 2) + "\r\n.\r\n";
        client.send(exact.as_bytes()).await;
        assert!(client.reply().await.starts_with("250 "));
        assert_eq!(server.received()[0].raw.len(), MAX_MESSAGE);
    }

    #[tokio::test]
    async fn garbage_never_kills_the_server() {
        let server = SmtpServer::start().await;
        let mut client = Client::connect(&server).await;
        let mut garbage: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        garbage.extend_from_slice(b"\r\n\xff\xfe\x00\r\nMAIL FROM:<\xc3\x28>\r\n\r\r\n\n\r\n");
        client.send(&garbage).await;
        client.send(b"AUTH LOGIN\r\n").await;
        client.send(b"NOOP\r\n").await;
        let mut replies = Vec::new();
        loop {
            let reply = client.reply().await;
            let done = reply.starts_with("250 ");
            replies.push(reply);
            if done {
                break;
            }
        }
        assert!(
            replies
                .iter()
                .all(|r| r.starts_with('5') || r.starts_with("250"))
        );
        // Unfinished transactions and dropped connections do no harm.
        let mut client = Client::connect(&server).await;
        client
            .send(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nhalf a mes")
            .await;
        drop(client);
        let mut client = Client::connect(&server).await;
        assert!(client.cmd("NOOP").await.starts_with("250 "));
        assert!(server.received().is_empty());
    }

    #[tokio::test]
    async fn stop_drops_sessions_and_restart_serves_the_same_port() {
        let server = SmtpServer::start().await;
        let addr = server.addr();
        let mut open = Client::connect(&server).await;
        assert!(open.cmd("EHLO c").await.starts_with("250-"));
        server.stop().await;
        server.stop().await;
        assert!(open.closed().await);
        let refused = TcpStream::connect(addr).await.expect_err("refused");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        server.restart().await;
        server.restart().await;
        assert_eq!(server.addr(), addr);
        let mut client = Client::connect(&server).await;
        assert!(client.cmd("NOOP").await.starts_with("250 "));
        assert_eq!(server.sessions(), 2);
        // Dropping every handle stops the server too.
        drop(server);
        assert!(client.closed().await);
    }

    #[tokio::test]
    async fn wait_for_returns_what_it_has_on_timeout() {
        let server = SmtpServer::start().await;
        assert!(server.wait_for(0, WAIT).await.is_empty());
        let started = Instant::now();
        assert!(
            server
                .wait_for(1, Duration::from_millis(100))
                .await
                .is_empty()
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("YWI").as_deref(), Some(&b"ab"[..]));
        assert_eq!(decode_base64("YWJj").as_deref(), Some(&b"abc"[..]));
        assert_eq!(
            decode_base64("AGFsaWNlAHB3").as_deref(),
            Some(&b"\0alice\0pw"[..])
        );
        assert_eq!(decode_base64("Y"), None);
        assert_eq!(decode_base64("YQ==="), None);
        assert_eq!(decode_base64("Y Q=="), None);
        assert_eq!(decode_base64("\u{e9}"), None);
    }

    #[test]
    fn messages_are_parsed() {
        let raw = b"From: =?utf-8?q?Parl=C3=A9y?= <noreply@parley.test>\r\n\
            To: a@x.test, \"B\" <b@x.test>\r\n\
            Subject: =?utf-8?b?SMOpbGxv?=\r\n\
            MIME-Version: 1.0\r\n\
            Content-Type: multipart/alternative;\r\n boundary=\"b1\"\r\n\
            \r\n\
            --b1\r\n\
            Content-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\
            \r\n\
            Gr=C3=BC=C3=9Fe\r\n\
            --b1\r\n\
            Content-Type: text/html; charset=utf-8\r\n\
            Content-Transfer-Encoding: base64\r\n\
            \r\n\
            PHA+R3LDvMOfZTwvcD4=\r\n\
            --b1--\r\n";
        let mail = parse_mail("f@x.test".into(), vec!["a@x.test".into()], raw.to_vec());
        assert_eq!(mail.subject, "H\u{e9}llo");
        assert_eq!(mail.header_from, "Parl\u{e9}y <noreply@parley.test>");
        assert_eq!(mail.header_to, "a@x.test, B <b@x.test>");
        assert_eq!(mail.content_type, "multipart/alternative; boundary=b1");
        assert_eq!(mail.text.as_deref(), Some("Gr\u{fc}\u{df}e"));
        assert_eq!(mail.html.as_deref(), Some("<p>Gr\u{fc}\u{df}e</p>"));
        assert_eq!(mail.raw, raw);

        let html_only = b"Content-Type: text/html\r\n\r\n<b>hi</b>\r\n";
        let mail = parse_mail(String::new(), Vec::new(), html_only.to_vec());
        assert_eq!(mail.text, None);
        assert_eq!(mail.html.as_deref(), Some("<b>hi</b>\r\n"));

        let bare = b"Subject: x\r\n\r\nplain\r\n";
        let mail = parse_mail(String::new(), Vec::new(), bare.to_vec());
        assert_eq!(mail.content_type, "text/plain; charset=us-ascii");
        assert_eq!(mail.text.as_deref(), Some("plain\r\n"));
        assert_eq!(mail.html, None);

        let csv = b"Content-Type: text/csv; name=\"a b.csv\"\r\n\r\n1,2\r\n";
        let mail = parse_mail(String::new(), Vec::new(), csv.to_vec());
        assert_eq!(mail.content_type, "text/csv; name=\"a b.csv\"");
        assert_eq!(mail.text, None);

        let mail = parse_mail(String::new(), Vec::new(), Vec::new());
        assert_eq!(mail.subject, "");
    }
}
