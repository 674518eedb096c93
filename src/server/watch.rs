//! An HTTP/1 connection's two clocks: how long a client may take to send a request head
//! (`header_read_timeout`), and how long a kept-alive connection may wait idle for its next
//! request (`keepalive_timeout`).
//!
//! Written here rather than left to hyper's head timer because that one allocates and registers
//! a timer for every request (0.25 µs of CPU per request, a sixth of hyper's whole server side,
//! measured against the same server without it) and cannot tell a slow head from an idle
//! connection. Here one timer per connection is re-armed only when it fires: it may fire early
//! (it then re-arms for the deadline that applies now), never late.
//!
//! The connection's reads tell when a head begins; the service tells when a request is taken
//! ([`Phase::taken`]); an answer is done when its body has been dropped ([`Answer`]) and the
//! connection's writes flushed. Bytes that arrive after an answer was made and before it is done
//! may be the next head: the head clock then starts when the answer is done. HTTP/2 (its whole
//! preface, or a request of that version) turns the clocks off: hyper's HTTP/2 settings govern
//! those connections.
//!
//! A full listener (`max_connections`) makes room by closing the connection idle the longest
//! ([`Connections::close_idlest`]), as nginx reuses idle keep-alive connections; only with none
//! idle is a new connection refused.

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// HTTP/2's connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A head has not begun.
const NONE: u64 = u64::MAX;

/// Where one connection stands: shared by its reads, its service and its answers' bodies.
#[derive(Debug)]
pub(super) struct Phase {
    /// When the connection was accepted; the times below count nanoseconds from it.
    origin: Instant,
    /// Requests taken whose answers' bodies are not dropped yet.
    in_flight: AtomicU32,
    /// The answer to the request in flight is made (bytes read now may be the next head).
    answered: AtomicBool,
    /// Every answer's body is dropped but the writes may not be flushed yet: still busy.
    unflushed: AtomicBool,
    /// Bytes arrived after an answer was made and before it was done.
    early: AtomicBool,
    /// When the last answer was done (idle since then, while nothing is in flight).
    idle_since: AtomicU64,
    /// When the first byte of the next head arrived (or the answer before it was done), or
    /// [`NONE`].
    head_since: AtomicU64,
    /// Off for HTTP/2.
    off: AtomicBool,
    /// Asked to close while idle, to make room for a new connection.
    closing: AtomicBool,
    /// Wakes the connection's reads when it is asked to close.
    waker: AtomicWaker,
}

impl Phase {
    /// A connection accepted now (its clocks start with [`Watched::new`]).
    pub fn new() -> Arc<Phase> {
        Arc::new(Phase {
            origin: Instant::now(),
            in_flight: AtomicU32::new(0),
            answered: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            early: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            off: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        })
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos().min(u128::from(NONE - 1)) as u64
    }

    /// The service took a request (its head is complete), of `version`: its answer is [`Answer`]
    /// once made.
    pub fn taken(&self, version: http::Version) {
        if version >= http::Version::HTTP_2 {
            self.off.store(true, Relaxed);
        }
        // Sequentially consistent with `close`: either it sees this request, or this sees it.
        self.in_flight.fetch_add(1, SeqCst);
        self.head_since.store(NONE, Relaxed);
        self.early.store(false, Relaxed);
        if self.closing.load(SeqCst) {
            // Asked too late: a request came first, so the connection stays.
            self.closing.store(false, SeqCst);
        }
    }

    /// The answer to the request in flight is made.
    fn answered(&self) {
        self.answered.store(true, Relaxed);
    }

    /// An answer's body was dropped: once nothing else is in flight, the answer is done when the
    /// writes are flushed.
    fn done(&self) {
        if self.in_flight.fetch_sub(1, SeqCst) == 1 {
            self.answered.store(false, Relaxed);
            self.unflushed.store(true, Relaxed);
        }
    }

    /// The connection's writes are flushed: a done answer is now sent, and the connection idle,
    /// or waiting for a head whose first bytes came early.
    fn flushed(&self) {
        if self.unflushed.load(Relaxed) && self.in_flight.load(Relaxed) == 0 {
            self.unflushed.store(false, Relaxed);
            let now = self.now();
            if self.early.swap(false, Relaxed) {
                self.head_since.store(now, Relaxed);
            } else {
                self.idle_since.store(now, Relaxed);
            }
        }
    }

