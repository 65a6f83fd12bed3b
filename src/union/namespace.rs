//! Changes to the names of the union: create, mkdir, mknod, symlink, link, unlink, rmdir and
//! rename. Each writes the upper layer in the kernel's format (0/0 whiteouts, opaque xattrs)
//! with atomic renames through the work directory, then updates the cached listings.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::copyup::remove_any;
use super::dir::{Entry, Listing};
use super::idmap::OVERFLOW_ID;
use super::inode::Node;
use super::{Caller, Union, NAME_MAX};
use crate::overlay::beneath::valid_name;
use crate::overlay::format::{self, WhiteoutForm};

/// What to create, for [`Union::create_object`].
pub enum NewObject<'a> {
    /// A directory with this mode.
    Dir(u32),
    /// A regular file opened with these flags, with this mode.
    File { mode: u32, flags: i32 },
    /// A device, fifo or socket (`mode` includes the type bits).
    Node { mode: u32, rdev: u64 },
    /// A symlink to this target.
    Symlink(&'a OsStr),
}

/// Run `attempt` until it does not answer EAGAIN, which here means: another change took a
/// name between the lookups and the locks, so look again.
fn until_settled<T>(mut attempt: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match attempt() {
            Err(Errno::AGAIN) => continue,
            other => return other,
        }
    }
}

fn check_name(name: &OsStr) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        return Err(Errno::NAMETOOLONG);
    }
    if !valid_name(name) {
        return Err(Errno::INVAL);
    }
    Ok(())
}

/// Record in a directory's listing the new upper object `name` (stat `st`), which replaced a
/// whiteout when `over_whiteout`.
fn add_upper_entry(
    state: &mut super::inode::NodeState,
    name: &OsStr,
    st: &rfs::Stat,
    over_whiteout: bool,
) {
    let l = listing_mut(state);
    l.upper_whiteouts.remove(name);
    l.entries.put(
        name,
        Entry {
            kind: FileType::from_raw_mode(st.st_mode),
            layers: vec![0],
            covers_lower: over_whiteout,
            ino: (0, st.st_ino),
            seq: 0,
        },
    );
}

fn listing_mut(state: &mut super::inode::NodeState) -> &mut Listing {
    Arc::make_mut(state.listing.as_mut().expect("listing read before locking"))
}

// The two readers below borrow the locked listing and return copies of what they found: a
// caller that kept a reference to the listing itself would make its own update (through
// `listing_mut`) copy the whole listing.

/// The entry called `name` in a locked directory's listing.
fn listed_entry(state: &super::inode::NodeState, name: &OsStr) -> Result<Entry, Errno> {
    let listing = state.listing.as_ref().ok_or(Errno::NOENT)?;
    listing.entries.get(name).cloned().ok_or(Errno::NOENT)
}

/// For a name about to be made in a locked directory: EEXIST if it is listed, else the upper
/// whiteout it will replace, if any.
fn unused_name(
    state: &super::inode::NodeState,
    name: &OsStr,
) -> Result<Option<WhiteoutForm>, Errno> {
    let listing = state.listing.as_ref().expect("listing read before locking");
    if listing.entries.contains_key(name) {
        return Err(Errno::EXIST);
    }
    Ok(listing.upper_whiteouts.get(name).copied())
}

impl Union {
    /// Make the object in `dir` (fd) called `name`; for files returns the open fd.
    fn make(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        what: &NewObject<'_>,
    ) -> Result<Option<OwnedFd>, Errno> {
        match what {
            NewObject::Dir(mode) => {
                rfs::mkdirat(dir, name, Mode::from_raw_mode(mode & 0o7777))?;
                Ok(None)
            }
            NewObject::File { mode, flags } => {
                let oflags = OFlags::from_bits_retain(*flags as _)
                    & (OFlags::ACCMODE
                        | OFlags::APPEND
                        | OFlags::SYNC
                        | OFlags::DSYNC
                        | OFlags::DIRECT);
                let fd = rfs::openat(
                    dir,
                    name,
                    oflags | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(mode & 0o7777),
                )?;
                Ok(Some(fd))
            }
            NewObject::Node { mode, rdev } => {
                let ftype = FileType::from_raw_mode(*mode);
                rfs::mknodat(dir, name, ftype, Mode::from_raw_mode(mode & 0o7777), *rdev)?;
                Ok(None)
            }
            NewObject::Symlink(target) => {
                rfs::symlinkat(*target, dir, name)?;
                Ok(None)
            }
        }
    }

