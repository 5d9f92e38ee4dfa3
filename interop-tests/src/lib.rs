//! Interoperability tests live in `tests/`: each drives an independent implementation
//! (the `openssl` command line, Python libraries) against what this project produces, so that
//! "standard" is checked by someone else's code, not only by ours.
//!
//! The tools they need are installed by `.ci/run`.
#![forbid(unsafe_code)]
