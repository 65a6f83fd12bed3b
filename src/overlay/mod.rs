//! The overlay on-disk format and resolution beneath a root: the leaf that the filesystem
//! ([`crate::union`]), the image store ([`crate::image`]) and the layer explorer share, so
//! none of them depends on another to read or write a layer.

pub mod beneath;
pub mod fd_path;
pub mod format;
