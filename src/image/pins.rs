//! Garbage collection that never waits for the store's users and never frees what they use.
//!
//! Every process that does more than read the store (build, import, load, tag, commit, run,
//! save) opens a *session* the first time it needs one: a file `pins/ID` that it holds an
//! exclusive `flock` on for as long as it lives, listing what it *pins*: the blobs and
//! extracted layers it has resolved, written or extracted and may still reference. The
//! temporary files and directories it makes carry its session ID in their names. Garbage
//! collection frees only what neither the index, a container, nor a live session needs, and the
//! temporaries of sessions that are gone; a session whose process died is seen by its lock
//! being free.
//!
//! One lock, `.gc.lock`, is taken exclusively and only for short steps: by a user while it
//! resolves what it will use and pins it, or renames a finished blob or layer into place and
//! pins it; by garbage collection while it reads the pins, the index and the containers and
//! moves the garbage aside (deleting it comes after). A build that runs for an hour therefore
//! holds nothing `rmi` waits for (a shared lock held for the whole build used to starve it),
//! and `rmi` still cannot free a blob a build is about to reference: either the build pinned
//! it before collection looked, or the build resolves after collection and no longer finds it.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::digest::Digest;
use super::lock::Lock;
use super::{io_err, private, Result};

/// Prefix of the names of temporary entries (blobs being written, layers being extracted,
/// build steps, garbage set aside): `.tmp-SESSION-WHAT-RANDOM`.
pub const TEMP_PREFIX: &str = ".tmp-";

/// The lock file of the short steps.
const GC_LOCK: &str = ".gc.lock";

/// The directory of session files.
const DIR: &str = "pins";

/// This process's session in one store, opened on first use and ended (its file removed) when
/// the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
    session: Arc<Mutex<Option<Session>>>,
}

#[derive(Debug)]
struct Session {
    id: String,
    path: PathBuf,
    lock: Lock,
    pinned: HashSet<String>,
}