    /// Bytes arrived: the first of a head when the connection was idle; perhaps the first of
    /// the next head when an answer is made but not done.
    fn read(&self) {
        if self.in_flight.load(Relaxed) > 0 {
            if self.answered.load(Relaxed) {
                self.early.store(true, Relaxed);
            }
        } else if self.unflushed.load(Relaxed) {
            self.early.store(true, Relaxed);
        } else if self.head_since.load(Relaxed) == NONE {
            self.head_since.store(self.now(), Relaxed);
        }
    }

    /// Whether nothing is in flight, sent, begun or asked of the connection.
    fn idle(&self) -> bool {
        !self.off.load(Relaxed)
            && self.in_flight.load(SeqCst) == 0
            && !self.unflushed.load(Relaxed)
            && !self.early.load(Relaxed)
            && self.head_since.load(SeqCst) == NONE
    }

    /// Since when the connection has waited idle for its next request, if it does.
    fn idle_since(&self) -> Option<Instant> {
        (self.idle() && !self.closing.load(Relaxed))
            .then(|| self.origin + Duration::from_nanos(self.idle_since.load(Relaxed)))
    }

    /// Asks the connection to close at once; false (and nothing asked) when it is no longer idle.
    fn close(&self) -> bool {
        self.closing.store(true, SeqCst);
        if !self.idle() {
            self.closing.store(false, SeqCst);
            return false;
        }
        self.waker.wake();
        true
    }

    /// What the connection waits for now and until when (nanoseconds from `origin`).
    fn waiting(&self, limits: &Limits) -> Waiting {
        if self.off.load(Relaxed) {
            return Waiting::Off;
        }
        if self.in_flight.load(Relaxed) > 0 || self.unflushed.load(Relaxed) {
            return Waiting::Answer;
        }
        let nanos = |d: Duration| d.as_nanos().min(u128::from(NONE / 2)) as u64;
        match self.head_since.load(Relaxed) {
            NONE => Waiting::Due(Wait::Idle, self.idle_since.load(Relaxed).saturating_add(nanos(limits.keepalive))),
            since => Waiting::Due(Wait::Head, since.saturating_add(nanos(limits.head))),
        }
    }
}

enum Waiting {
    /// HTTP/2: no clock.
    Off,
    /// A request is in flight or its answer not yet sent: nothing is due.
    Answer,
    /// A head or the next request, due at this time.
    Due(Wait, u64),
}

#[derive(Debug, Clone, Copy)]
enum Wait {
    Head,
    Idle,
}

/// The two timeouts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// From a head's first byte (or the connection's accept) to its end.
    pub head: Duration,
    /// From an answer's end to the next head's first byte.
    pub keepalive: Duration,
}

/// A connection's byte stream with its clocks: a head that takes too long ends the reads with
/// an error (hyper closes the connection), an idle wait that does, or a close asked to make
/// room, ends them as a clean close.
pub(super) struct Watched<T> {
    io: T,
    phase: Arc<Phase>,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
    /// Bytes of HTTP/2's preface matched so far by the connection's first bytes; `usize::MAX`
    /// once they differ.
    preface: usize,
    /// Counts the connections closed to make room.
    closed: Option<metrics::Counter>,
}

impl<T> Watched<T> {
    /// `io` with the clocks of `phase`, ready for its first request (after a TLS handshake, if
    /// any): the first head is due within `limits.head` from now. `closed` counts a close asked
    /// to make room when it happens.
    pub fn new(io: T, phase: Arc<Phase>, limits: Limits, closed: Option<metrics::Counter>) -> Self {
        phase.head_since.store(phase.now(), Relaxed);
        let timer = Box::pin(tokio::time::sleep(limits.head));
        Watched { io, phase, limits, timer, preface: 0, closed }
    }

    /// Matches the connection's first bytes against HTTP/2's preface; all of it turns the
    /// clocks off.
    fn match_preface(&mut self, bytes: &[u8]) {
        let at = self.preface;
        let n = bytes.len().min(H2_PREFACE.len() - at);
        if bytes[..n] == H2_PREFACE[at..at + n] {
            self.preface = at + n;
            if self.preface == H2_PREFACE.len() {
                self.phase.off.store(true, Relaxed);
            }
        } else {
            self.preface = usize::MAX;
        }
    }

