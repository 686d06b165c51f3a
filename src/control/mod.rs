//! The control channel (in progress).

#![allow(dead_code)]

pub mod paths;
