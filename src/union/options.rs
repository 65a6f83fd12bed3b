//! Mount options: the fuse-overlayfs `-o` syntax, parsed into a typed configuration.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// One contiguous range of an id mapping, as containers-storage writes it
/// (`uidmapping=:CONTAINER:HOST:LEN`): ids `stored..stored+len` in the layers (container ids)
/// are `client..client+len` for the processes using the mount (host ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id as stored in the layers.
    pub stored: u32,
    /// First id as the client sees it.
    pub client: u32,
    /// Number of ids in the range.
    pub len: u32,
}

/// How requests travel between the kernel and the daemon (`uring=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringMode {
    /// FUSE over io_uring when the kernel offers it (`enable_uring` set) and the rings can be
    /// made, else /dev/fuse: the default.
    Auto,
    /// FUSE over io_uring or no mount.
    On,
    /// /dev/fuse only.
    Off,
}

/// Everything a mount of the union needs to know, with the defaults fuse-overlayfs uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Lower layers, top first (leftmost in `lowerdir=`). Never empty for a valid mount.
    pub lowerdirs: Vec<PathBuf>,
    /// Spec files of lazy lower layers (`lazy=SPEC[:SPEC…]`, see [`super::lazy::LazySpec`]):
    /// each names one of the `lowerdir=` directories, whose files are filled from an
    /// eStargz blob on first open. Empty for ordinary mounts.
    pub lazy: Vec<PathBuf>,
    /// Fill the lazy layers' files in the background once mounted (`lazyfetch=on|off`,
    /// default on), so a layer left alone ends up whole; off, files are filled on first open
    /// only.
    pub lazy_fetch: bool,
    /// The writable layer; `None` makes the mount read-only.
    pub upperdir: Option<PathBuf>,
    /// Scratch directory on the upper's filesystem for atomic copy-up.
    pub workdir: Option<PathBuf>,
    /// Copy up only metadata for chmod/chown/utimes/xattr changes; data follows on first write
    /// (`metacopy=on`). Off by default, as in the kernel: tools that read an upper directory
    /// directly (containers-storage's diff, `strata commit`) must see whole files.
    pub metacopy: bool,
    /// Let the kernel do file I/O on the real files (FUSE passthrough) when privileges allow
    /// (`passthrough=on`, the default). `off` serves every read and write in the daemon:
    /// slower and one page cache per mount, but a file open read-only before a copy-up then
    /// reads the copy, exactly as with kernel overlayfs.
    pub passthrough: bool,
    /// Request transport (`uring=auto|on|off`, default `auto`): with io_uring every request
    /// is served by a thread on the caller's CPU, which saves most of a round trip's cost on
    /// virtual machines, where waking a thread on another CPU is slow.
    pub uring: UringMode,
    /// Where to write the count of requests served, by type (`stats=PATH`): rewritten on
    /// SIGUSR1 and when the mount ends. For `strata bench` and for finding out what a
    /// workload asks of the filesystem.
    pub stats: Option<PathBuf>,
    /// Enforce POSIX ACLs in the kernel (default); `noacl` turns them off.
    pub acl: bool,
    /// Answer readdir with attributes (`readdirplus=on`, the default): a walk that stats
    /// every file (`ls -l`, `du`, a stat walk) gets the attributes of a whole directory in one
    /// round trip instead of a lookup per file. A walk for names only (`find`) gets those of
    /// its subdirectories only, which it looks up anyway, so it pays no stat per file.
    pub readdirplus: bool,
    /// Skip fsync of copied-up files (`volatile`, `fsync=0`): faster, not crash-safe.
    pub volatile: bool,
    /// Client-visible to on-disk uid translation (empty: identity).
    pub uid_map: Vec<IdRange>,
    /// Client-visible to on-disk gid translation (empty: identity).
    pub gid_map: Vec<IdRange>,
    /// Report every file as owned by this uid (`squash_to_root`, `squash_to_uid=`).
    pub squash_uid: Option<u32>,
    /// Report every file as owned by this gid (`squash_to_root`, `squash_to_gid=`).
    pub squash_gid: Option<u32>,
    /// Report nlink 1 for directories (`static_nlink`).
    pub static_nlink: bool,
    /// Kernel entry and attribute cache time (`timeout=`); lowers are immutable, so long is safe.
    pub timeout: Duration,
    /// Worker threads serving requests (`threaded=N`, 1 to [`MAX_THREADS`]; default: one per
    /// CPU, at least 2).
    pub threads: Option<usize>,
    /// Log every request (`-d`, `-o debug`).
    pub debug: bool,
    /// Let other users access the mount (`allow_other`).
    pub allow_other: bool,
    /// Let root access the mount (`allow_root`).
    pub allow_root: bool,
    /// Generic mount flags passed on to the kernel (`noexec`, `ro`, `sync`, `dirsync`).
    pub kernel_flags: Vec<String>,
    /// Honour set-user-id and set-group-id bits (`suid`/`nosuid`, the last given wins).
    /// Unset: on when the daemon runs as root, as fuse-overlayfs mounts; never for others.
    pub suid: Option<bool>,
    /// Let device nodes be opened as devices (`dev`/`nodev`, the last given wins). Unset:
    /// off, as fuse-overlayfs mounts; never for a daemon that is not root.
    pub dev: Option<bool>,
    /// Options accepted for compatibility that have no effect yet, for a warning.
    pub ignored: Vec<String>,
    /// The mount source shown in /proc/mounts (`fsname=`, or the helper's SOURCE argument).
    pub fsname: Option<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            lowerdirs: Vec::new(),
            lazy: Vec::new(),
            lazy_fetch: true,
            upperdir: None,
            workdir: None,
            metacopy: false,
            readdirplus: true,
            acl: true,
            passthrough: true,
            uring: UringMode::Auto,
            stats: None,
            volatile: false,
            uid_map: Vec::new(),
            gid_map: Vec::new(),
            squash_uid: None,
            squash_gid: None,
            static_nlink: false,
            timeout: Duration::from_secs(86400),
            threads: None,
            debug: false,
            allow_other: false,
            allow_root: false,
            kernel_flags: Vec::new(),
            suid: None,
            dev: None,
            ignored: Vec::new(),
            fsname: None,
        }
    }
}