    /// Owner of a new object made by `caller` in `parent_st`'s directory (BSD group semantics
    /// under a setgid directory), as stored ids.
    fn new_owner(&self, caller: Caller, parent_st: &rfs::Stat) -> Result<(u32, u32), Errno> {
        // A creator outside the mapping (e.g. host root preparing a container's rootfs)
        // gets the overflow id, as with fuse-overlayfs.
        let uid = self.ids.uid_to_host(caller.uid).unwrap_or(OVERFLOW_ID);
        let gid = if parent_st.st_mode & libc::S_ISGID != 0 {
            parent_st.st_gid
        } else {
            self.ids.gid_to_host(caller.gid).unwrap_or(OVERFLOW_ID)
        };
        Ok((uid, gid))
    }

    /// Create `name` in directory `parent_id` for `caller`. Over a whiteout the object is made
    /// in the work directory and renamed into place, so it appears whole or not at all.
    pub fn create_object(
        &self,
        parent_id: u64,
        name: &OsStr,
        what: NewObject<'_>,
        caller: Caller,
    ) -> Result<(Arc<Node>, rfs::Stat, Option<OwnedFd>), Errno> {
        self.check_writable()?;
        check_name(name)?;
        if let NewObject::Node { mode, rdev: 0 } = what {
            if FileType::from_raw_mode(mode) == FileType::CharacterDevice {
                // A 0/0 character device is a whiteout on disk: it would hide the name (and
                // any lower file of that name) at the next mount. The kernel refuses it too.
                return Err(Errno::PERM);
            }
        }
        let parent = self.dir_node(parent_id)?;
        self.copy_up(&parent)?;
        self.listing(&parent)?;
        let mut pstate = parent.state.write();
        if parent.is_unlinked() {
            return Err(Errno::NOENT);
        }
        let whiteout = unused_name(&pstate, name)?;
        let upper = self.dir_fd(&parent, 0)?;
        let parent_st = rfs::fstat(upper.as_fd())?;
        let (uid, gid) = self.new_owner(caller, &parent_st)?;
        let is_dir = matches!(what, NewObject::Dir(_));
        // The umask applies unless the parent's default ACL decides the mode (the upper
        // filesystem applies that ACL itself when the object is made).
        let default_acl = self.options.acl
            && rfs::getxattr(
                crate::overlay::fd_path::proc_path(upper.as_fd(), None),
                "system.posix_acl_default",
                &mut [0u8; 0][..],
            )
            .is_ok();
        let umask = if default_acl { 0 } else { caller.umask & 0o777 };
        let what = match what {
            NewObject::Dir(m) => NewObject::Dir(m & !umask),
            NewObject::File { mode, flags } => NewObject::File {
                mode: mode & !umask,
                flags,
            },
            NewObject::Node { mode, rdev } => NewObject::Node {
                mode: mode & !umask,
                rdev,
            },
            other => other,
        };
        let (mode_bits, is_symlink) = match &what {
            NewObject::Dir(m) => {
                let setgid = parent_st.st_mode & libc::S_ISGID;
                (m & 0o7777 | setgid, false)
            }
            NewObject::File { mode, .. } | NewObject::Node { mode, .. } => (mode & 0o7777, false),
            NewObject::Symlink(_) => (0o777, true),
        };
        // What the new object gets without a chown: our ids, or the group of a setgid parent.
        let made_gid = if parent_st.st_mode & libc::S_ISGID != 0 {
            parent_st.st_gid
        } else {
            self.creator.1
        };
        let needs_chown = (uid, gid) != (self.creator.0, made_gid);
        let finish = |dir: BorrowedFd<'_>, n: &OsStr| -> Result<(), Errno> {
            if needs_chown {
                rfs::chownat(
                    dir,
                    n,
                    Some(rfs::Uid::from_raw(uid)),
                    Some(rfs::Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            if !is_symlink && (mode_bits & 0o7000 != 0) {
                // chown cleared set-id bits; the caller asked for them.
                rfs::chmodat(dir, n, Mode::from_raw_mode(mode_bits), AtFlags::empty())?;
            }
            Ok(())
        };
        let fd = match whiteout {
            None => {
                let fd = self.make(upper.as_fd(), name, &what)?;
                if let Err(e) = finish(upper.as_fd(), name) {
                    let _ = remove_any(upper.as_fd(), name);
                    return Err(e);
                }
                fd
            }
            Some(form) => {
                let work = self.work_fd()?;
                let tmp = self.temp_name();
                let fd = self.make(work.as_fd(), &tmp, &what)?;
                let placed = (|| {
                    finish(work.as_fd(), &tmp)?;
                    if is_dir {
                        let d = rfs::openat(
                            work.as_fd(),
                            &tmp,
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )?;
                        // A directory replacing a whiteout must hide what lies below.
                        format::set_opaque(d.as_fd(), self.xattr_ns)?;
                    }
                    self.replace_whiteout(work.as_fd(), &tmp, upper.as_fd(), name, form)
                })();
                if let Err(e) = placed {
                    let _ = remove_any(work.as_fd(), &tmp);
                    return Err(e);
                }
                fd
            }
        };
        let st = rfs::statat(upper.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)?;
        add_upper_entry(&mut pstate, name, &st, whiteout.is_some());
        let layer = self.layer(0);
        let node = self.nodes.lookup_or_insert(
            (layer.dev, st.st_ino),
            layer.fs_index,
            || super::inode::Location {
                parent: Some(parent.clone()),
                name: name.to_owned(),
            },
            |id| Node::new(id, is_dir, Some(parent.clone()), name, vec![0]),
        );
        if is_dir {
            node.state.write().listing = Some(Arc::new(Listing::default()));
        }
        drop(pstate);
        let st = self.client_stat(&node, st);
        Ok((node, st, fd))
    }

    /// Move `tmp` from the work dir onto the whiteout `name` in `upper`, atomically where the
    /// whiteout is a device.
    fn replace_whiteout(
        &self,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        upper: BorrowedFd<'_>,
        name: &OsStr,
        form: WhiteoutForm,
    ) -> Result<(), Errno> {
        match form {
            WhiteoutForm::Device => {
                let st = rfs::statat(work, tmp, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    rfs::renameat_with(work, tmp, upper, name, RenameFlags::EXCHANGE)?;
                    rfs::unlinkat(work, tmp, AtFlags::empty())
                } else {
                    rfs::renameat(work, tmp, upper, name)
                }
            }
            WhiteoutForm::OciFile => {
                rfs::renameat_with(work, tmp, upper, name, RenameFlags::NOREPLACE)?;
                format::remove_whiteout(upper, name, form)
            }
        }
    }

    /// Put a whiteout at `name` in `upper`, replacing whatever is there, atomically.
    fn whiteout_over(
        &self,
        upper: BorrowedFd<'_>,
        name: &OsStr,
        existing_is_dir: bool,
    ) -> Result<WhiteoutForm, Errno> {
        let work = self.work_fd()?;
        let tmp = self.temp_name();
        match self.make_device_whiteout(work.as_fd(), &tmp) {
            Ok(()) => {}
            Err(Errno::PERM) | Err(Errno::ACCESS) => {
                // No device whiteouts here: remove, then leave a `.wh.` file beside.
                remove_any(upper, name)?;
                return format::create_whiteout(upper, name);
            }
            Err(e) => return Err(e),
        }
        if existing_is_dir {
            rfs::renameat_with(work.as_fd(), &tmp, upper, name, RenameFlags::EXCHANGE)?;
            // Out of sight now; its whiteouts go in the background.
            self.discards.discard(work.as_fd(), tmp)?;
        } else {
            rfs::renameat(work.as_fd(), &tmp, upper, name)?;
        }
        Ok(WhiteoutForm::Device)
    }

    /// Remove the non-directory `name` from directory `parent_id`.
    pub fn unlink(&self, parent_id: u64, name: &OsStr) -> Result<(), Errno> {
        self.remove(parent_id, name, false)
    }

    /// Remove the empty directory `name` from directory `parent_id`.
    pub fn rmdir(&self, parent_id: u64, name: &OsStr) -> Result<(), Errno> {
        self.remove(parent_id, name, true)
    }

    fn remove(&self, parent_id: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        self.check_writable()?;
        if name.len() > NAME_MAX {
            return Err(Errno::NAMETOOLONG);
        }
        let parent = self.dir_node(parent_id)?;
        until_settled(|| {
            let (child, _) = self.lookup(parent_id, name)?;
            let result = self.remove_node(&parent, name, &child, dir);
            self.nodes.unref(child.id);
            result
        })
    }

    fn remove_node(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        child: &Arc<Node>,
        dir: bool,
    ) -> Result<(), Errno> {
        match (dir, child.is_dir) {
            (true, false) => return Err(Errno::NOTDIR),
            (false, true) => return Err(Errno::ISDIR),
            _ => {}
        }
        if dir && !self.listing(child)?.entries.is_empty() {
            return Err(Errno::NOTEMPTY);
        }
        self.copy_up(parent)?;
        let mut pstate = parent.state.write();
        let entry = listed_entry(&pstate, name)?;
        let cstate = child.state.write();
        if !child.has_name(parent.id, name) {
            return Err(Errno::AGAIN);
        }
        if dir && !cstate.listing.as_ref().is_none_or(|l| l.entries.is_empty()) {
            return Err(Errno::NOTEMPTY);
        }
        let upper = self.dir_fd(parent, 0)?;
        let needs_whiteout = entry.covers_lower || entry.top() != 0;
        let mut upper_ino = None;
        let whiteout = if entry.top() == 0 {
            let st = rfs::statat(upper.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)?;
            if !dir && st.st_nlink > 1 {
                upper_ino = Some(open_object(upper.as_fd(), name)?);
            }
            // The inode may be reused by a create in another directory the moment it is
            // freed: retire its identity first, so that create never finds this node.
            let freeing = upper_ino.is_none();
            if freeing {
                self.retire_node(child);
            }
            let removed = if needs_whiteout {
                self.whiteout_over(upper.as_fd(), name, dir).map(Some)
            } else if dir {
                match rfs::unlinkat(upper.as_fd(), name, AtFlags::REMOVEDIR) {
                    Err(Errno::NOTEMPTY) => {
                        // Only whiteouts inside: move it out of sight, then clean it.
                        let work = self.work_fd()?;
                        let tmp = self.temp_name();
                        rfs::renameat(upper.as_fd(), name, work.as_fd(), &tmp)
                            .and_then(|()| self.discards.discard(work.as_fd(), tmp))
                            .map(|()| None)
                    }
                    other => other.map(|()| None),
                }
            } else {
                rfs::unlinkat(upper.as_fd(), name, AtFlags::empty()).map(|()| None)
            };
            if removed.is_err() && freeing {
                self.unretire_node(child, (st.st_dev, st.st_ino));
            }
            removed?
        } else {
            Some(self.make_whiteout(upper.as_fd(), name)?)
        };
        drop(cstate);
        let lower_links = self.lower_hard_link(parent, name, &entry);
        if lower_links.is_none() {
            self.name_removed(child, parent.id, name, upper_ino);
        }
        let l = listing_mut(&mut pstate);
        l.entries.remove(name);
        if let Some(form) = whiteout {
            l.upper_whiteouts.insert(name.to_owned(), form);
        }
        drop(pstate);
        if let Some((layer, ino)) = lower_links {
            // Other names of a lower hard link may still show it (looked up without the lock).
            self.lower_name_removed(child, parent.id, name, layer, ino);
        }
        Ok(())
    }

    /// Add the name `newname` in `newparent_id` for the non-directory `id`.
    pub fn link(
        &self,
        id: u64,
        newparent_id: u64,
        newname: &OsStr,
    ) -> Result<(Arc<Node>, rfs::Stat), Errno> {
        self.check_writable()?;
        check_name(newname)?;
        let node = self.node(id)?;
        if node.is_dir {
            return Err(Errno::PERM);
        }
        let newparent = self.dir_node(newparent_id)?;
        self.copy_up(&node)?;
        self.copy_up(&newparent)?;
        self.listing(&newparent)?;
        let loc = node.location();
        let src_parent = loc.parent.ok_or(Errno::STALE)?;
        let src_dir = self.dir_fd(&src_parent, 0)?;
        let mut pstate = newparent.state.write();
        let whiteout = unused_name(&pstate, newname)?;
        let upper = self.dir_fd(&newparent, 0)?;
        match whiteout {
            None => rfs::linkat(
                src_dir.as_fd(),
                &loc.name,
                upper.as_fd(),
                newname,
                AtFlags::empty(),
            )?,
            Some(form) => {
                let work = self.work_fd()?;
                let tmp = self.temp_name();
                rfs::linkat(
                    src_dir.as_fd(),
                    &loc.name,
                    work.as_fd(),
                    &tmp,
                    AtFlags::empty(),
                )?;
                self.replace_whiteout(work.as_fd(), &tmp, upper.as_fd(), newname, form)
                    .inspect_err(|_| {
                        let _ = rfs::unlinkat(work.as_fd(), &tmp, AtFlags::empty());
                    })?;
            }
        }
        let st = rfs::statat(upper.as_fd(), newname, AtFlags::SYMLINK_NOFOLLOW)?;
        add_upper_entry(&mut pstate, newname, &st, whiteout.is_some());
        drop(pstate);
        node.add_alias(&newparent, newname);
        self.nodes.add_lookup(&node);
        let st = self.client_stat(&node, st);
        Ok((node, st))
    }

    /// Rename `name` in `parent_id` to `newname` in `newparent_id`; `flags` are renameat2's.
    pub fn rename(
        &self,
        parent_id: u64,
        name: &OsStr,
        newparent_id: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        self.check_writable()?;
        check_name(newname)?;
        let flags = RenameFlags::from_bits(flags).ok_or(Errno::INVAL)?;
        if flags.contains(RenameFlags::WHITEOUT)
            || flags.contains(RenameFlags::EXCHANGE | RenameFlags::NOREPLACE)
        {
            return Err(Errno::INVAL);
        }
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        let parent = self.dir_node(parent_id)?;
        let newparent = self.dir_node(newparent_id)?;
        until_settled(|| self.rename_once(&parent, name, &newparent, newname, flags, exchange))
    }

    fn rename_once(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        newparent: &Arc<Node>,
        newname: &OsStr,
        flags: RenameFlags,
        exchange: bool,
    ) -> Result<(), Errno> {
        let (parent_id, newparent_id) = (parent.id, newparent.id);
        let (src, _) = self.lookup(parent_id, name)?;
        let dst = match self.lookup(newparent_id, newname) {
            Ok((n, _)) => Some(n),
            Err(Errno::NOENT) => None,
            Err(e) => {
                self.nodes.unref(src.id);
                return Err(e);
            }
        };
        let result = self.rename_nodes(
            parent,
            name,
            &src,
            newparent,
            newname,
            dst.as_ref(),
            flags,
            exchange,
        );
        self.nodes.unref(src.id);
        if let Some(d) = &dst {
            self.nodes.unref(d.id);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn rename_nodes(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        src: &Arc<Node>,
        newparent: &Arc<Node>,
        newname: &OsStr,
        dst: Option<&Arc<Node>>,
        flags: RenameFlags,
        exchange: bool,
    ) -> Result<(), Errno> {
        if let Some(d) = dst {
            if flags.contains(RenameFlags::NOREPLACE) {
                return Err(Errno::EXIST);
            }
            if Arc::ptr_eq(d, src) {
                // Two names of one file (or the same name): POSIX says do nothing.
                return Ok(());
            }
            if !exchange {
                match (src.is_dir, d.is_dir) {
                    (true, false) => return Err(Errno::NOTDIR),
                    (false, true) => return Err(Errno::ISDIR),
                    _ => {}
                }
            }
        } else if exchange {
            return Err(Errno::NOENT);
        }
        // Directories with lower parts cannot move (the kernel's EXDEV without redirect_dir):
        // tools fall back to copying.
        let has_lower = |n: &Node| {
            let s = n.state.read();
            s.top() != 0 || s.layers.len() > 1
        };
        if src.is_dir && has_lower(src) {
            return Err(Errno::XDEV);
        }
        if exchange && dst.is_some_and(|d| d.is_dir && has_lower(d)) {
            return Err(Errno::XDEV);
        }
        if let Some(d) = dst.filter(|d| !exchange && d.is_dir) {
            if !self.listing(d)?.entries.is_empty() {
                return Err(Errno::NOTEMPTY);
            }
        }
        self.copy_up(src)?;
        if exchange {
            self.copy_up(dst.expect("checked"))?;
        }
        self.copy_up(newparent)?;
        self.listing(newparent)?;
        let same_dir = Arc::ptr_eq(parent, newparent);
        let (mut first, mut second) = if same_dir {
            (parent.state.write(), None)
        } else if parent.id < newparent.id {
            let a = parent.state.write();
            let b = newparent.state.write();
            (a, Some(b))
        } else {
            let b = newparent.state.write();
            let a = parent.state.write();
            (a, Some(b))
        };
        let src_entry = listed_entry(&first, name)?;
        let (dst_entry, target_whiteout) = {
            let dst_state = second.as_deref().unwrap_or(&first);
            let dst_listing = dst_state.listing.as_ref().ok_or(Errno::NOENT)?;
            (
                dst_listing.entries.get(newname).cloned(),
                dst_listing.upper_whiteouts.get(newname).copied(),
            )
        };
        let names_moved = !src.has_name(parent.id, name)
            || dst.is_some_and(|d| !d.has_name(newparent.id, newname))
            || dst_entry.is_some() != dst.is_some();
        if names_moved {
            return Err(Errno::AGAIN);
        }
        let from = self.dir_fd(parent, 0)?;
        let to = self.dir_fd(newparent, 0)?;
        if exchange {
            rfs::renameat_with(
                from.as_fd(),
                name,
                to.as_fd(),
                newname,
                RenameFlags::EXCHANGE,
            )?;
            let d = dst_entry.expect("exchange has a target");
            let mut s_new = src_entry.clone();
            s_new.covers_lower = d.covers_lower;
            s_new.layers = vec![0];
            let mut d_new = d.clone();
            d_new.covers_lower = src_entry.covers_lower;
            d_new.layers = vec![0];
            // Each name keeps its place (and readdir offset); only what it names changes.
            listing_mut(&mut first).entries.put(name, d_new);
            let target = second.as_mut().unwrap_or(&mut first);
            listing_mut(target).entries.put(newname, s_new);
            let dnode = dst.expect("exchange has a target");
            let at = |p: &Arc<Node>, n: &OsStr| super::inode::Location {
                parent: Some(p.clone()),
                name: n.to_owned(),
            };
            src.rename_name(parent.id, name, at(newparent, newname));
            dnode.rename_name(newparent.id, newname, at(parent, name));
            return Ok(());
        }
        let target_covers = dst_entry
            .as_ref()
            .is_some_and(|d| d.covers_lower || d.top() != 0)
            || target_whiteout.is_some();
        if let (Some(d), Some(dnode)) = (&dst_entry, dst) {
            if d.top() == 0 && d.kind == FileType::Directory {
                // A directory that is empty in the union may still hold whiteouts.
                let fd = self.dir_fd(dnode, 0)?;
                let rd = rfs::openat(
                    fd.as_fd(),
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                super::copyup::remove_contents(rd.as_fd())?;
            }
        }
        let dst_upper_ino = match (&dst_entry, dst) {
            (Some(d), Some(dnode)) if d.top() == 0 && !dnode.is_dir => {
                let st = rfs::statat(to.as_fd(), newname, AtFlags::SYMLINK_NOFOLLOW)?;
                if st.st_nlink > 1 {
                    Some(open_object(to.as_fd(), newname)?)
                } else {
                    None
                }
            }
            _ => None,
        };
        // As in unlink: a replaced last link is retired before its inode can be reused.
        let dst_freed = match (&dst_entry, dst) {
            (Some(d), Some(dnode)) if d.top() == 0 && dst_upper_ino.is_none() => {
                let st = rfs::statat(to.as_fd(), newname, AtFlags::SYMLINK_NOFOLLOW)?;
                self.retire_node(dnode);
                Some((dnode, (st.st_dev, st.st_ino)))
            }
            _ => None,
        };
        let result = self.move_entry(
            parent,
            name,
            src,
            &src_entry,
            newparent,
            newname,
            &from,
            &to,
            target_whiteout,
            target_covers,
        );
        let src_whiteout = match result {
            Ok(w) => w,
            Err(e) => {
                if let Some((dnode, key)) = dst_freed {
                    self.unretire_node(dnode, key);
                }
                return Err(e);
            }
        };
        // Book-keeping: listings and node locations.
        {
            let l = listing_mut(&mut first);
            l.entries.remove(name);
            if let Some(form) = src_whiteout {
                l.upper_whiteouts.insert(name.to_owned(), form);
            }
        }
        {
            let target = second.as_mut().unwrap_or(&mut first);
            let l = listing_mut(target);
            l.upper_whiteouts.remove(newname);
            l.entries.put(
                newname,
                Entry {
                    kind: src_entry.kind,
                    layers: vec![0],
                    covers_lower: target_covers,
                    ino: src_entry.ino,
                    seq: 0,
                },
            );
        }
        let dst_lower_links = match (&dst_entry, dst) {
            (Some(d), Some(dnode)) if !dnode.is_dir => self.lower_hard_link(newparent, newname, d),
            _ => None,
        };
        if let (Some(dnode), None) = (dst, dst_lower_links) {
            self.name_removed(dnode, newparent.id, newname, dst_upper_ino);
        }
        src.rename_name(
            parent.id,
            name,
            super::inode::Location {
                parent: Some(newparent.clone()),
                name: newname.to_owned(),
            },
        );
        drop(first);
        drop(second);
        if let (Some(dnode), Some((layer, ino))) = (dst, dst_lower_links) {
            self.lower_name_removed(dnode, newparent.id, newname, layer, ino);
        }
        Ok(())
    }

    /// Bookkeeping after the name `name` in `parent` of `node` is gone. `object` is the
    /// upper object (`O_PATH`, opened before the removal) when it had other links: then the
    /// node lives on if the object still has links after the removal (of two racing unlinks
    /// of its last two names, the later one sees none). Under another known name it keeps
    /// its place; with none known (the kernel forgot them) it waits nameless for a lookup
    /// of one, keeping its id and link-count correction.
    fn name_removed(&self, node: &Arc<Node>, parent: u64, name: &OsStr, object: Option<OwnedFd>) {
        let named = node.remove_name(parent, name);
        let alive = object.is_some_and(|fd| rfs::fstat(&fd).is_ok_and(|st| st.st_nlink > 0));
        if !alive {
            self.retire_node(node);
        } else if !named {
            node.set_nameless();
        }
    }

    /// If `entry` (named `name` in `dir`) is a lower non-directory with other hard links in its
    /// layer: that layer and the lower inode number.
    fn lower_hard_link(
        &self,
        dir: &Node,
        name: &OsStr,
        entry: &Entry,
    ) -> Option<(super::dir::LayerIndex, u64)> {
        let layer = entry.top();
        if self.is_upper(layer) || entry.kind == FileType::Directory {
            return None;
        }
        let fd = self.dir_fd(dir, layer).ok()?;
        let st = rfs::statat(fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        (st.st_nlink > 1).then_some((layer, st.st_ino))
    }

    /// The name `name` in `parent` of `node`, a lower hard link (inode `ino` of `layer`), is
    /// gone: the node lives on under another name of that inode the union still shows.
    fn lower_name_removed(
        &self,
        node: &Arc<Node>,
        parent: u64,
        name: &OsStr,
        layer: super::dir::LayerIndex,
        ino: u64,
    ) {
        node.nlink_adjust
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        node.remove_name(parent, name);
        if !node.location().is(parent, name) {
            return;
        }
        match self.visible_alias(layer, ino) {
            Some(loc) => node.rename_name(parent, name, loc),
            None => self.retire_node(node),
        }
    }

    /// Some name the union still shows for inode `ino` of lower layer `layer`.
    fn visible_alias(
        &self,
        layer: super::dir::LayerIndex,
        ino: u64,
    ) -> Option<super::inode::Location> {
        let index = self.link_index(layer).ok()?;
        for path in index.paths(ino) {
            let (dirs, last) = path.split_at(path.len() - 1);
            let mut held = Vec::new();
            let mut dir = self.nodes.get(super::inode::ROOT_ID).ok();
            for comp in dirs {
                dir = dir
                    .and_then(|d| self.lookup(d.id, comp).ok())
                    .map(|(n, _)| {
                        held.push(n.id);
                        n
                    });
            }
            let found = dir.filter(|d| {
                self.listing(d).is_ok_and(|l| {
                    l.entries
                        .get(&last[0])
                        .is_some_and(|e| e.top() == layer && e.ino == (layer, ino))
                })
            });
            for id in held {
                self.nodes.unref(id);
            }
            if let Some(d) = found {
                return Some(super::inode::Location {
                    parent: Some(d),
                    name: last[0].clone(),
                });
            }
        }
        None
    }

    /// Mark `node` gone: no lookup finds it again and its inode numbers are free for others.
    fn retire_node(&self, node: &Arc<Node>) {
        node.set_unlinked();
        self.nodes.retire(node.id);
        node.clear_fds();
    }

    /// Undo [`Union::retire_node`] after the removal it prepared failed; `key` is the
    /// node's upper object.
    fn unretire_node(&self, node: &Arc<Node>, key: (u64, u64)) {
        node.set_linked();
        self.nodes.alias(key, node.id);
    }

    /// Move `name` (upper, in `from`) to `newname` (in `to`), leaving a whiteout behind when
    /// lower layers have the old name; returns the form of that whiteout.
    #[allow(clippy::too_many_arguments)]
    fn move_entry(
        &self,
        _parent: &Arc<Node>,
        name: &OsStr,
        src: &Arc<Node>,
        src_entry: &Entry,
        _newparent: &Arc<Node>,
        newname: &OsStr,
        from: &OwnedFd,
        to: &OwnedFd,
        target_whiteout: Option<WhiteoutForm>,
        target_covers: bool,
    ) -> Result<Option<WhiteoutForm>, Errno> {
        if src.is_dir && target_covers {
            let fd = rfs::openat(
                from.as_fd(),
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            format::set_opaque(fd.as_fd(), self.xattr_ns)?;
        }
        let mut src_whiteout = None;
        if src.is_dir && target_whiteout == Some(WhiteoutForm::Device) {
            rfs::renameat_with(
                from.as_fd(),
                name,
                to.as_fd(),
                newname,
                RenameFlags::EXCHANGE,
            )?;
            if src_entry.covers_lower {
                src_whiteout = Some(WhiteoutForm::Device);
            } else {
                rfs::unlinkat(from.as_fd(), name, AtFlags::empty())?;
            }
        } else {
            let with_whiteout = src_entry.covers_lower;
            let done = if with_whiteout {
                rfs::renameat_with(
                    from.as_fd(),
                    name,
                    to.as_fd(),
                    newname,
                    RenameFlags::WHITEOUT,
                )
            } else {
                rfs::renameat(from.as_fd(), name, to.as_fd(), newname)
            };
            match done {
                Ok(()) if with_whiteout => src_whiteout = Some(WhiteoutForm::Device),
                Ok(()) => {}
                Err(Errno::INVAL) | Err(Errno::PERM) if with_whiteout => {
                    rfs::renameat(from.as_fd(), name, to.as_fd(), newname)?;
                    src_whiteout = Some(self.make_whiteout(from.as_fd(), name)?);
                }
                Err(e) => return Err(e),
            }
            if target_whiteout == Some(WhiteoutForm::OciFile) {
                format::remove_whiteout(to.as_fd(), newname, WhiteoutForm::OciFile)?;
            }
        }
        Ok(src_whiteout)
    }
}

/// An `O_PATH` fd of the object named `name` in `dir` (a symlink itself, not its target), to
/// ask its link count after one of its names is removed.
fn open_object(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::union::options::MountOptions;

    /// Changing a directory updates its listing in place: no copy of the whole listing per
    /// create, unlink or rename (which made `rm -rf` of a 10,000-entry directory quadratic).
    #[test]
    fn namespace_changes_update_the_listing_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let (lower, upper, work) = (
            tmp.path().join("lower"),
            tmp.path().join("upper"),
            tmp.path().join("work"),
        );
        for d in [&lower.join("d"), &upper, &work] {
            std::fs::create_dir_all(d).unwrap();
        }
        for f in ["a", "b", "c"] {
            std::fs::write(lower.join("d").join(f), f).unwrap();
        }
        let opts = MountOptions::parse([format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        )
        .as_str()])
        .unwrap();
        let u = Union::new(opts).unwrap();
        let (d, _) = u
            .lookup(super::super::inode::ROOT_ID, OsStr::new("d"))
            .unwrap();
        u.copy_up(&d).unwrap();
        let before = Arc::as_ptr(&u.listing(&d).unwrap());
        let me = Caller {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            umask: 0o022,
        };
        let made = NewObject::File {
            mode: 0o644,
            flags: libc::O_WRONLY,
        };
        u.create_object(d.id, OsStr::new("new"), made, me).unwrap();
        u.unlink(d.id, OsStr::new("a")).unwrap();
        u.rename(d.id, OsStr::new("b"), d.id, OsStr::new("renamed"), 0)
            .unwrap();
        let after = u.listing(&d).unwrap();
        assert!(
            std::ptr::eq(before, Arc::as_ptr(&after)),
            "the listing was copied"
        );
        let names: Vec<&OsStr> = after.entries.keys().collect();
        assert_eq!(names, ["c", "new", "renamed"]);
    }
}
