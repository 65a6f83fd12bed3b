//! `strata bench`: compares union filesystems (stratafs, kernel overlayfs, fuse-overlayfs,
//! unionfs-fuse, any program with fuse-overlayfs's syntax) and a plain directory on one
//! deterministic fixture, and reports medians, ratios, a table, JSON and an SVG chart.
//!
//! The rooms: [`fixture`] builds the layers once, [`backend`] mounts them, [`workload`] is
//! what is timed, [`runner`] puts them together, [`graveyard`] keeps finished trees until the
//! end, [`report`] and [`chart`] present the numbers.

pub mod backend;
pub mod chart;
pub mod deadline;
pub mod error;
pub mod fixture;
pub mod graveyard;
pub mod journal;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod workload;

pub use backend::{default_stratafs, Backend, BACKEND_NAMES};
pub use error::{BenchError, Result};
pub use fixture::FixtureSpec;
pub use report::Report;
pub use runner::{run, BenchConfig};
pub use workload::Workload;
