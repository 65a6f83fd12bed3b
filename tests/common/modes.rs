//! The three mounts a compatibility test runs on: kernel overlayfs (the reference) and stratafs
//! with and without FUSE passthrough, whose I/O paths differ (the kernel reads and writes the
//! real files, or the daemon does). Tests written with [`every_mode!`] are named
//! `NAME::kernel`, `NAME::stratafs` and `NAME::stratafs_no_passthrough`.

use super::{Backend, Fixture, Mount, MountSpec};

/// How a fixture is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Kernel overlayfs.
    Kernel,
    /// stratafs with its defaults (FUSE passthrough as root).
    Passthrough,
    /// stratafs serving every read and write itself (`passthrough=off`).
    NoPassthrough,
}

impl Mode {
    /// The filesystem serving this mode.
    pub fn backend(self) -> Backend {
        match self {
            Mode::Kernel => Backend::Kernel,
            Mode::Passthrough | Mode::NoPassthrough => Backend::Stratafs,
        }
    }

    /// The mount options of this mode (read-write).
    pub fn spec(self) -> MountSpec {
        MountSpec {
            extra: match self {
                Mode::NoPassthrough => vec!["passthrough=off".into()],
                _ => Vec::new(),
            },
            ..MountSpec::default()
        }
    }

    /// Mounts `fx` read-write in this mode.
    pub fn mount(self, fx: &Fixture) -> Mount<'_> {
        fx.mount_with(self.backend(), &self.spec())
    }
}

/// Generates, for each `fn NAME(mode: Mode)`, a module `NAME` with the tests `kernel`,
/// `stratafs` and `stratafs_no_passthrough`.
#[macro_export]
macro_rules! every_mode {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn kernel() {
                    super::$name($crate::common::modes::Mode::Kernel)
                }
                #[test]
                fn stratafs() {
                    super::$name($crate::common::modes::Mode::Passthrough)
                }
                #[test]
                fn stratafs_no_passthrough() {
                    super::$name($crate::common::modes::Mode::NoPassthrough)
                }
            }
        )*
    };
}
