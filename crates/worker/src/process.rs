//! Process-level helpers for shims: spawning one in its own process group, liveness checks, signals.
//!
//! Process-group layout of an attempt: the shim leads a process group of its own (pgid = shim pid, set by the
//! spawn itself), in the worker's session; the user's command is in a second group (pgid = its pid, recorded by
//! the shim in `workdir/child.pid`). Stopping an attempt = SIGTERM to the shim's group (the shim
//! forwards it to the command's group), then after the grace period SIGKILL to the command's group
//! (the shim then records 137 and exits), and as a last resort SIGKILL to the shim's group.

use std::ffi::OsString;
use std::path::Path;

use crate::shim::CHILD_PID_FILE;

/// Sends `sig` to process group `pgid`. Returns false if no such group (or pgid is unusable).
pub fn signal_group(pgid: u32, sig: libc::c_int) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else { return false };
    if pgid <= 1 {
        return false;
    }
    // SAFETY: plain kill(2) on a negative pid (a process group); pgid > 1 so never "all processes".
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// Whether `pid` is alive and is a task shim (its command line mentions `task-shim`). Guards against
/// pid reuse after a reboot or a long absence, and treats zombies (empty cmdline) as dead.
pub fn shim_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else { return false };
    if p <= 1 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence/permission.
    let rc = unsafe { libc::kill(p, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline.split(|&b| b == 0).any(|arg| arg == b"task-shim"),
        Err(_) => false,
    }
}

/// The command's process group as recorded by the shim, if it started one.
pub fn read_child_pgid(workdir: &Path) -> Option<u32> {
    std::fs::read_to_string(workdir.join(CHILD_PID_FILE)).ok()?.trim().parse().ok()
}

/// Everything needed to spawn one shim. Exposed so that spawning can be tested with any executable.
#[derive(Debug, Clone)]
pub struct ShimCommand {
    pub shim_exe: std::path::PathBuf,
    pub workdir: std::path::PathBuf,
    pub program: String,
    pub args: Vec<String>,
    /// Added on top of the worker's own environment, in order (later entries win).
    pub env: Vec<(String, String)>,
}

impl ShimCommand {
    /// Arguments after the shim executable: `task-shim --dir <workdir> -- <program> <args...>`.
    pub fn argv(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> =
            vec!["task-shim".into(), "--dir".into(), self.workdir.clone().into_os_string(), "--".into()];
        v.push(self.program.clone().into());
        v.extend(self.args.iter().map(OsString::from));
        v
    }

    /// Spawns the shim with cwd = workdir, leading a process group of its own (a terminal's Ctrl-C for the worker
    /// does not reach it, and the task survives a SIGKILL of the worker); its own stdout/stderr go to
    /// `workdir/shim.log`. The returned child is not killed on drop. The group is set by the spawn itself, not by a
    /// `pre_exec` hook (`setsid`, as it was): without a hook the standard library spawns with `posix_spawn`, with no
    /// copy of this large, many-threaded process's page tables, which took most of a task start's time (a spawn
    /// call p50 7.5 ms, p99 49 ms with 8 sweep trials starting on 2 cores). The shim stays in the worker's session:
    /// its stdin is /dev/null and its output goes to files, so it has no use for the terminal.
    pub fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.workdir.join(crate::records::SHIM_LOG_FILE))?;
        let mut cmd = tokio::process::Command::new(&self.shim_exe);
        cmd.args(self.argv())
            .current_dir(&self.workdir)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false)
            .process_group(0);
        cmd.spawn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_not_a_shim_and_bad_pids_are_dead() {
        assert!(!shim_alive(std::process::id()));
        assert!(!shim_alive(0));
        assert!(!shim_alive(1));
        assert!(!shim_alive(u32::MAX));
        assert!(!signal_group(0, 0));
        assert!(!signal_group(1, 0));
    }

    #[tokio::test]
    async fn spawns_with_args_env_and_cwd() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in shim: a shell script that records its argv, env, cwd and process group.
        let script = dir.path().join("fake-shim.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"$@\" > args.txt\necho \"$AIDOS_RANK $FOO\" > env.txt\npwd > cwd.txt\n\
             echo $$ > pid.txt\nawk '{print $5}' /proc/$$/stat > pgid.txt\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let wd = dir.path().join("wd");
        std::fs::create_dir(&wd).unwrap();
        let sc = ShimCommand {
            shim_exe: script,
            workdir: wd.clone(),
            program: "echo".into(),
            args: vec!["a b".into()],
            env: vec![("FOO".into(), "bar".into()), ("AIDOS_RANK".into(), "3".into())],
        };
        let mut child = sc.spawn().unwrap();
        let pid = child.id().unwrap();
        assert!(child.wait().await.unwrap().success());
        let args = std::fs::read_to_string(wd.join("args.txt")).unwrap();
        assert_eq!(args.trim(), format!("task-shim --dir {} -- echo a b", wd.display()));
        assert_eq!(std::fs::read_to_string(wd.join("env.txt")).unwrap().trim(), "3 bar");
        let cwd = std::fs::read_to_string(wd.join("cwd.txt")).unwrap();
        assert_eq!(std::fs::canonicalize(cwd.trim()).unwrap(), std::fs::canonicalize(&wd).unwrap());
        assert_eq!(std::fs::read_to_string(wd.join("pid.txt")).unwrap().trim(), pid.to_string());
        assert_eq!(std::fs::read_to_string(wd.join("pgid.txt")).unwrap().trim(), pid.to_string(), "own group");
    }
}
