//! FUSE over io_uring (Linux 6.14+, protocol 7.42): requests arrive as completions of
//! `IORING_OP_URING_CMD` commands on the /dev/fuse fd, and a reply is committed together with
//! the fetch of the next request, in one submission.
//!
//! The kernel keeps one request queue per possible CPU and queues a request on the queue of
//! the CPU its caller runs on. Each queue here is served by threads pinned to that CPU, each
//! with its own ring and one registered entry, so a request and its reply wake a thread on the
//! caller's own CPU: on virtual machines a wake-up across CPUs costs tens of microseconds,
//! which is most of a /dev/fuse round trip. Two threads per queue keep a slow request (a large
//! copy-up) from holding up the CPU's next one, and let a request that waits for another (a
//! just-closed file's RELEASE) see it served.
//!
//! The kernel switches to the rings only once every queue has an entry; until then, and
//! always for FORGET and INTERRUPT, requests come over /dev/fuse, which the session keeps
//! serving. Rings and buffers are made before the INIT reply offers `FUSE_OVER_IO_URING`, so a
//! failure there falls back to /dev/fuse instead of leaving the mount waiting for queues.
//!
//! A request is dispatched like any other from its entry's own memory: the entry's payload
//! buffer follows a staging area where the request's header and per-op header are put, so the
//! whole request reads as one slice in the /dev/fuse layout (header, per-op header, payload)
//! and its payload is never copied. Its reply is written into the entry by a [`RingReplier`]
//! (held back until the dispatch returns when it would overwrite a payload the request still
//! borrows), and the ring thread commits it once written.

mod sys;

use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::sync::Arc;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::squeue::Entry128;
use log::debug;
use log::error;
use log::warn;
use nix::sys::eventfd::EfdFlags;
use nix::sys::eventfd::EventFd;
use parking_lot::Condvar;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::channel::Channel;
use crate::channel::ChannelSender;
use crate::reply::ReplySender;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;
use sys::EntryBuffers;
use sys::RawEntry;

/// Offset of `struct fuse_uring_ent_in_out` in the entry header.
const ENT_IN_OUT: usize = 256;
/// Offset of the per-op header (`op_in`) in the entry header, and its capacity.
const OP_IN: usize = 128;
const OP_IN_SIZE: usize = 128;
/// `sizeof(struct fuse_in_header)`.
const IN_HEADER: usize = 40;
/// The smallest payload buffer the kernel accepts (`FUSE_MIN_READ_BUFFER`).
const MIN_PAYLOAD: usize = 8192;
/// A held-back reply buffer larger than this is given back after use.
const STASH_KEEP: usize = 64 * 1024;
/// `user_data` of the stop eventfd's poll.
const STOP: u64 = u64::MAX;
/// Ring threads per queue when the configuration does not say.
const DEFAULT_THREADS_PER_QUEUE: usize = 2;

/// `sizeof(struct fuse_out_header)`.
const OUT_HEADER: usize = 16;

const FUSE_FORGET: u32 = 2;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;

/// Which transport serves a session's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// read(2)/writev(2) on /dev/fuse.
    DevFuse,
    /// FUSE over io_uring, with this many kernel queues and threads per queue.
    IoUring {
        /// One per possible CPU.
        queues: usize,
        /// Ring threads serving each queue.
        threads_per_queue: usize,
    },
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::DevFuse => write!(f, "/dev/fuse"),
            Transport::IoUring {
                queues,
                threads_per_queue,
            } => write!(
                f,
                "io_uring ({queues} queues x {threads_per_queue} threads)"
            ),
        }
    }
}

pub(super) fn set_payload_size(header: &mut [u8], size: u32) {
    header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&size.to_ne_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The 80-byte command area of a FUSE ring SQE (`struct fuse_uring_cmd_req`).
fn cmd_req(qid: u16, commit_id: u64) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

/// The number of CPUs the kernel may ever run (its queue count), from sysfs.
fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0usize;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.parse().map_err(io::Error::other)?,
            b.parse().map_err(io::Error::other)?,
        );
        n += b
            .checked_sub(a)
            .ok_or_else(|| io::Error::other("bad cpu range"))?
            + 1;
    }
    if n == 0 {
        return Err(io::Error::other("no possible CPUs"));
    }
    Ok(n)
}

