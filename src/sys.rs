//! Thin, documented wrappers over the syscalls that std and rustix lack. The only `unsafe` code.
