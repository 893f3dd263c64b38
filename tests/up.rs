//! Issue #18, the embedded default cleans up: stopping `aidos up` (SIGTERM, as Ctrl-C's SIGINT) stops the tasks
//! its worker started; with `--keep-tasks` they keep running, to be adopted by the next `aidos up`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, wait_until};

/// Pids of processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(marker) && !cmd.contains("job submit") {
            out.push(pid);
        }
    }
    out
}

/// Starts `aidos up` in `dir`, submits a long `sleep` job with a unique duration, and waits until it runs.
fn up_with_a_task(dir: &Path, extra: &[&str], marker: &str) -> Child {
    let log = std::fs::File::create(dir.join("up.log")).unwrap();
    let data = dir.join("data");
    let mut up = Command::new(BIN)
        .args(["up", "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--serve-http", "127.0.0.1:0", "--serve-grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--worker-cpus", "2"])
        .args(extra)
        .env_remove("AIDOS_TOKEN")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr = wait_until("aidos up prints its address", Duration::from_secs(60), || {
        assert!(up.try_wait().unwrap().is_none(), "aidos up exited: {}", read(dir));
        read(dir).lines().find_map(|l| l.strip_prefix("scheduler listening on ").map(str::to_string))
    });
    wait_until("the job is submitted", Duration::from_secs(60), || {
        let out = Command::new(BIN)
            .args(["--scheduler", &addr, "job", "submit", "--name", "long", "--cpu", "100m", "--", "sleep", marker])
            .env("AIDOS_DATA_DIR", &data)
            .env_remove("AIDOS_TOKEN")
            .stderr(Stdio::null())
            .output()
            .unwrap();
        out.status.success().then_some(())
    });
    wait_until("the task runs", Duration::from_secs(60), || (!pids_with(marker).is_empty()).then_some(()));
    up
}

fn read(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
}

fn stop(up: &mut Child) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
    let status = wait_until("aidos up exits", Duration::from_secs(30), || up.try_wait().unwrap());
    assert!(status.success(), "aidos up exited with {status}");
}

#[test]
fn stopping_aidos_up_stops_its_tasks_unless_asked_to_keep_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = up_with_a_task(dir.path(), &[], "600.25");
    stop(&mut up);
    wait_until("the task stops with aidos up", Duration::from_secs(15), || {
        pids_with("600.25").is_empty().then_some(())
    });
    assert!(read(dir.path()).contains("stopped 1 running task"), "{}", read(dir.path()));

    let dir = tempfile::tempdir().unwrap();
    let mut up = up_with_a_task(dir.path(), &["--keep-tasks"], "600.75");
    // `stop` returns once aidos up has exited: a task it was going to stop is gone by then.
    stop(&mut up);
    let left = pids_with("600.75");
    assert!(!left.is_empty(), "--keep-tasks: the task was stopped");
    for p in left {
        // SAFETY: plain kill(2) on the test's own task.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
}