/// A malformed `-o` option, naming the option.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    /// The option needs a value (`name=value`) and has none or an empty one.
    #[error("option '{0}' needs a value")]
    MissingValue(String),
    /// The option's value cannot be parsed.
    #[error("option '{option}': invalid value '{value}': {why}")]
    BadValue {
        /// The option's name.
        option: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// An option stratafs does not know at all.
    #[error("unknown option '{0}'")]
    Unknown(String),
    /// `upperdir` without `workdir` or the reverse.
    #[error("upperdir and workdir must be given together")]
    UpperWithoutWork,
    /// No `lowerdir` at all.
    #[error("option 'lowerdir' is required")]
    NoLower,
}

/// Options fuse-overlayfs and mount(8) accept that change nothing for stratafs.
const ACCEPTED_NOOPS: &[&str] = &[
    "rw",
    "exec",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "defaults",
    "private",
    "shared",
    "slave",
    "rprivate",
    "default_permissions",
    "ino32_t",
    "splice_write",
    "splice_read",
    "splice_move",
    "nonempty",
    "auto_unmount",
    "index=on",
    "index=off",
    "redirect_dir=off",
];

/// Generic flags that the kernel applies to the mount itself.
const KERNEL_FLAGS: &[&str] = &["ro", "noexec", "sync", "dirsync"];

/// Most worker threads `threaded=` may ask for.
pub const MAX_THREADS: usize = 1024;

impl MountOptions {
    /// Parse every `-o` argument (each a comma-separated list) into one configuration.
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Self, OptionError> {
        let mut opts = MountOptions::default();
        for arg in args {
            for option in split_options(arg) {
                opts.apply(&option)?;
            }
        }
        if opts.lowerdirs.is_empty() {
            return Err(OptionError::NoLower);
        }
        if opts.upperdir.is_some() != opts.workdir.is_some() {
            return Err(OptionError::UpperWithoutWork);
        }
        Ok(opts)
    }

