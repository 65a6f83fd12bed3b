//! The unsafe edge of the io_uring transport: building the 128-byte SQEs the kernel's FUSE
//! ring commands need, pushing them, and the ring entry buffers that the kernel and a reply
//! (possibly on another thread) write through raw pointers.

use std::alloc::Layout;
use std::io;
use std::os::fd::RawFd;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue::Entry128;
use io_uring::types;

/// `FUSE_IO_URING_CMD_REGISTER`: hand the kernel an entry's buffers and wait for a request.
pub(super) const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: the reply is in the entry; wait for the next request.
pub(super) const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Size of the header buffer given to the kernel: `struct fuse_uring_req_header` is 288 bytes.
pub(super) const HEADER_SIZE: usize = 512;

/// Offset of the payload buffer in an entry's allocation. The header sits at the start; the
/// bytes just before the payload take a request's `fuse_in_header` and per-op header, so the
/// request reads as one slice in the /dev/fuse layout without copying its payload.
pub(super) const STAGE: usize = 4096;

/// One ring entry's memory: the header and the payload buffer in one allocation, registered
/// once with the kernel (`FUSE_IO_URING_CMD_REGISTER`) and reused for every request of the
/// entry.
///
/// The kernel writes a request into both while the entry is waiting and reads the reply from
/// them after a commit; in between they belong to whoever serves the request. They are never
/// freed: a command still queued when its ring thread ends could be written by the kernel later,
/// and the daemon ends with its mount anyway.
pub(super) struct EntryBuffers {
    base: *mut u8,
    payload_len: usize,
    iov: Box<[libc::iovec; 2]>,
}

// SAFETY: the buffers are plain heap memory owned by this value; which thread may touch them
// at a time is decided by the entry's state machine in `super` (the kernel, the ring thread, or
// the replier while the ring thread waits), never by two at once.
unsafe impl Send for EntryBuffers {}

impl EntryBuffers {
    /// Allocate the buffers, zeroed lazily by the allocator (untouched pages cost no memory
    /// until a large request or reply uses them: the kernel wants room for the largest).
    pub(super) fn new(payload_len: usize) -> io::Result<EntryBuffers> {
        let base = alloc_zeroed(STAGE + payload_len)?;
        // SAFETY: the allocation has STAGE + payload_len bytes.
        let payload = unsafe { base.add(STAGE) };
        let iov = Box::new([
            libc::iovec {
                iov_base: base.cast(),
                iov_len: HEADER_SIZE,
            },
            libc::iovec {
                iov_base: payload.cast(),
                iov_len: payload_len,
            },
        ]);
        Ok(EntryBuffers {
            base,
            payload_len,
            iov,
        })
    }

    /// The header (`struct fuse_uring_req_header` at its start).
    pub(super) fn header(&mut self) -> &mut [u8] {
        // SAFETY: `base` points to STAGE >= HEADER_SIZE bytes owned by self; `&mut self` makes
        // this the only live reference made by Rust code (the kernel touches it only while the
        // entry waits in the kernel, when no request is being served from it).
        unsafe { std::slice::from_raw_parts_mut(self.base, HEADER_SIZE) }
    }

    /// The request in the entry as one slice in the /dev/fuse layout: `in_header` and `op_in`
    /// are written just before the first `payload_len` bytes of the payload, which stay where
    /// the kernel put them. `None` if that would not be 8-byte aligned or does not fit.
    ///
    /// While the slice lives, a reply must not be written over the payload (see
    /// [`RawEntry::write_reply`]).
    pub(super) fn request(
        &mut self,
        in_header: &[u8],
        op_in: &[u8],
        payload_len: usize,
    ) -> Option<&[u8]> {
        let head = in_header.len() + op_in.len();
        if head > STAGE - HEADER_SIZE || payload_len > self.payload_len {
            return None;
        }
        let start = STAGE - head;
        if (self.base as usize + start) % 8 != 0 {
            return None;
        }
        // SAFETY: [start, STAGE) lies in the allocation, past the header the kernel writes,
        // and `&mut self` makes this the only access to it now.
        let stage = unsafe { std::slice::from_raw_parts_mut(self.base.add(start), head) };
        stage[..in_header.len()].copy_from_slice(in_header);
        stage[in_header.len()..].copy_from_slice(op_in);
        // SAFETY: [start, STAGE + payload_len) lies in the allocation; the kernel wrote the
        // payload before completing the command and does not touch it until the next commit.
        Some(unsafe { std::slice::from_raw_parts(self.base.add(start), head + payload_len) })
    }

