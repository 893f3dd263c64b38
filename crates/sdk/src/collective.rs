//! Collectives for data-parallel training across processes and machines: the [`Collective`] contract, a single
//! rank ([`SingleRank`]) and a ring over TCP ([`TcpRing`]). burn 0.22 has none across processes, so aidos brings
//! its own. [`crate::Context::join_ring`] builds one after the scheduler's rendezvous.
//!
//! # The ring
//! Rank `r` holds one outgoing connection to rank `r+1` and one incoming from rank `r-1` (mod N).
//! [`Collective::all_reduce_sum`] is the bandwidth-optimal ring all-reduce: a reduce-scatter of N-1 steps (each
//! rank sends one of N chunks and adds the chunk it receives) and an all-gather of N-1 steps, so each rank sends
//! 2(N-1)/N of the buffer's bytes whatever N is. A dedicated sender thread writes while the caller's thread reads
//! and adds segment by segment, so a step's send, receive and reduction overlap and neither side can block the
//! other on full socket buffers.
//!
//! # Invariants
//! - Every rank holds bit-identical results after `all_reduce_sum` (also with [`Compression::Bf16`]: the owner of
//!   each reduced chunk rounds it to bf16 before sending it, exactly as the others receive it).
//! - Connecting is a handshake naming the job, the generation, the sender's rank and the world size; a connection
//!   from another generation (a rank of a gang the scheduler already replaced), job or ring position is refused
//!   with a message, so an old rank can never join a newer ring.
//! - Every message carries the operation's sequence number and length; ranks that disagree (one calls
//!   `all_reduce_sum` with another length, or `broadcast` while another reduces) get [`CollectiveError::Mismatch`],
//!   never garbage.
//! - No call blocks longer than [`RingOptions::timeout`] waiting for a peer; a peer that exits closes its sockets,
//!   which ends its neighbours' calls at once with [`CollectiveError::PeerClosed`], so a dead rank never leaves
//!   the others hanging. After any error the ring is unusable (every later call returns [`CollectiveError::Broken`]).
//!
//! Wire format (little-endian): handshake `b"AIDOSRNG"`, `u16` version, `u64` job tag, `u64` generation, `u32`
//! from-rank, `u32` world; answer `u8` 0 (accepted) or 1 followed by a `u16`-length UTF-8 reason. Each message:
//! `u64` sequence number, `u64` payload bytes, payload (f32 or bf16 values, or broadcast bytes).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"AIDOSRNG";
const VERSION: u16 = 1;
const HEADER: usize = 16;
/// Largest payload written by the caller's thread instead of the sender thread (see `TcpRing::send`).
const INLINE: usize = 8 << 10;
/// Bytes read and reduced at a time within one step.
const SEGMENT: usize = 256 << 10;
/// Largest payload of one message (a broadcast or one chunk): a corrupt length is refused, not allocated.
pub const MAX_MESSAGE: u64 = 4 << 30;

/// Errors of a collective. Each names the peer and the operation.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("collective: rank {peer} closed the connection during {op} (it exited or was stopped)")]
    PeerClosed { peer: usize, op: &'static str },
    #[error("collective: no progress from rank {peer} for {secs}s during {op} (timed out)")]
    Timeout { peer: usize, op: &'static str, secs: u64 },
    #[error("collective: {op} with rank {peer}: {source}")]
    Io {
        peer: usize,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("collective: ranks disagree: {0}")]
    Mismatch(String),
    #[error("collective: cannot form the ring: {0}")]
    Connect(String),
    #[error("collective: the ring is broken by an earlier error; the gang must restart")]
    Broken,
}

/// The collective operations a data-parallel program needs. Every rank must make the same calls in the same order
/// with the same lengths (see the module invariants for what happens otherwise).
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The gang's generation (the job attempt): it changes on every restart of the gang.
    fn generation(&self) -> u64;
    /// Element-wise sum across ranks, in place; every rank ends with the same values.
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CollectiveError>;
    /// Replaces `data` on every rank by `root`'s bytes.
    fn broadcast(&mut self, root: usize, data: &mut Vec<u8>) -> Result<(), CollectiveError>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.all_reduce_sum(&mut [0.0])
    }
}