impl Session {
    fn start(root: &Path) -> Result<Session> {
        let dir = root.join(DIR);
        private::create(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        loop {
            let id = format!("{:016x}", fastrand::u64(..));
            let path = dir.join(&id);
            match Lock::new_file(&path) {
                Ok(lock) => {
                    return Ok(Session {
                        id,
                        path,
                        lock,
                        pinned: HashSet::new(),
                    })
                }
                Err(super::Error::Io { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// This process's session inside the short-step lock: what it may pin.
pub struct Pinner<'a> {
    session: &'a mut Session,
}

impl Pinner<'_> {
    /// The session's ID.
    pub fn id(&self) -> &str {
        &self.session.id
    }

    /// A fresh name for a temporary entry of this session.
    pub fn temp_name(&self, what: &str) -> String {
        temp_name(&self.session.id, what)
    }

    /// Keep blob `d` until this session ends.
    pub fn blob(&mut self, d: &Digest) -> Result<()> {
        self.add(format!("blob {}", d.hex()))
    }

    /// Keep the extracted layer of diff ID `diff_id` until this session ends.
    pub fn layer(&mut self, diff_id: &Digest) -> Result<()> {
        self.add(format!("layer {}", diff_id.hex()))
    }

    /// Keep the lazy layer of TOC digest hex `toc` (`lazy/HEX/`) until this session ends.
    pub fn lazy(&mut self, toc: &str) -> Result<()> {
        self.add(format!("lazy {toc}"))
    }

    fn add(&mut self, line: String) -> Result<()> {
        if self.session.pinned.contains(&line) {
            return Ok(());
        }
        // One write of a whole line to an append-only file, under the lock collection reads in.
        self.session
            .lock
            .file()
            .write_all(format!("{line}\n").as_bytes())
            .map_err(io_err(format!("write {}", self.session.path.display())))?;
        self.session.pinned.insert(line);
        Ok(())
    }
}

fn temp_name(session: &str, what: &str) -> String {
    format!("{TEMP_PREFIX}{session}-{what}-{:016x}", fastrand::u64(..))
}

impl Pins {
    /// The (not yet opened) session of this process in the store at `root`.
    pub fn new(root: &Path) -> Pins {
        Pins {
            root: root.to_path_buf(),
            session: Arc::new(Mutex::new(None)),
        }
    }

    /// Run `f` as one short step that garbage collection cannot interleave with, giving it this
    /// process's session (opened now if needed) to pin what it finds or makes. `f` must not
    /// call back into the store's locking steps.
    pub fn locked<T>(&self, f: impl FnOnce(&mut Pinner<'_>) -> Result<T>) -> Result<T> {
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = Lock::exclusive(&self.root.join(GC_LOCK))?;
        if session.is_none() {
            *session = Some(Session::start(&self.root)?);
        }
        let session = session.as_mut().expect("started above");
        f(&mut Pinner { session })
    }

    /// A fresh name for a temporary entry of this process's session.
    pub fn temp_name(&self, what: &str) -> Result<String> {
        self.locked(|p| Ok(p.temp_name(what)))
    }
}

/// The session a temporary entry's name says it belongs to, if it has the form of one.
pub fn owner(name: &str) -> Option<&str> {
    name.strip_prefix(TEMP_PREFIX)?.split('-').next()
}

/// What the live sessions of a store pin.
#[derive(Debug, Default)]
pub struct Live {
    /// IDs of the live sessions.
    pub sessions: HashSet<String>,
    /// Hex digests of pinned blobs.
    pub blobs: HashSet<String>,
    /// Hex diff IDs of pinned extracted layers.
    pub layers: HashSet<String>,
    /// Hex TOC digests of pinned lazy layers.
    pub lazy: HashSet<String>,
}

impl Live {
    /// Whether the temporary entry `name` belongs to a live session.
    pub fn owns(&self, name: &str) -> bool {
        owner(name).is_some_and(|s| self.sessions.contains(s))
    }
}

/// Read the pins of the live sessions of the store at `root` and remove the files of dead
/// ones. Call it from within [`Pins::locked`], so no session pins meanwhile.
pub fn scan(root: &Path) -> Result<Live> {
    let dir = root.join(DIR);
    let mut live = Live::default();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(live),
        Err(e) => return Err(io_err(format!("list {}", dir.display()))(e)),
    };
    for e in rd {
        let e = e.map_err(io_err(format!("list {}", dir.display())))?;
        let path = e.path();
        let id = e.file_name().to_string_lossy().into_owned();
        if let Some(dead) = Lock::try_existing(&path)? {
            // Its process is gone: nothing it pinned is needed any more.
            let _ = fs::remove_file(&path);
            drop(dead);
            continue;
        }
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            // Ended normally since the listing: its tags and containers are in place by now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
        };
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("blob", hex)) => live.blobs.insert(hex.to_string()),
                Some(("layer", hex)) => live.layers.insert(hex.to_string()),
                Some(("lazy", hex)) => live.lazy.insert(hex.to_string()),
                _ => continue,
            };
        }
        live.sessions.insert(id);
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_pin_until_dropped_and_dead_ones_are_seen() {
        let t = tempfile::tempdir().unwrap();
        let d = Digest::of(b"x");
        let a = Pins::new(t.path());
        let tmp = a
            .locked(|p| {
                p.blob(&d)?;
                p.layer(&d)?;
                p.lazy(d.hex())?;
                p.blob(&d)?;
                Ok(p.temp_name("step"))
            })
            .unwrap();
        // Another process's view (a second session of its own).
        let b = Pins::new(t.path());
        let live = b.locked(|_| scan(t.path())).unwrap();
        assert_eq!(live.sessions.len(), 2, "a's session and b's own");
        assert!(live.blobs.contains(d.hex()) && live.layers.contains(d.hex()));
        assert!(live.lazy.contains(d.hex()));
        assert!(live.owns(&tmp), "{tmp}");
        assert!(
            !live.owns(".tmp-1234-0123456789abcdef"),
            "an older version's name"
        );
        assert!(!live.owns("step-1234-0123"));
        let a2 = a.clone();
        drop(a);
        assert!(
            scan(t.path()).unwrap().blobs.contains(d.hex()),
            "a clone lives"
        );
        drop(a2);
        let live = scan(t.path()).unwrap();
        assert!(live.blobs.is_empty() && !live.owns(&tmp));
        // A session whose process died leaves its file, unlocked: seen as dead and removed.
        std::fs::write(t.path().join("pins/deadbeefdeadbeef"), "blob abc\n").unwrap();
        let live = scan(t.path()).unwrap();
        assert!(!live.blobs.contains("abc"));
        assert!(!t.path().join("pins/deadbeefdeadbeef").exists());
    }
}
