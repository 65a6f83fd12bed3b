//! Dockerfile builds: parse the Dockerfile, run each instruction on a union mount of the layers
//! so far, and store every filesystem change as one layer of a new image.

pub mod dockerfile;
pub mod dockerignore;
pub mod expand;
pub mod instruction;