/// The collective of a gang of one: every operation is a no-op.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleRank {
    pub generation: u64,
}

impl Collective for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn generation(&self) -> u64 {
        self.generation
    }
    fn all_reduce_sum(&mut self, _: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn broadcast(&mut self, _: usize, _: &mut Vec<u8>) -> Result<(), CollectiveError> {
        Ok(())
    }
}

/// How values travel on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// f32 as is: results are exact sums (up to summation order).
    #[default]
    None,
    /// bfloat16 (round to nearest even): half the bytes, ~3 significant digits per transferred partial sum.
    Bf16,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" | "none" => Ok(Compression::None),
            "bf16" => Ok(Compression::Bf16),
            o => Err(format!("unknown compression {o:?} (expected none or bf16)")),
        }
    }
}

/// Which transport a gang's collectives use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// NCCL when this build has it (feature `nccl`) and every rank can use it, else the TCP ring.
    #[default]
    Auto,
    Tcp,
    /// NCCL, or an error naming the ranks that cannot use it.
    Nccl,
}

/// Settings of a [`TcpRing`].
#[derive(Debug, Clone, Copy)]
pub struct RingOptions {
    /// Longest wait for a peer: to connect, and for any byte during an operation.
    pub timeout: Duration,
    /// Longest wait at the rendezvous for every rank of the generation to join (ranks join after loading their
    /// data, which may take a while on an empty cache).
    pub rendezvous_timeout: Duration,
    pub compression: Compression,
    /// NCCL or TCP for `all_reduce_sum` (the TCP ring is always formed: it bootstraps NCCL and carries broadcasts).
    pub transport: Transport,
}

impl Default for RingOptions {
    fn default() -> Self {
        RingOptions {
            timeout: Duration::from_secs(120),
            rendezvous_timeout: Duration::from_secs(600),
            compression: Compression::None,
            transport: Transport::Auto,
        }
    }
}

/// Who a ring belongs to: the handshake refuses anyone else.
#[derive(Debug, Clone)]
pub struct RingId {
    /// The job (hashed into the handshake).
    pub job: String,
    pub generation: u64,
    pub rank: usize,
    pub world: usize,
}

/// A ring all-reduce over TCP (see the module docs).
pub struct TcpRing {
    id: RingId,
    opts: RingOptions,
    recv: TcpStream,
    sender: Option<Sender>,
    seq: u64,
    broken: bool,
    /// Receive buffer of one segment.
    seg: Vec<u8>,
}

/// The thread that writes to the next rank: one message at a time, handed over with its buffer, handed back done.
struct Sender {
    jobs: mpsc::Sender<Vec<u8>>,
    done: mpsc::Receiver<(Vec<u8>, std::io::Result<()>)>,
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
    /// Free buffer for the next message.
    spare: Vec<u8>,
    /// The last message was written inline (`TcpRing::send`): there is nothing to wait for.
    inline_pending: bool,
}