    /// Whether clients may change the tree.
    pub fn writable(&self) -> bool {
        self.upperdir.is_some() && !self.kernel_flags.iter().any(|f| f == "ro")
    }

    fn apply(&mut self, option: &str) -> Result<(), OptionError> {
        if option.is_empty() {
            // podman passes `a,,b`: an empty option means nothing.
            return Ok(());
        }
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (option, None),
        };
        let need = |v: Option<&str>| -> Result<String, OptionError> {
            match v {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(OptionError::MissingValue(name.to_string())),
            }
        };
        match name {
            "lowerdir" => {
                let v = need(value)?;
                self.lowerdirs = split_lowerdirs(&v)
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect();
                if self.lowerdirs.is_empty() {
                    return Err(OptionError::MissingValue(name.into()));
                }
            }
            "lazy" => {
                let v = need(value)?;
                self.lazy = split_lowerdirs(&v)
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect();
            }
            "lazyfetch" => self.lazy_fetch = parse_on_off(name, &need(value)?)?,
            "upperdir" => self.upperdir = Some(PathBuf::from(need(value)?)),
            "workdir" => self.workdir = Some(PathBuf::from(need(value)?)),
            "volatile" => self.volatile = true,
            "readdirplus" => self.readdirplus = parse_on_off(name, &need(value)?)?,
            "passthrough" => self.passthrough = parse_on_off(name, &need(value)?)?,
            "metacopy" => self.metacopy = parse_on_off(name, &need(value)?)?,
            "uring" => {
                let v = need(value)?;
                self.uring = match v.as_str() {
                    "auto" => UringMode::Auto,
                    "on" => UringMode::On,
                    "off" => UringMode::Off,
                    _ => return Err(bad(name, &v, "expected auto, on or off")),
                };
            }
            "stats" => self.stats = Some(PathBuf::from(need(value)?)),
            "fsync" => {
                let v = need(value)?;
                self.volatile = match v.as_str() {
                    "0" => true,
                    "1" => false,
                    _ => return Err(bad(name, &v, "expected 0 or 1")),
                };
            }
            "uidmapping" => self.uid_map = parse_mapping(name, &need(value)?)?,
            "gidmapping" => self.gid_map = parse_mapping(name, &need(value)?)?,
            "squash_to_root" => {
                self.squash_uid = Some(0);
                self.squash_gid = Some(0);
            }
            "squash_to_uid" => self.squash_uid = Some(parse_num(name, &need(value)?)?),
            "squash_to_gid" => self.squash_gid = Some(parse_num(name, &need(value)?)?),
            "static_nlink" => self.static_nlink = true,
            "noacl" => self.acl = false,
            "timeout" => {
                let v = need(value)?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| bad(name, &v, "expected a number of seconds"))?;
                self.timeout = Duration::from_secs_f64(secs);
            }
            "threaded" => {
                let v = need(value)?;
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_THREADS).contains(n))
                    .ok_or_else(|| {
                        bad(
                            name,
                            &v,
                            &format!(
                                "expected the number of worker threads, 1 to {MAX_THREADS} \
                                 (it is a count here, not fuse-overlayfs's on/off switch)"
                            ),
                        )
                    })?;
                self.threads = Some(n);
            }
            "suid" => self.suid = Some(true),
            "nosuid" => self.suid = Some(false),
            "dev" => self.dev = Some(true),
            "nodev" => self.dev = Some(false),
            "debug" => self.debug = true,
            "allow_other" => self.allow_other = true,
            "allow_root" => self.allow_root = true,
            "fsname" => self.fsname = Some(need(value)?),
            "xino" => {
                let v = need(value)?;
                if !matches!(v.as_str(), "on" | "off" | "auto") {
                    return Err(bad(name, &v, "expected on, off or auto"));
                }
                self.ignored.push(option.to_string());
            }
            "context" | "fscontext" | "defcontext" | "rootcontext" | "max_read" | "blksize"
            | "subtype" | "uid" | "gid" | "umask" | "max_write" => {
                need(value)?;
                self.ignored.push(option.to_string());
            }
            _ if KERNEL_FLAGS.contains(&option) => self.kernel_flags.push(option.to_string()),
            _ if ACCEPTED_NOOPS.contains(&option) => {}
            _ => return Err(OptionError::Unknown(option.to_string())),
        }
        Ok(())
    }
}

