use std::path::PathBuf;
use std::time::Duration;
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    #[arg(long, value_name = "NAME", value_parser = super::paths::parse_name)]
    pub name: Option<String>,
    #[arg(long, value_name = "PATH", conflicts_with = "name")]
    pub control: Option<PathBuf>,
}
pub fn reload(_t: &Target, _timeout: Duration, _wait: bool) -> i32 {
    todo!()
}
pub fn status(_t: &Target, _json: bool) -> i32 {
    todo!()
}
pub fn stop(_t: &Target, _timeout: Duration) -> i32 {
    todo!()
}
pub fn list(_json: bool) -> i32 {
    todo!()
}