impl Sender {
    fn start(stream: TcpStream) -> std::io::Result<Sender> {
        let (jobs, rx) = mpsc::channel::<Vec<u8>>();
        let (tx, done) = mpsc::channel();
        let mut w = stream.try_clone()?;
        let thread = std::thread::Builder::new().name("aidos-ring-send".into()).spawn(move || {
            while let Ok(buf) = rx.recv() {
                let r = w.write_all(&buf);
                if tx.send((buf, r)).is_err() {
                    return;
                }
            }
        })?;
        Ok(Sender { jobs, done, stream, thread: Some(thread), spare: Vec::new(), inline_pending: false })
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        let (dead, _) = mpsc::channel();
        self.jobs = dead;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn job_tag(job: &str) -> u64 {
    // FNV-1a: stable across builds and platforms.
    job.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn handshake_bytes(id: &RingId) -> Vec<u8> {
    let mut b = Vec::with_capacity(34);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&job_tag(&id.job).to_le_bytes());
    b.extend_from_slice(&id.generation.to_le_bytes());
    b.extend_from_slice(&(id.rank as u32).to_le_bytes());
    b.extend_from_slice(&(id.world as u32).to_le_bytes());
    b
}

/// Why a handshake `h` is not from `id`'s previous rank, or None when it is.
fn check_handshake(id: &RingId, h: &[u8; 34]) -> Option<String> {
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    if &h[..8] != MAGIC {
        return Some("not an aidos ring connection".into());
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != VERSION {
        return Some(format!("ring protocol version {version}, this rank speaks {VERSION}"));
    }
    if u64_at(10) != job_tag(&id.job) {
        return Some(format!("connection from another job's ring (this is {})", id.job));
    }
    let (generation, from, world) = (u64_at(18), u32_at(26) as usize, u32_at(30) as usize);
    if generation != id.generation {
        return Some(format!(
            "rank {from} is of generation {generation}, this ring is generation {} (the gang was restarted)",
            id.generation
        ));
    }
    if world != id.world {
        return Some(format!("rank {from} expects {world} ranks, this ring has {}", id.world));
    }
    let prev = (id.rank + id.world - 1) % id.world;
    if from != prev {
        return Some(format!("rank {from} connected to rank {}, which expects rank {prev}", id.rank));
    }
    None
}

fn connect_next(addr: &str, id: &RingId, deadline: Instant) -> Result<TcpStream, CollectiveError> {
    let next = (id.rank + 1) % id.world;
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| CollectiveError::Connect(format!("rank {next}'s address {addr:?}: {e}")))?
        .collect();
    let first = *addrs.first().ok_or_else(|| CollectiveError::Connect(format!("rank {next}'s address {addr:?}")))?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&first, left.max(Duration::from_millis(1))) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(CollectiveError::Connect(format!("cannot connect to rank {next} at {addr}: {e}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The answer of the next rank to our handshake on `out`: Ok(true) accepted, Ok(false) not yet (with `wait`
/// false), Err when refused or gone.
fn handshake_answer(out: &mut TcpStream, next: usize, wait: bool) -> Result<bool, CollectiveError> {
    out.set_nonblocking(!wait).ok();
    let mut status = [0u8; 1];
    let r = out.read(&mut status);
    out.set_nonblocking(false).ok();
    match r {
        Ok(1) if status[0] == 0 => Ok(true),
        Ok(1) => {
            let mut len = [0u8; 2];
            let _ = out.read_exact(&mut len);
            let mut msg = vec![0u8; u16::from_le_bytes(len) as usize];
            let _ = out.read_exact(&mut msg);
            Err(CollectiveError::Connect(format!("rank {next} refused this rank: {}", String::from_utf8_lossy(&msg))))
        }
        Ok(_) => Err(CollectiveError::Connect(format!("rank {next} closed the connection during the handshake"))),
        Err(e) if !wait && e.kind() == ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(CollectiveError::Connect(format!("rank {next} did not answer the handshake: {e}"))),
    }
}

/// Accepts connections until one carries the handshake of `id`'s previous rank; refuses the others with a reason.
/// Meanwhile watches `out` for the next rank's answer to our own handshake (`accepted`), so a refusal is reported
/// at once rather than as a timeout.
fn accept_prev(
    listener: &TcpListener,
    id: &RingId,
    deadline: Instant,
    out: &mut TcpStream,
    accepted: &mut bool,
) -> Result<TcpStream, CollectiveError> {
    let prev = (id.rank + id.world - 1) % id.world;
    let next = (id.rank + 1) % id.world;
    listener.set_nonblocking(true).map_err(|e| CollectiveError::Connect(format!("listener: {e}")))?;
    loop {
        match listener.accept() {
            Ok((mut s, from)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(ms(10))));
                let mut h = [0u8; 34];
                if s.read_exact(&mut h).is_err() {
                    continue;
                }
                match check_handshake(id, &h) {
                    None => {
                        s.write_all(&[0]).map_err(|e| CollectiveError::Connect(format!("rank {prev}: {e}")))?;
                        return Ok(s);
                    }
                    Some(why) => {
                        tracing_free_warn(&format!("refused a ring connection from {from}: {why}"));
                        let msg = why.as_bytes();
                        let len = msg.len().min(u16::MAX as usize);
                        let mut out = vec![1u8];
                        out.extend_from_slice(&(len as u16).to_le_bytes());
                        out.extend_from_slice(&msg[..len]);
                        let _ = s.write_all(&out);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if !*accepted {
                    *accepted = handshake_answer(out, next, false)?;
                }
                if Instant::now() >= deadline {
                    return Err(CollectiveError::Connect(format!(
                        "rank {prev} did not connect to rank {} within the timeout",
                        id.rank
                    )));
                }
                std::thread::sleep(ms(5));
            }
            Err(e) => return Err(CollectiveError::Connect(format!("accepting rank {prev}: {e}"))),
        }
    }
}

/// The SDK links no logging framework: refusals of stray connections go to stderr (the task's log).
fn tracing_free_warn(msg: &str) {
    eprintln!("aidos ring: {msg}");
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl TcpRing {
    /// Forms the ring: connects to rank `id.rank + 1` at `peers[id.rank + 1]` and accepts rank `id.rank - 1` on
    /// `listener` (whose address the rank published as `peers[id.rank]`). Fails after `opts.timeout`.
    pub fn connect(
        id: RingId,
        listener: &TcpListener,
        peers: &[String],
        opts: RingOptions,
    ) -> Result<TcpRing, CollectiveError> {
        if id.world < 2 || peers.len() != id.world || id.rank >= id.world {
            return Err(CollectiveError::Connect(format!(
                "rank {} of {} with {} peer addresses",
                id.rank,
                id.world,
                peers.len()
            )));
        }
        let deadline = Instant::now() + opts.timeout;
        let next = (id.rank + 1) % id.world;
        let mut out = connect_next(&peers[next], &id, deadline)?;
        out.set_nodelay(true).ok();
        out.write_all(&handshake_bytes(&id)).map_err(|e| CollectiveError::Connect(format!("rank {next}: {e}")))?;
        let mut accepted = false;
        let recv = accept_prev(listener, &id, deadline, &mut out, &mut accepted)?;
        if !accepted {
            out.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(ms(10)))).ok();
            handshake_answer(&mut out, next, true)?;
        }
        for s in [&out, &recv] {
            s.set_nodelay(true).ok();
            s.set_read_timeout(Some(opts.timeout)).ok();
            s.set_write_timeout(Some(opts.timeout)).ok();
        }
        let sender = Sender::start(out).map_err(|e| CollectiveError::Connect(format!("sender thread: {e}")))?;
        Ok(TcpRing { id, opts, recv, sender: Some(sender), seq: 0, broken: false, seg: vec![0; SEGMENT] })
    }

    fn next(&self) -> usize {
        (self.id.rank + 1) % self.id.world
    }
    fn prev(&self) -> usize {
        (self.id.rank + self.id.world - 1) % self.id.world
    }

    fn io_err(&self, peer: usize, op: &'static str, e: std::io::Error) -> CollectiveError {
        classify(e, peer, op, self.opts.timeout.as_secs())
    }

    /// Hands `payload` (written by `fill` into a recycled buffer) to the sender thread.
    /// A message of at most [`INLINE`] payload bytes is written by the calling thread itself (no thread hand-off:
    /// that is most of a small message's latency); larger ones go to the sender thread. Either way the previous
    /// message was completely written first (`wait_sent`), so the kernel's socket buffers hold any inline message
    /// without a reader and the write cannot block on a peer that is itself writing.
    fn send(&mut self, len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Result<(), CollectiveError> {
        let (seq, next) = (self.seq, self.next());
        let secs = self.opts.timeout.as_secs();
        let s = self.sender.as_mut().ok_or(CollectiveError::Broken)?;
        let mut buf = std::mem::take(&mut s.spare);
        buf.clear();
        buf.reserve(HEADER + len);
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&(len as u64).to_le_bytes());
        fill(&mut buf);
        debug_assert_eq!(buf.len(), HEADER + len);
        if len <= INLINE {
            let r = (&s.stream).write_all(&buf);
            s.spare = buf;
            s.inline_pending = true;
            return r.map_err(|e| classify(e, next, "send", secs));
        }
        if s.jobs.send(buf).is_err() {
            return Err(CollectiveError::PeerClosed { peer: next, op: "send" });
        }
        Ok(())
    }

    /// Waits for the message handed to the sender to be written.
    fn wait_sent(&mut self, op: &'static str) -> Result<(), CollectiveError> {
        let next = self.next();
        let s = self.sender.as_mut().ok_or(CollectiveError::Broken)?;
        if std::mem::take(&mut s.inline_pending) {
            return Ok(());
        }
        match s.done.recv() {
            Ok((buf, Ok(()))) => {
                s.spare = buf;
                Ok(())
            }
            Ok((_, Err(e))) => Err(self.io_err(next, op, e)),
            Err(_) => Err(CollectiveError::PeerClosed { peer: next, op }),
        }
    }

    /// Reads a message header from the previous rank and checks it against the expected sequence and length
    /// (`None`: any length up to [`MAX_MESSAGE`]). Returns the payload length.
    fn recv_header(&mut self, op: &'static str, expect: Option<usize>) -> Result<usize, CollectiveError> {
        let mut h = [0u8; HEADER];
        let prev = self.prev();
        self.recv.read_exact(&mut h).map_err(|e| self.io_err(prev, op, e))?;
        let seq = u64::from_le_bytes(h[..8].try_into().expect("8"));
        let len = u64::from_le_bytes(h[8..].try_into().expect("8"));
        if seq != self.seq {
            return Err(CollectiveError::Mismatch(format!(
                "rank {prev} is at collective call {seq}, rank {} at {} ({op})",
                self.id.rank, self.seq
            )));
        }
        if len > MAX_MESSAGE || expect.is_some_and(|e| e as u64 != len) {
            return Err(CollectiveError::Mismatch(format!(
                "rank {prev} sent {len} bytes where rank {} expected {} during {op} (different tensor sizes?)",
                self.id.rank,
                expect.map_or("at most 4 GiB".to_string(), |e| e.to_string())
            )));
        }
        Ok(len as usize)
    }

    fn run<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, CollectiveError>) -> Result<T, CollectiveError> {
        if self.broken {
            return Err(CollectiveError::Broken);
        }
        let r = f(self);
        if r.is_err() {
            self.broken = true;
            // Closing both directions ends the neighbours' calls at once.
            let _ = self.recv.shutdown(Shutdown::Both);
            self.sender = None;
        }
        r
    }

    /// One ring step: sends `data[send]` to the next rank while receiving the same-sized message for
    /// `data[recv]` from the previous one, then adds it (`reduce`) or stores it.
    fn step(
        &mut self,
        data: &mut [f32],
        send: std::ops::Range<usize>,
        recv: std::ops::Range<usize>,
        reduce: bool,
        op: &'static str,
    ) -> Result<(), CollectiveError> {
        let width = match self.opts.compression {
            Compression::None => 4,
            Compression::Bf16 => 2,
        };
        let comp = self.opts.compression;
        let src = &data[send.clone()];
        self.send(src.len() * width, |buf| encode(src, comp, buf))?;
        let want = recv.len() * width;
        self.recv_header(op, Some(want))?;
        let mut at = recv.start;
        let mut left = want;
        let (prev, secs) = (self.prev(), self.opts.timeout.as_secs());
        while left > 0 {
            let n = left.min(SEGMENT);
            let seg = &mut self.seg[..n];
            self.recv.read_exact(seg).map_err(|e| classify(e, prev, op, secs))?;
            let k = n / width;
            decode_into(&self.seg[..n], comp, &mut data[at..at + k], reduce);
            at += k;
            left -= n;
        }
        self.wait_sent(op)
    }
}

fn classify(e: std::io::Error, peer: usize, op: &'static str, secs: u64) -> CollectiveError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => CollectiveError::Timeout { peer, op, secs },
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => CollectiveError::PeerClosed { peer, op },
        _ => CollectiveError::Io { peer, op, source: e },
    }
}

fn encode(src: &[f32], comp: Compression, buf: &mut Vec<u8>) {
    match comp {
        Compression::None => {
            for v in src {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        Compression::Bf16 => {
            for v in src {
                buf.extend_from_slice(&to_bf16(*v).to_le_bytes());
            }
        }
    }
}

fn decode_into(bytes: &[u8], comp: Compression, out: &mut [f32], reduce: bool) {
    match comp {
        Compression::None => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                *o = if reduce { *o + v } else { v };
            }
        }
        Compression::Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                let v = from_bf16(u16::from_le_bytes([b[0], b[1]]));
                *o = if reduce { *o + v } else { v };
            }
        }
    }
}