fn bad(option: &str, value: &str, why: &str) -> OptionError {
    OptionError::BadValue {
        option: option.into(),
        value: value.into(),
        why: why.into(),
    }
}

fn parse_on_off(option: &str, value: &str) -> Result<bool, OptionError> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(bad(option, value, "expected on or off")),
    }
}

fn parse_num(option: &str, value: &str) -> Result<u32, OptionError> {
    value
        .parse()
        .map_err(|_| bad(option, value, "expected a non-negative integer"))
}

/// Split one `-o` argument at commas; a backslash escapes the next character (so `\,` and `\:`
/// survive into paths), and the escape of a colon is kept for [`split_lowerdirs`].
fn split_options(arg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = arg.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    if next == ':' {
                        cur.push('\\');
                    }
                    cur.push(next);
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Split `lowerdir=` at unescaped colons (`\:` is a colon inside a path).
fn split_lowerdirs(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            ':' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Parse `INSIDE:OUTSIDE:LEN[:INSIDE:OUTSIDE:LEN...]`; podman writes a leading colon.
fn parse_mapping(option: &str, value: &str) -> Result<Vec<IdRange>, OptionError> {
    let fields: Vec<&str> = value
        .strip_prefix(':')
        .unwrap_or(value)
        .split(':')
        .collect();
    if fields.len() % 3 != 0 || fields.iter().any(|f| f.is_empty()) {
        return Err(bad(option, value, "expected INSIDE:OUTSIDE:LEN triples"));
    }
    let mut ranges = Vec::new();
    for triple in fields.chunks(3) {
        let range = IdRange {
            stored: parse_num(option, triple[0])?,
            client: parse_num(option, triple[1])?,
            len: parse_num(option, triple[2])?,
        };
        if range.len == 0 {
            return Err(bad(option, value, "a range of length 0"));
        }
        ranges.push(range);
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_podman_command_line() {
        let o = MountOptions::parse([
            "lowerdir=/g/l/A:/g/l/B,upperdir=/g/x/diff,workdir=/g/x/work,,volatile",
        ])
        .unwrap();
        assert_eq!(
            o.lowerdirs,
            vec![PathBuf::from("/g/l/A"), PathBuf::from("/g/l/B")]
        );
        assert_eq!(o.upperdir, Some(PathBuf::from("/g/x/diff")));
        assert!(o.volatile);
        assert!(o.writable());
    }

    #[test]
    fn lazy_options() {
        let o = MountOptions::parse(["lowerdir=/l"]).unwrap();
        assert!(o.lazy.is_empty() && o.lazy_fetch);
        let o =
            MountOptions::parse([r"lowerdir=/l,lazy=/a.json:/b\:c.json,lazyfetch=off"]).unwrap();
        assert_eq!(
            o.lazy,
            vec![PathBuf::from("/a.json"), PathBuf::from("/b:c.json")]
        );
        assert!(!o.lazy_fetch);
        assert!(MountOptions::parse(["lowerdir=/l,lazyfetch=maybe"]).is_err());
        assert!(MountOptions::parse(["lowerdir=/l,lazy="]).is_err());
    }

    #[test]
    fn uring_and_stats_options() {
        let o = MountOptions::parse(["lowerdir=/l"]).unwrap();
        assert_eq!(o.uring, UringMode::Auto);
        assert_eq!(o.stats, None);
        let o = MountOptions::parse(["lowerdir=/l,uring=off,stats=/tmp/s"]).unwrap();
        assert_eq!(o.uring, UringMode::Off);
        assert_eq!(o.stats, Some(PathBuf::from("/tmp/s")));
        assert_eq!(
            MountOptions::parse(["lowerdir=/l,uring=on"]).unwrap().uring,
            UringMode::On
        );
        assert!(MountOptions::parse(["lowerdir=/l,uring=yes"]).is_err());
    }

    #[test]
    fn escaped_colon_stays_in_path() {
        let o = MountOptions::parse([r"lowerdir=/a\:b:/c"]).unwrap();
        assert_eq!(
            o.lowerdirs,
            vec![PathBuf::from("/a:b"), PathBuf::from("/c")]
        );
    }

    #[test]
    fn mappings_with_leading_colon_and_several_triples() {
        let o = MountOptions::parse([
            "lowerdir=/l,uidmapping=:0:1:1001:1001:0:1:1002:1002:64535,gidmapping=0:200000:65536",
        ])
        .unwrap();
        assert_eq!(o.uid_map.len(), 3);
        assert_eq!(
            o.uid_map[2],
            IdRange {
                stored: 1002,
                client: 1002,
                len: 64535
            }
        );
        assert_eq!(o.gid_map[0].client, 200000);
    }

    #[test]
    fn malformed_options_name_the_option() {
        let e = MountOptions::parse(["lowerdir=/l,uidmapping=1:2"]).unwrap_err();
        assert!(e.to_string().contains("uidmapping"), "{e}");
        let e = MountOptions::parse(["lowerdir=/l,bogus"]).unwrap_err();
        assert_eq!(e, OptionError::Unknown("bogus".into()));
        let e = MountOptions::parse(["lowerdir="]).unwrap_err();
        assert_eq!(e, OptionError::MissingValue("lowerdir".into()));
        let e = MountOptions::parse(["lowerdir=/l,upperdir=/u"]).unwrap_err();
        assert_eq!(e, OptionError::UpperWithoutWork);
        let e = MountOptions::parse(["upperdir=/u,workdir=/w"]).unwrap_err();
        assert_eq!(e, OptionError::NoLower);
        let e = MountOptions::parse(["lowerdir=/l,timeout=abc"]).unwrap_err();
        assert!(e.to_string().contains("timeout"));
    }

    #[test]
    fn read_only_without_upper_or_with_ro() {
        assert!(!MountOptions::parse(["lowerdir=/l"]).unwrap().writable());
        let o = MountOptions::parse(["lowerdir=/l,upperdir=/u,workdir=/w,ro"]).unwrap();
        assert!(!o.writable());
    }

    #[test]
    fn squash_and_compat_options() {
        let o = MountOptions::parse([
            "lowerdir=/l,squash_to_uid=300000,squash_to_gid=300000,static_nlink,noacl,xino=auto,threaded=4,fsync=0,context=\"system_u:object_r:container_file_t:s0\"",
        ])
        .unwrap();
        assert_eq!(o.squash_uid, Some(300000));
        assert!(o.static_nlink && o.volatile);
        assert_eq!(o.threads, Some(4));
        let o = MountOptions::parse(["lowerdir=/l,squash_to_root"]).unwrap();
        assert_eq!((o.squash_uid, o.squash_gid), (Some(0), Some(0)));
    }

    #[test]
    fn threaded_is_a_count_of_at_least_one() {
        for bad in ["0", "-1", "1025", "many"] {
            let e =
                MountOptions::parse([format!("lowerdir=/l,threaded={bad}").as_str()]).unwrap_err();
            assert!(
                matches!(&e, OptionError::BadValue { option, .. } if option == "threaded"),
                "threaded={bad}: {e}"
            );
        }
        let o = MountOptions::parse(["lowerdir=/l,threaded=1"]).unwrap();
        assert_eq!(o.threads, Some(1));
    }

    #[test]
    fn suid_and_dev_last_one_wins() {
        let o = MountOptions::parse(["lowerdir=/l"]).unwrap();
        assert_eq!((o.suid, o.dev), (None, None));
        let o = MountOptions::parse(["lowerdir=/l,nosuid,suid,dev,nodev"]).unwrap();
        assert_eq!((o.suid, o.dev), (Some(true), Some(false)));
        assert!(o.kernel_flags.is_empty());
    }
}