/// Everything one ring thread needs, made before the INIT reply.
struct RingThread {
    qid: u16,
    ring: IoUring<Entry128, cqueue::Entry>,
    entry: EntryBuffers,
    stop: Arc<EventFd>,
}

/// The rings of a session, made before FUSE_OVER_IO_URING is offered to the kernel.
pub(crate) struct RingPool {
    threads: Vec<RingThread>,
    queues: usize,
    per_queue: usize,
    payload: usize,
}

impl std::fmt::Debug for RingPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingPool")
            .field("queues", &self.queues)
            .field("per_queue", &self.per_queue)
            .field("payload", &self.payload)
            .finish()
    }
}

impl RingPool {
    /// Make the rings and entry buffers for every queue. `payload` is the largest request or
    /// reply body (the kernel needs at least max(max_write, max_pages pages, 8 KiB)).
    pub(crate) fn create(payload: usize, per_queue: usize) -> io::Result<RingPool> {
        let queues = possible_cpus()?;
        let qmax = u16::try_from(queues).map_err(io::Error::other)?;
        let per_queue = if per_queue == 0 {
            DEFAULT_THREADS_PER_QUEUE
        } else {
            per_queue
        };
        let payload = payload.max(MIN_PAYLOAD);
        let mut threads = Vec::with_capacity(queues * per_queue);
        for qid in 0..qmax {
            for _ in 0..per_queue {
                // One entry plus the stop poll; completions never outnumber those.
                let ring = IoUring::<Entry128, cqueue::Entry>::builder().build(4)?;
                threads.push(RingThread {
                    qid,
                    ring,
                    entry: EntryBuffers::new(payload)?,
                    stop: Arc::new(EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?),
                });
            }
        }
        Ok(RingPool {
            threads,
            queues,
            per_queue,
            payload,
        })
    }

    /// The transport this pool gives.
    pub(crate) fn transport(&self) -> Transport {
        Transport::IoUring {
            queues: self.queues,
            threads_per_queue: self.per_queue,
        }
    }

    /// Start one thread per ring, serving `filesystem` through `ch`'s connection.
    pub(crate) fn spawn<FS: Filesystem>(
        self,
        ch: &Channel,
        make_loop: impl Fn(String) -> SessionEventLoop<FS>,
    ) -> io::Result<RingThreads> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for (i, t) in self.threads.into_iter().enumerate() {
            let name = format!("fuser-ring-{}-{}", t.qid, i % self.per_queue);
            let se = make_loop(name.clone());
            let dev = ch.sender();
            let fd = ch.as_fd().as_raw_fd();
            let payload = self.payload;
            stops.push(t.stop.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || serve(t, fd, dev, payload, se))?,
            );
        }
        Ok(RingThreads { handles, stops })
    }
}

/// The running ring threads of a session.
pub(crate) struct RingThreads {
    handles: Vec<std::thread::JoinHandle<()>>,
    stops: Vec<Arc<EventFd>>,
}

impl RingThreads {
    /// Stop every ring thread (the connection is gone) and wait for them.
    pub(crate) fn stop_and_join(self) {
        for s in &self.stops {
            let _ = s.write(1);
        }
        for h in self.handles {
            if h.join().is_err() {
                error!("an io_uring thread panicked");
            }
        }
    }
}

/// Where a ring request's reply goes: straight into its entry, while the ring thread waits.
#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    done: Condvar,
}

#[derive(Debug)]
struct SlotState {
    entry: Option<RawEntry>,
    replied: bool,
    /// The request being dispatched borrows this many payload bytes of the entry: a reply
    /// with arguments then goes to `held` and into the entry once the dispatch returned.
    borrowed_payload: usize,
    held: Vec<u8>,
}

/// The reply sender of a request that came over a ring.
#[derive(Debug, Clone)]
pub(crate) struct RingReplier {
    slot: Arc<Slot>,
    dev: ChannelSender,
}

