use std::path::{Path, PathBuf};
pub fn parse_name(s: &str) -> Result<String, String> {
    Ok(s.into())
}
pub fn default_name(_c: &std::ffi::OsStr) -> Result<String, String> {
    todo!()
}
pub fn default_dir() -> PathBuf {
    todo!()
}
pub fn ensure_dir(_d: &Path) -> anyhow::Result<()> {
    todo!()
}
pub fn socket_path(_d: &Path, _n: &str) -> PathBuf {
    todo!()
}
