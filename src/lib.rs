//! Strata: a union filesystem for container images, and the tools around it.
//!
//! The arrows point one way: the `strata` tools call the library modules, which call
//! [`union`] (the filesystem) and [`sys`] (the only `unsafe` code).

pub mod bench;
pub mod build;
pub mod container;
pub mod estargz;
pub mod explore;
pub mod image;
pub mod interrupt;
pub mod overlay;
pub mod registry;
pub mod sys;
pub mod union;
