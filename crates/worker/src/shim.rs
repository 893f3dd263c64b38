//! The per-task shim: `aidos task-shim --dir <workdir> -- <executable> <args...>`.
//!
//! The worker never runs a task directly. It starts this shim in a process group of its own (so the task survives a
//! SIGKILL of the worker and is adopted when the worker comes back), and the shim:
//! 1. writes its pid to `workdir/shim.pid`,
//! 2. starts the command in its own process group with stdout → `stdout.log`, stderr → `stderr.log`
//!    (appended), stdin from /dev/null, and writes that group's id to `workdir/child.pid`,
//! 3. forwards SIGTERM / SIGINT / SIGHUP it receives to the command's process group,
//! 4. waits for the command, then SIGKILLs whatever is left of its process group (no stray processes
//!    outlive a task), and
//! 5. writes the exit code (signal N → 128+N) atomically to `workdir/exit` (temp + fsync + rename).
//!
//! Invariant: once `exit` exists it is complete and final; the shim exits right after writing it.
//! A command that cannot be started yields exit code 127 (126 when permission is denied) and a one-line
//! explanation in `stderr.log`.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::records::{EXIT_FILE, SHIM_PID_FILE, STDERR_FILE, STDOUT_FILE, write_atomic};

/// File in the working directory holding the command's process group id.
pub const CHILD_PID_FILE: &str = "child.pid";

/// Process group of the running command (0: none yet). Read by the signal handler.
static CHILD_PGID: AtomicI32 = AtomicI32::new(0);
/// A signal received before the command was started; forwarded right after it starts.
static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pgid = CHILD_PGID.load(Ordering::SeqCst);
    if pgid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(-pgid, sig);
        }
    } else {
        PENDING_SIGNAL.store(sig, Ordering::SeqCst);
    }
}

fn install_forwarding_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only touches atomics and calls kill.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Parsed `task-shim` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    pub dir: PathBuf,
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// Parses `--dir <dir> -- <program> <args...>` (also `--dir=<dir>`).
pub fn parse_shim_args(args: &[OsString]) -> Result<ShimArgs, String> {
    let mut dir = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--" {
            i += 1;
            break;
        } else if a == "--dir" {
            let v = args.get(i + 1).ok_or("--dir needs a value")?;
            dir = Some(PathBuf::from(v));
            i += 2;
        } else if let Some(v) = a.strip_prefix("--dir=") {
            dir = Some(PathBuf::from(v));
            i += 1;
        } else {
            return Err(format!("unexpected argument `{a}`"));
        }
    }
    let dir = dir.ok_or("missing --dir")?;
    let program = args.get(i).cloned().ok_or("missing command after --")?;
    Ok(ShimArgs { dir, program, args: args[i + 1..].to_vec() })
}

/// Entry point of `aidos task-shim <args...>` (args are those after `task-shim`); returns the process
/// exit code (the command's, as written to `exit`; 2 for a usage error).
pub fn shim_main(args: Vec<OsString>) -> i32 {
    let parsed = match parse_shim_args(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("aidos task-shim: {e}\nusage: aidos task-shim --dir <workdir> -- <executable> [args...]");
            return 2;
        }
    };
    install_forwarding_handlers();
    let _ = write_atomic(&parsed.dir.join(SHIM_PID_FILE), format!("{}\n", std::process::id()).as_bytes());
    match run_shim(&parsed.dir, &parsed.program, &parsed.args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aidos task-shim: {e}");
            let _ = write_exit(&parsed.dir, 127);
            127
        }
    }
}

