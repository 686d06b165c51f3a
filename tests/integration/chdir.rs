//! Deploys that repoint a `current` symlink (Capistrano's layout): each
//! start resolves the working directory anew, so a reload after the
//! symlink moved runs the new release's binary in the new release.

use std::path::{Path, PathBuf};

use crate::harness::*;

/// `<tmp>/r1` and `<tmp>/r2`, each with a copy of the example server and
/// a marker file naming it, and `<tmp>/current -> r1`.
struct Releases {
    dir: TempDir,
}

impl Releases {
    fn new() -> Releases {
        let dir = TempDir::new();
        for r in ["r1", "r2"] {
            std::fs::create_dir(dir.path(r)).unwrap();
            std::fs::copy(server(), dir.path(r).join("server")).unwrap();
            std::fs::write(dir.path(r).join("marker"), r).unwrap();
        }
        std::os::unix::fs::symlink("r1", dir.path("current")).unwrap();
        Releases { dir }
    }

    fn current(&self) -> PathBuf {
        self.dir.path("current")
    }

    /// Repoint `current` atomically, as a deploy does: a new link renamed
    /// over the old one.
    fn point_to(&self, release: &str) {
        let tmp = self.dir.path("current.new");
        std::os::unix::fs::symlink(release, &tmp).unwrap();
        std::fs::rename(&tmp, self.current()).unwrap();
    }

    /// Assert that the server at `addr` (generation `gen`) runs `release`:
    /// its binary and its working directory are that release's.
    fn assert_runs(&self, addr: std::net::SocketAddr, gen: &str, release: &str) {
        let mut i = info(addr);
        // The previous generation may answer until it has seen its stop.
        wait_until("the generation to serve", LONG, || {
            i = info(addr);
            i["gen"] == gen
        });
        let real = self.dir.path(release).canonicalize().unwrap();
        assert_eq!(Path::new(&i["exe"]), real.join("server"), "generation {gen}: {i:?}");
        assert_eq!(Path::new(&i["cwd"]), real, "generation {gen}: {i:?}");
        let marker = std::fs::read_to_string(Path::new(&i["cwd"]).join("marker")).unwrap();
        assert_eq!(marker, release);
    }
}

#[test]
fn started_inside_a_current_symlink_a_reload_runs_the_release_it_points_to_now() {
    let rel = Releases::new();
    let name = "current-pwd";
    let mut c = command(&["-l", "127.0.0.1:0", "--ready", "notify", "--name", name, "--"]);
    c.arg("./server");
    // What a shell does after `cd /srv/app/current`.
    c.current_dir(rel.current()).env("PWD", rel.current());
    let mut ge = Ge::spawn(c, &[]);
    wait_ready(&mut ge, name, 1);
    let addr = addr_in_status(&status_json(name).unwrap());
    rel.assert_runs(addr, "1", "r1");

    rel.point_to("r2");
    let (code, out, err) = ctl(&["reload", "--name", name]);
    assert_eq!(code, 0, "{out}{err}");
    rel.assert_runs(addr, "2", "r2");
}

#[test]
fn chdir_is_resolved_again_at_each_start() {
    let rel = Releases::new();
    let elsewhere = TempDir::new();
    let name = "current-chdir";
    let current = rel.current();
    let args = ["-l", "127.0.0.1:0", "--ready", "notify", "--name", name, "--chdir"];
    let mut c = command(&args);
    c.arg(&current).args(["--", "./server"]);
    c.current_dir(&elsewhere.0).env("PWD", &elsewhere.0);
    let mut ge = Ge::spawn(c, &[]);
    wait_ready(&mut ge, name, 1);
    let addr = addr_in_status(&status_json(name).unwrap());
    rel.assert_runs(addr, "1", "r1");

    rel.point_to("r2");
    let (code, out, err) = ctl(&["reload", "--name", name]);
    assert_eq!(code, 0, "{out}{err}");
    rel.assert_runs(addr, "2", "r2");
}