/// f32 → bf16, round to nearest even (NaN stays NaN).
pub fn to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Bounds of chunk `i` of `n` over `len` values (the chunks tile `0..len`, sizes differ by at most one).
fn chunk(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    (i * len / n)..((i + 1) * len / n)
}

impl Collective for TcpRing {
    fn rank(&self) -> usize {
        self.id.rank
    }
    fn world_size(&self) -> usize {
        self.id.world
    }
    fn generation(&self) -> u64 {
        self.id.generation
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        self.run(|ring| {
            let (n, r, len) = (ring.id.world, ring.id.rank, data.len());
            // Reduce-scatter: after step s, rank r holds the sum over s+2 ranks of chunk (r - s - 1).
            for s in 0..n - 1 {
                let send = chunk(len, n, (r + n - s) % n);
                let recv = chunk(len, n, (r + 2 * n - s - 1) % n);
                ring.step(data, send, recv, true, "all-reduce (reduce-scatter)")?;
                ring.seq += 1;
            }
            // Rank r now owns the complete chunk r+1; with bf16 it keeps exactly what the others will receive.
            if ring.opts.compression == Compression::Bf16 {
                for v in &mut data[chunk(len, n, (r + 1) % n)] {
                    *v = from_bf16(to_bf16(*v));
                }
            }
            // All-gather.
            for s in 0..n - 1 {
                let send = chunk(len, n, (r + 1 + n - s) % n);
                let recv = chunk(len, n, (r + n - s) % n);
                ring.step(data, send, recv, false, "all-reduce (all-gather)")?;
                ring.seq += 1;
            }
            Ok(())
        })
    }