/// The shim's core: runs `program args` with its output captured in `dir`, waits for it and writes
/// `dir/exit`. Returns the exit code written. Errors only when `dir` itself is unusable.
pub fn run_shim(dir: &Path, program: &OsStr, args: &[OsString]) -> std::io::Result<i32> {
    let open = |name: &str| std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name));
    let stdout = open(STDOUT_FILE)?;
    let mut stderr = open(STDERR_FILE)?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr.try_clone()?);
    // Own process group, so that signals can reach the whole task (and only it).
    cmd.process_group(0);
    let code = match cmd.spawn() {
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::PermissionDenied { 126 } else { 127 };
            let _ = writeln!(stderr, "aidos task-shim: cannot run `{}`: {e}", program.to_string_lossy());
            code
        }
        Ok(mut child) => {
            let pgid = child.id() as i32;
            let _ = write_atomic(&dir.join(CHILD_PID_FILE), format!("{pgid}\n").as_bytes());
            CHILD_PGID.store(pgid, Ordering::SeqCst);
            let pending = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
            if pending != 0 {
                // SAFETY: plain kill(2) on the group we just created.
                unsafe {
                    libc::kill(-pgid, pending);
                }
            }
            let status = child.wait();
            CHILD_PGID.store(0, Ordering::SeqCst);
            // Leftovers of the task (background children) do not outlive it.
            // SAFETY: plain kill(2); ESRCH when the group is already empty is fine.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            match status {
                Ok(s) => exit_code_of(s),
                Err(e) => {
                    let _ = writeln!(stderr, "aidos task-shim: wait failed: {e}");
                    127
                }
            }
        }
    };
    write_exit(dir, code)?;
    Ok(code)
}

/// Exit code, or 128+N for death by signal N.
pub fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    }
}

/// Atomically writes `dir/exit`.
pub fn write_exit(dir: &Path, code: i32) -> std::io::Result<()> {
    write_atomic(&dir.join(EXIT_FILE), format!("{code}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::read_exit_code;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_arguments() {
        let p = parse_shim_args(&os(&["--dir", "/w", "--", "sh", "-c", "x"])).unwrap();
        assert_eq!(p, ShimArgs { dir: "/w".into(), program: "sh".into(), args: os(&["-c", "x"]) });
        let p = parse_shim_args(&os(&["--dir=/w", "--", "true"])).unwrap();
        assert_eq!(p.dir, PathBuf::from("/w"));
        assert!(p.args.is_empty());
        assert!(parse_shim_args(&os(&["--", "true"])).is_err());
        assert!(parse_shim_args(&os(&["--dir", "/w", "--"])).is_err());
        assert!(parse_shim_args(&os(&["--what"])).is_err());
    }

    #[test]
    fn captures_output_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let code = run_shim(dir.path(), OsStr::new("sh"), &os(&["-c", "echo out; echo err >&2; exit 3"])).unwrap();
        assert_eq!(code, 3);
        assert_eq!(read_exit_code(dir.path()).unwrap(), Some(3));
        assert_eq!(std::fs::read_to_string(dir.path().join(STDOUT_FILE)).unwrap(), "out\n");
        assert_eq!(std::fs::read_to_string(dir.path().join(STDERR_FILE)).unwrap(), "err\n");
    }

    #[test]
    fn missing_executable_is_127() {
        let dir = tempfile::tempdir().unwrap();
        let code = run_shim(dir.path(), OsStr::new("/nonexistent/aidos-no-such-binary"), &[]).unwrap();
        assert_eq!(code, 127);
        assert_eq!(read_exit_code(dir.path()).unwrap(), Some(127));
        let err = std::fs::read_to_string(dir.path().join(STDERR_FILE)).unwrap();
        assert!(err.contains("cannot run"), "{err}");
    }

    #[test]
    fn signal_death_is_128_plus_n() {
        let dir = tempfile::tempdir().unwrap();
        let code = run_shim(dir.path(), OsStr::new("sh"), &os(&["-c", "kill -9 $$"])).unwrap();
        assert_eq!(code, 137);
        assert_eq!(read_exit_code(dir.path()).unwrap(), Some(137));
    }

    #[test]
    fn shim_main_usage_error() {
        assert_eq!(shim_main(os(&["--nope"])), 2);
    }
}
