//! (stub)
#![allow(dead_code)]
use nix::unistd::{Gid, Uid};
use std::ffi::OsString;
use std::path::PathBuf;
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
    pub group_name: String,
}
pub fn parse(_s: &str) -> Result<Identity, String> {
    todo!()
}
pub fn drop_to(_id: &Identity) -> anyhow::Result<()> {
    todo!()
}
pub fn env(_id: &Identity) -> Vec<(OsString, OsString)> {
    todo!()
}
pub fn is_root() -> bool {
    todo!()
}