    fn broadcast(&mut self, root: usize, data: &mut Vec<u8>) -> Result<(), CollectiveError> {
        if root >= self.id.world {
            return Err(CollectiveError::Mismatch(format!("broadcast from rank {root} of {}", self.id.world)));
        }
        self.run(|ring| {
            let (r, n) = (ring.id.rank, ring.id.world);
            let last = (root + n - 1) % n;
            if r != root {
                let len = ring.recv_header("broadcast", None)?;
                data.clear();
                data.resize(len, 0);
                let prev = ring.prev();
                ring.recv.read_exact(data).map_err(|e| ring.io_err(prev, "broadcast", e))?;
            }
            if r != last {
                let src: &[u8] = data;
                ring.send(src.len(), |buf| buf.extend_from_slice(src))?;
                ring.wait_sent("broadcast")?;
            }
            ring.seq += 1;
            Ok(())
        })
    }
}

/// Binds `host:0` for a rank's incoming ring connection (host: the worker's advertise host).
pub fn bind_ring_listener(host: &str) -> std::io::Result<TcpListener> {
    let host = host.trim();
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    let addr = if host.contains(':') && !host.starts_with('[') { format!("[{host}]:0") } else { format!("{host}:0") };
    TcpListener::bind(addr)
}

/// Forms a ring of `generations.len()` ranks of `job` on loopback inside this process (in-process data
/// parallelism, tests, benchmarks): rank r's ring is of generation `generations[r]` (all equal for a ring that
/// forms). Each rank connects on a thread of its own; the results come back in rank order.
pub fn loopback_rings(job: &str, generations: &[u64], opts: RingOptions) -> Vec<Result<TcpRing, CollectiveError>> {
    let n = generations.len();
    let listeners: Vec<std::io::Result<TcpListener>> = (0..n).map(|_| bind_ring_listener("127.0.0.1")).collect();
    let peers: Vec<String> = listeners
        .iter()
        .map(|l| l.as_ref().ok().and_then(|l| l.local_addr().ok()).map_or(String::new(), |a| a.to_string()))
        .collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = listeners
            .into_iter()
            .zip(generations)
            .enumerate()
            .map(|(rank, (l, &generation))| {
                let (peers, job) = (&peers, job.to_string());
                s.spawn(move || {
                    let l = l.map_err(|e| CollectiveError::Connect(format!("listening on loopback: {e}")))?;
                    TcpRing::connect(RingId { job, generation, rank, world: n }, &l, peers, opts)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forms an in-process ring of `n` ranks on loopback and runs `f` on each rank's thread.
    fn ring<T: Send + 'static>(
        n: usize,
        generation: impl Fn(usize) -> u64,
        opts: RingOptions,
        f: impl Fn(Result<TcpRing, CollectiveError>) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<T> {
        let generations: Vec<u64> = (0..n).map(generation).collect();
        let hs: Vec<_> = loopback_rings("job-1", &generations, opts)
            .into_iter()
            .map(|r| {
                let f = f.clone();
                std::thread::spawn(move || f(r))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn input(rank: usize, len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7 + rank * 13) % 101) as f32 * 0.25 - rank as f32).collect()
    }

    #[test]
    fn all_reduce_sums_every_length_on_every_ring_size() {
        for n in 2..=4 {
            for len in [0usize, 1, 3, 4, 5, 1000, 100_003] {
                let out = ring(
                    n,
                    |_| 7,
                    RingOptions::default(),
                    move |r| {
                        let mut r = r.unwrap();
                        let mut v = input(r.rank(), len);
                        r.all_reduce_sum(&mut v).unwrap();
                        r.all_reduce_sum(&mut v).unwrap(); // the ring stays usable: sum of n copies
                        v
                    },
                );
                let inputs: Vec<Vec<f32>> = (0..n).map(|k| input(k, len)).collect();
                let want: Vec<f32> = (0..len).map(|i| inputs.iter().map(|v| v[i]).sum::<f32>() * n as f32).collect();
                for (rank, got) in out.iter().enumerate() {
                    assert_eq!(got, &out[0], "n={n} len={len}: rank {rank} differs from rank 0");
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "n={n} len={len}: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_compression_is_close_and_identical_on_every_rank() {
        let opts = RingOptions { compression: Compression::Bf16, ..Default::default() };
        let out = ring(
            3,
            |_| 1,
            opts,
            |r| {
                let mut r = r.unwrap();
                let mut v = input(r.rank(), 999);
                r.all_reduce_sum(&mut v).unwrap();
                v
            },
        );
        let inputs: Vec<Vec<f32>> = (0..3).map(|k| input(k, 999)).collect();
        let want: Vec<f32> = (0..999).map(|i| inputs.iter().map(|v| v[i]).sum()).collect();
        assert_eq!(out[1], out[0]);
        assert_eq!(out[2], out[0]);
        for (g, w) in out[0].iter().zip(&want) {
            assert!((g - w).abs() <= 0.02 * w.abs().max(1.0), "{g} vs {w}");
        }
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn broadcast_and_barrier() {
        let out = ring(
            4,
            |_| 3,
            RingOptions::default(),
            |r| {
                let mut r = r.unwrap();
                let mut b = if r.rank() == 2 { b"weights of rank 2".to_vec() } else { vec![9; 5] };
                r.broadcast(2, &mut b).unwrap();
                r.barrier().unwrap();
                let mut big = if r.rank() == 0 { (0..3_000_000u32).map(|i| i as u8).collect() } else { Vec::new() };
                r.broadcast(0, &mut big).unwrap();
                (b, big.len(), big.get(2_999_999).copied())
            },
        );
        for (b, n, last) in out {
            assert_eq!(b, b"weights of rank 2");
            assert_eq!((n, last), (3_000_000, Some((2_999_999u32 % 256) as u8)));
        }
    }

    #[test]
    fn a_rank_of_another_generation_is_refused() {
        let opts = RingOptions { timeout: Duration::from_secs(2), ..Default::default() };
        let out = ring(2, |rank| if rank == 0 { 5 } else { 4 }, opts, |r| r.err().map(|e| e.to_string()));
        let all = format!("{out:?}");
        assert!(out.iter().all(|e| e.is_some()), "{all}");
        assert!(all.contains("generation 4") && all.contains("generation 5"), "{all}");
    }

    #[test]
    fn mismatched_lengths_are_an_error_not_garbage() {
        let out = ring(
            2,
            |_| 1,
            RingOptions::default(),
            |r| {
                let mut r = r.unwrap();
                let mut v = vec![1.0; if r.rank() == 0 { 10 } else { 12 }];
                r.all_reduce_sum(&mut v).map_err(|e| e.to_string())
            },
        );
        let all = format!("{out:?}");
        assert!(out.iter().all(|r| r.is_err()), "{all}");
        assert!(all.contains("disagree") || all.contains("closed"), "{all}");
    }

    #[test]
    fn a_dead_peer_ends_the_others_calls_without_waiting_for_the_timeout() {
        let opts = RingOptions { timeout: Duration::from_secs(60), ..Default::default() };
        let t0 = Instant::now();
        let out = ring(
            3,
            |_| 1,
            opts,
            |r| {
                let mut r = r.unwrap();
                if r.rank() == 1 {
                    drop(r); // dies before the collective
                    return Ok(());
                }
                let mut v = vec![1.0; 1 << 20];
                let first = r.all_reduce_sum(&mut v).map_err(|e| e.to_string());
                assert!(matches!(r.all_reduce_sum(&mut v), Err(CollectiveError::Broken)) || first.is_ok());
                first
            },
        );
        assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
        assert!(out[0].is_err() && out[2].is_err(), "{out:?}");
        assert!(format!("{out:?}").contains("closed the connection"), "{out:?}");
    }

    #[test]
    fn a_silent_peer_times_out() {
        let opts = RingOptions { timeout: Duration::from_millis(500), ..Default::default() };
        let out = ring(
            2,
            |_| 1,
            opts,
            |r| {
                let mut r = r.unwrap();
                if r.rank() == 1 {
                    std::thread::sleep(Duration::from_secs(2)); // alive but never calls
                    return Ok(());
                }
                r.all_reduce_sum(&mut [1.0; 8]).map_err(|e| e.to_string())
            },
        );
        let e = out[0].as_ref().unwrap_err();
        assert!(e.contains("timed out") && e.contains("rank 1"), "{e}");
    }
}
