//! What a pull or push tells its caller as it goes, so the command line can draw bars on a
//! terminal, print plain lines otherwise, or stay quiet.

use crate::image::Digest;

/// How a blob ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Already in the store (pull) or the registry (push): nothing moved.
    Present,
    /// Mounted from another repository of the registry (push).
    Mounted,
    /// Transferred.
    Transferred,
}

/// Receives a transfer's events; called from several threads.
pub trait Progress: Sync {
    /// A blob of `size` bytes starts (`resumed` bytes of it were already here).
    fn start(&self, _blob: &Digest, _size: u64, _resumed: u64) {}
    /// `n` more bytes of `blob` moved.
    fn advance(&self, _blob: &Digest, _n: u64) {}
    /// `blob` is finished.
    fn done(&self, _blob: &Digest, _how: Done) {}
    /// A note for the user (resuming, retrying).
    fn note(&self, _msg: &str) {}
}

/// Progress that shows nothing.
pub struct Quiet;

impl Progress for Quiet {}