    /// Raw views of both buffers, for a replier that writes while the ring thread waits.
    pub(super) fn raw(&mut self) -> RawEntry {
        RawEntry {
            header: self.base,
            // SAFETY: within the allocation (see `new`).
            payload: unsafe { self.base.add(STAGE) },
            payload_len: self.payload_len,
        }
    }
}

/// Word-aligned: the allocator then gets zeroed memory from `calloc`, which for large sizes
/// are fresh pages that cost nothing until touched (a page-aligned request would be zeroed by
/// hand, all of it at once). The kernel needs no particular alignment.
fn layout(len: usize) -> Layout {
    Layout::from_size_align(len.max(1), 8).expect("word-aligned layout")
}

fn alloc_zeroed(len: usize) -> io::Result<*mut u8> {
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout(len)) };
    if p.is_null() {
        Err(io::Error::from(io::ErrorKind::OutOfMemory))
    } else {
        Ok(p)
    }
}

/// Raw pointers to one entry's buffers, carried by the replier of the request in the entry.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawEntry {
    header: *mut u8,
    payload: *mut u8,
    payload_len: usize,
}

// SAFETY: see `EntryBuffers`: the replier writes only between the dispatch of a request and the
// ring thread's commit, while the ring thread waits for it under the slot's mutex.
unsafe impl Send for RawEntry {}

impl RawEntry {
    /// Write a reply: `out` is the `fuse_out_header` followed by the reply's arguments, as they
    /// would be written to /dev/fuse. Returns false if it does not fit the payload buffer.
    ///
    /// # Safety
    /// The caller must hold the entry (the request is being served and the ring thread waits
    /// for this reply, so neither the kernel nor Rust code has the buffers).
    pub(super) unsafe fn write_reply(&self, out: &[io::IoSlice<'_>]) -> bool {
        const OUT_HEADER: usize = 16;
        let total: usize = out.iter().map(|s| s.len()).sum();
        let args = total.saturating_sub(OUT_HEADER);
        if args > self.payload_len {
            return false;
        }
        // SAFETY: per the contract above nothing else accesses the buffers now; the header has
        // HEADER_SIZE bytes and `args` fits the payload.
        let (header, payload) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.header, HEADER_SIZE),
                std::slice::from_raw_parts_mut(self.payload, args),
            )
        };
        let mut at = 0usize;
        for slice in out {
            for (i, b) in slice.iter().enumerate() {
                let pos = at + i;
                if pos < OUT_HEADER {
                    header[pos] = *b;
                } else {
                    payload[pos - OUT_HEADER] = *b;
                }
            }
            at += slice.len();
        }
        super::set_payload_size(header, args as u32);
        true
    }
}

/// The SQE of a FUSE ring command on the /dev/fuse fd `fd`. `register` carries the entry's
/// buffers (`FUSE_IO_URING_CMD_REGISTER` reads two iovecs from `addr`/`len`).
pub(super) fn fuse_cmd(
    fd: RawFd,
    cmd_op: u32,
    cmd: [u8; 80],
    register: Option<&EntryBuffers>,
    user_data: u64,
) -> Entry128 {
    let mut b = opcode::UringCmd80::new(types::Fd(fd), cmd_op).cmd(cmd);
    if let Some(e) = register {
        b = b.addr(Some(e.iov.as_ptr() as u64));
    }
    let entry = b.build().user_data(user_data);
    if register.is_none() {
        return entry;
    }
    // The io-uring crate's builder has no field for the SQE's `len` (offset 24 of
    // `struct io_uring_sqe`), which the register command needs to be 2 (two iovecs).
    // SAFETY: `Entry128` is `#[repr(C)]` over the kernel's 64-byte `io_uring_sqe` plus the
    // 64-byte extension (the crate asserts size 128), so it is 128 plain bytes and every byte
    // pattern written here is a valid `io_uring_sqe`.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(entry) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above, the reverse direction.
    unsafe { std::mem::transmute::<[u8; 128], Entry128>(raw) }
}

/// A poll for readability of `fd` (the ring's stop eventfd).
pub(super) fn poll_in(fd: RawFd, user_data: u64) -> Entry128 {
    Entry128::from(
        opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(user_data),
    )
}

/// Queue `entry` on `ring`'s submission queue.
pub(super) fn push(
    ring: &mut IoUring<Entry128, cqueue::Entry>,
    entry: &Entry128,
) -> io::Result<()> {
    // SAFETY: every buffer an SQE of this module points to (iovec array, entry buffers) is
    // owned by an `EntryBuffers`, which is never freed (see there).
    unsafe { ring.submission().push(entry) }
        .map_err(|_| io::Error::other("io_uring submission queue full"))
}