impl RingReplier {
    /// Write the reply into the request's entry and wake its ring thread.
    pub(crate) fn send(&self, data: &[io::IoSlice<'_>]) -> io::Result<()> {
        let mut st = self.slot.state.lock();
        let Some(entry) = st.entry.filter(|_| !st.replied) else {
            return Err(io::Error::other("FUSE ring reply sent twice"));
        };
        let total: usize = data.iter().map(|s| s.len()).sum();
        if st.borrowed_payload > 0 && total > OUT_HEADER {
            // The request's payload is still borrowed by its dispatch: hold the reply back.
            let held = &mut st.held;
            held.clear();
            for s in data {
                held.extend_from_slice(s);
            }
            st.replied = true;
            self.slot.done.notify_all();
            return Ok(());
        }
        // SAFETY: the entry is set only while its request is being served and the ring thread
        // waits for `replied` under this mutex, so this is the only access to its buffers but
        // for the request's own slice, which covers no payload byte (`borrowed_payload` is 0)
        // or is not written (the reply has no arguments: only the header is).
        let fitted = unsafe { entry.write_reply(data) };
        let result = if fitted {
            Ok(())
        } else {
            let mut head = [0u8; 16];
            let mut at = 0;
            for s in data {
                for b in s.iter() {
                    if at < 16 {
                        head[at] = *b;
                        at += 1;
                    }
                }
            }
            head[0..4].copy_from_slice(&16u32.to_ne_bytes());
            head[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
            // SAFETY: as above.
            unsafe { entry.write_reply(&[io::IoSlice::new(&head)]) };
            Err(io::Error::other(
                "FUSE reply larger than the ring's payload buffer",
            ))
        };
        st.replied = true;
        self.slot.done.notify_all();
        result
    }

    /// The /dev/fuse connection, for what still goes through it (backing files).
    pub(crate) fn device(&self) -> &ChannelSender {
        &self.dev
    }
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        // Still correct, only the wake-ups may cross CPUs (a restricted cpuset, say).
        debug!("cannot pin the io_uring thread of queue {cpu}: {e}");
    }
}

/// What a ring thread last asked of the kernel for its entry (to repeat after EINTR/EAGAIN).
#[derive(Clone, Copy)]
enum Pending {
    Register,
    Commit(u64),
}

fn serve<FS: Filesystem>(
    mut t: RingThread,
    fd: RawFd,
    dev: ChannelSender,
    payload: usize,
    se: SessionEventLoop<FS>,
) {
    pin_to_cpu(usize::from(t.qid));
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            entry: None,
            replied: false,
            borrowed_payload: 0,
            held: Vec::new(),
        }),
        done: Condvar::new(),
    });
    let submit = |t: &mut RingThread, what: Pending| -> io::Result<()> {
        let e = match what {
            Pending::Register => {
                sys::fuse_cmd(fd, sys::CMD_REGISTER, cmd_req(t.qid, 0), Some(&t.entry), 0)
            }
            Pending::Commit(id) => {
                sys::fuse_cmd(fd, sys::CMD_COMMIT_AND_FETCH, cmd_req(t.qid, id), None, 0)
            }
        };
        sys::push(&mut t.ring, &e)
    };
    let mut pending = Pending::Register;
    let stop_fd = t.stop.as_fd().as_raw_fd();
    if let Err(e) =
        submit(&mut t, pending).and_then(|()| sys::push(&mut t.ring, &sys::poll_in(stop_fd, STOP)))
    {
        error!("io_uring queue {}: {e}", t.qid);
        return;
    }
    loop {
        match t.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                error!("io_uring queue {}: {e}", t.qid);
                return;
            }
        }
        let completions: Vec<(u64, i32)> = t
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, res) in completions {
            if user_data == STOP {
                return;
            }
            if res < 0 {
                match -res {
                    libc::EINTR | libc::EAGAIN => {
                        if submit(&mut t, pending).is_err() {
                            return;
                        }
                        continue;
                    }
                    // The connection ended (unmount, abort): nothing more to serve.
                    libc::ENOTCONN | libc::ECANCELED | libc::ENODEV | libc::ECONNABORTED => {
                        return;
                    }
                    e => {
                        let e = io::Error::from_raw_os_error(e);
                        if matches!(pending, Pending::Register) {
                            // The kernel then stops waiting for the rings: /dev/fuse serves.
                            warn!("io_uring queue {} refused its entry: {e}", t.qid);
                        } else {
                            error!("io_uring queue {}: {e}", t.qid);
                        }
                        return;
                    }
                }
            }
            let (commit_id, ending) = serve_one(&mut t, &slot, &dev, payload, &se);
            pending = Pending::Commit(commit_id);
            if submit(&mut t, pending).is_err() {
                error!("io_uring queue {}: cannot commit a reply", t.qid);
                return;
            }
            if ending {
                let _ = t.ring.submit();
                return;
            }
        }
    }
}