    /// Pending until what the connection waits for is overdue: then an error for a head, the
    /// end of the stream for an idle wait (or a close asked to make room).
    fn poll_clock(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Registered before anything is read, so that a close asked meanwhile (or while an answer
        // is still being sent) wakes the reads again.
        self.phase.waker.register(cx.waker());
        loop {
            let (wait, due_at) = match self.phase.waiting(&self.limits) {
                Waiting::Off => return Poll::Pending,
                Waiting::Answer => {
                    // Nothing is due, but the answer may end without another read being polled
                    // (hyper reads ahead while it still sends the answer): the timer stays
                    // armed, never later than the idle wait that follows could be due, so that
                    // the idle clock is looked at in time. (Every deadline set so far is within
                    // `head` or `keepalive` of a time before the answer ends: only a keep-alive
                    // shorter than `head` needs the clock read here.)
                    let check = self.limits.head.min(self.limits.keepalive);
                    let bound = (self.limits.keepalive < self.limits.head).then(|| Instant::now() + check);
                    if self.timer.is_elapsed() || bound.is_some_and(|b| self.timer.deadline().into_std() > b) {
                        self.timer.as_mut().reset(bound.unwrap_or_else(|| Instant::now() + check).into());
                    }
                    ready!(self.timer.as_mut().poll(cx));
                    continue;
                }
                Waiting::Due(wait, due) => (wait, self.phase.origin + Duration::from_nanos(due)),
            };
            if matches!(wait, Wait::Idle) && self.phase.closing.load(SeqCst) {
                if let Some(closed) = &self.closed {
                    closed.increment(1);
                }
                return Poll::Ready(Ok(()));
            }
            // Early is fine (it re-arms below), late is not.
            if self.timer.deadline().into_std() > due_at {
                self.timer.as_mut().reset(due_at.into());
            }
            ready!(self.timer.as_mut().poll(cx));
            if Instant::now() >= due_at {
                return Poll::Ready(match wait {
                    Wait::Head => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no complete request head within header_read_timeout ({:?})", self.limits.head),
                    )),
                    Wait::Idle => Ok(()),
                });
            }
            self.timer.as_mut().reset(due_at.into());
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    if this.preface < H2_PREFACE.len() {
                        this.match_preface(got);
                    }
                    this.phase.read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_clock(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// hyper flushes the stream once its own buffer is written out: a done answer is then sent.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.phase.flushed();
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The connections of one listener, so that a full one can make room.
#[derive(Debug, Default)]
pub(super) struct Connections {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    all: Vec<Weak<Phase>>,
    /// Until when a search that found none idle is not repeated: a flood of connections at the
    /// limit is then refused without a search each.
    none_idle_until: Option<Instant>,
}

/// How long a search for an idle connection that found none is not repeated.
const NONE_IDLE_FOR: Duration = Duration::from_millis(10);

impl Connections {
    /// Counts in a connection that was just accepted.
    pub fn add(&self, phase: &Arc<Phase>) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if r.all.len() == r.all.capacity() {
            // Forget the closed ones before the list grows: amortized, the list stays within
            // twice the connections open.
            r.all.retain(|c| c.strong_count() > 0);
        }
        r.all.push(Arc::downgrade(phase));
    }

    /// Asks the connection idle the longest to close (it answers nothing more and closes as
    /// soon as its task runs); false when none is idle.
    pub fn close_idlest(&self) -> bool {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if r.none_idle_until.is_some_and(|until| now < until) {
            return false;
        }
        let mut idle: Vec<(Instant, Arc<Phase>)> =
            r.all.iter().filter_map(Weak::upgrade).filter_map(|c| Some((c.idle_since()?, c))).collect();
        idle.sort_unstable_by_key(|(since, _)| *since);
        // One that took a request since it was looked at says no: the next one is asked.
        if idle.iter().any(|(_, c)| c.close()) {
            r.none_idle_until = None;
            return true;
        }
        r.none_idle_until = Some(now + NONE_IDLE_FOR);
        false
    }
}

/// An answer's body that tells its connection, when dropped (sent, or abandoned), that the
/// request is done.
pub(super) struct Answer<B> {
    body: B,
    phase: Arc<Phase>,
}

impl<B> Answer<B> {
    /// `body`, the answer to a request `phase` counted as taken.
    pub fn new(body: B, phase: Arc<Phase>) -> Self {
        phase.answered();
        Answer { body, phase }
    }
}

impl<B> Drop for Answer<B> {
    fn drop(&mut self) {
        self.phase.done();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Answer<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_idle_wait_is_closed_on_time_even_when_its_answer_ended_unseen() {
        let (mut client, server) = tokio::io::duplex(1024);
        let phase = Phase::new();
        let limits = Limits { head: Duration::from_secs(60), keepalive: Duration::from_millis(200) };
        let mut io = Watched::new(server, phase.clone(), limits, None);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        phase.taken(http::Version::HTTP_11);
        let answer = Answer::new(http_body_util::Empty::<Bytes>::new(), phase.clone());
        // The server reads ahead while it still holds the answer (nothing is there yet), and
        // that read is not polled again until something wakes it: only the clock can.
        let reader = tokio::spawn(async move { io.read(&mut [0u8; 64]).await });
        tokio::task::yield_now().await;
        drop(answer);
        // hyper flushes what it wrote.
        phase.flushed();
        // The idle wait is due 200 ms after the answer, long before the head limit.
        let read = tokio::time::timeout(Duration::from_secs(10), reader).await.map(Result::unwrap);
        assert!(matches!(read, Ok(Ok(0))), "closed as idle: {read:?}");
    }

    #[tokio::test]
    async fn a_full_listener_closes_the_connection_idle_the_longest_and_never_a_busy_one() {
        let limits = Limits { head: Duration::from_secs(60), keepalive: Duration::from_secs(60) };
        let connections = Connections::default();
        let mut watched = Vec::new();
        for _ in 0..3 {
            let (client, server) = tokio::io::duplex(1024);
            let phase = Phase::new();
            connections.add(&phase);
            watched.push((client, Watched::new(server, phase.clone(), limits, None), phase));
        }
        // None has finished a request yet: none is idle.
        assert!(!connections.close_idlest());
        for (_, io, phase) in &mut watched {
            phase.taken(http::Version::HTTP_11);
            drop(Answer::new(http_body_util::Empty::<Bytes>::new(), phase.clone()));
            // Sent but not flushed yet: not idle.
            assert!(!phase.idle());
            phase.flushed();
            // Waiting for the next head.
            assert!(tokio::time::timeout(Duration::from_millis(5), io.read(&mut [0u8; 8])).await.is_err());
        }
        // The second takes a request: busy.
        watched[1].2.taken(http::Version::HTTP_11);
        assert!(connections.close_idlest());
        let read = tokio::time::timeout(Duration::from_secs(10), watched[0].1.read(&mut [0u8; 8])).await;
        assert!(matches!(read, Ok(Ok(0))), "the idlest was closed: {read:?}");
        assert!(connections.close_idlest(), "the third is idle too");
        assert!(!connections.close_idlest(), "the busy one is never closed");
    }

    #[tokio::test]
    async fn only_the_whole_http2_preface_turns_the_clocks_off() {
        let limits = Limits { head: Duration::from_millis(100), keepalive: Duration::from_secs(60) };
        // A "P" alone (of POST, PUT, PATCH) keeps the head clock running.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = Watched::new(server, Phase::new(), limits, None);
        client.write_all(b"P").await.unwrap();
        assert_eq!(io.read(&mut [0u8; 64]).await.unwrap(), 1);
        let read = tokio::time::timeout(Duration::from_secs(10), io.read(&mut [0u8; 64])).await;
        assert!(matches!(&read, Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut), "{read:?}");
        // The whole preface, in two reads: no clock.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = Watched::new(server, Phase::new(), limits, None);
        for part in [&H2_PREFACE[..3], &H2_PREFACE[3..]] {
            client.write_all(part).await.unwrap();
            assert_eq!(io.read(&mut [0u8; 64]).await.unwrap(), part.len());
        }
        assert!(tokio::time::timeout(Duration::from_millis(400), io.read(&mut [0u8; 64])).await.is_err());
    }

    #[tokio::test]
    async fn a_head_that_came_with_an_answer_in_flight_is_held_to_the_head_limit() {
        let limits = Limits { head: Duration::from_millis(100), keepalive: Duration::from_secs(60) };
        let (mut client, server) = tokio::io::duplex(1024);
        let phase = Phase::new();
        let connections = Connections::default();
        connections.add(&phase);
        let mut io = Watched::new(server, phase.clone(), limits, None);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(io.read(&mut [0u8; 64]).await.unwrap() > 0);
        phase.taken(http::Version::HTTP_11);
        let answer = Answer::new(http_body_util::Empty::<Bytes>::new(), phase.clone());
        // Pipelined: the next head begins while the answer is still being sent.
        client.write_all(b"GET / HT").await.unwrap();
        assert!(io.read(&mut [0u8; 64]).await.unwrap() > 0);
        drop(answer);
        phase.flushed();
        assert!(!connections.close_idlest(), "a head has begun: not idle");
        let read = tokio::time::timeout(Duration::from_secs(10), io.read(&mut [0u8; 64])).await;
        assert!(matches!(&read, Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut), "{read:?}");
    }
}