/// Serve the request in `t`'s entry: dispatch it from the entry, wait for its reply in the
/// entry. Returns the commit id and whether the session ends (DESTROY).
fn serve_one<FS: Filesystem>(
    t: &mut RingThread,
    slot: &Arc<Slot>,
    dev: &ChannelSender,
    payload: usize,
    se: &SessionEventLoop<FS>,
) -> (u64, bool) {
    let mut header = [0u8; ENT_IN_OUT + 32];
    header.copy_from_slice(&t.entry.header()[..ENT_IN_OUT + 32]);
    let len = u32_at(&header, 0) as usize;
    let opcode = u32_at(&header, 4);
    let commit_id = u64_at(&header, ENT_IN_OUT + 8);
    let payload_len = u32_at(&header, ENT_IN_OUT + 16) as usize;
    let op_len = len
        .checked_sub(IN_HEADER + payload_len)
        .filter(|n| *n <= OP_IN_SIZE && payload_len <= payload);
    let raw = t.entry.raw();
    {
        let mut st = slot.state.lock();
        st.entry = Some(raw);
        st.replied = false;
        st.borrowed_payload = payload_len;
    }
    let replier = RingReplier {
        slot: slot.clone(),
        dev: dev.clone(),
    };
    match op_len {
        Some(op_len) => {
            let (in_header, op_in) = (&header[..IN_HEADER], &header[OP_IN..OP_IN + op_len]);
            // The request's headers go just before its payload, which stays where the kernel
            // put it. Every per-op header is a multiple of 8 bytes, so this is aligned.
            match t.entry.request(in_header, op_in, payload_len) {
                Some(data) => {
                    match RequestWithSender::new(ReplySender::Ring(replier.clone()), data) {
                        Some(req) if opcode == FUSE_DESTROY => {
                            req.reply::<crate::ReplyEmpty>().ok();
                        }
                        Some(req) => req.dispatch(se),
                        None => reply_error(&replier, &header, libc::EIO),
                    }
                }
                None => {
                    error!("io_uring queue {}: misaligned request (opcode {opcode})", t.qid);
                    reply_error(&replier, &header, libc::EIO);
                }
            }
        }
        None => {
            error!("io_uring queue {}: malformed request (len {len})", t.qid);
            reply_error(&replier, &header, libc::EIO);
        }
    }
    let mut st = slot.state.lock();
    // The dispatch returned: the request no longer borrows the entry.
    st.borrowed_payload = 0;
    if matches!(opcode, FUSE_FORGET | FUSE_BATCH_FORGET) && !st.replied {
        // These have no reply (and come over /dev/fuse); an entry still needs a commit.
        // SAFETY: the request is done with and this thread holds the entry.
        unsafe { raw.write_reply(&[io::IoSlice::new(&ok_header(&header))]) };
        st.replied = true;
    }
    // A filesystem may reply from another thread, after `dispatch` returned.
    while !st.replied {
        slot.done.wait(&mut st);
    }
    if !st.held.is_empty() {
        let held = std::mem::take(&mut st.held);
        // SAFETY: the request is done with and its reply is in; this thread holds the entry.
        if !unsafe { raw.write_reply(&[io::IoSlice::new(&held)]) } {
            error!("io_uring queue {}: reply larger than the payload buffer", t.qid);
            let mut h = ok_header(&header);
            h[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
            // SAFETY: as above.
            unsafe { raw.write_reply(&[io::IoSlice::new(&h)]) };
        }
        st.held = held;
        st.held.clear();
        if st.held.capacity() > STASH_KEEP {
            st.held = Vec::new();
        }
    }
    st.entry = None;
    (commit_id, opcode == FUSE_DESTROY)
}

fn ok_header(request_header: &[u8]) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&16u32.to_ne_bytes());
    h[8..16].copy_from_slice(&request_header[8..16]);
    h
}

fn reply_error(replier: &RingReplier, request_header: &[u8], errno: i32) {
    let mut h = ok_header(request_header);
    h[4..8].copy_from_slice(&(-errno).to_ne_bytes());
    let _ = replier.send(&[io::IoSlice::new(&h)]);
}
