//! The `aidos` binary: wires the scheduler, worker and API libraries together behind one command line.

mod cli;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

// A pooled allocator: burn's CPU backend allocates per op; mimalloc measured to double training throughput.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The task shim runs before anything else: no runtime, no logging setup, no clap.
    let raw: Vec<OsString> = std::env::args_os().collect();
    if raw.get(1).is_some_and(|a| a == "task-shim") {
        // A task gets the machine's transparent-huge-page policy, not the worker's (see below).
        #[cfg(target_os = "linux")]
        // SAFETY: prctl with integer arguments only; it changes this process's THP flag, inherited by the task.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0);
        }
        std::process::exit(cli::task_shim(raw[2..].to_vec()));
    }
    // Hidden: the built-in trainer of a train job, started by the worker through the shim (`aidos train-run`),
    // configured entirely by the environment (see aidos_train::builtin and aidos_sdk).
    if raw.get(1).is_some_and(|a| a == "train-run") {
        return match aidos_train::builtin::run_from_env() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }

    let cli = cli::Cli::parse();
    // Servers run without transparent huge pages. mimalloc asks for them on its arenas, and a server's steady
    // churn of small allocations then has the kernel zero a fresh 2 MiB page on fault after fault: a 3-node
    // cluster taking 256 clients' submissions spent ~23% of all CPU in clear_page (perf), and took ~1.45x the
    // writes per second without them (benches/README.md). Databases advise the same (Redis, MongoDB). The flag is
    // inherited, so the task shim clears it again: tasks (training above all) keep the machine's policy, and so do
    // model servers (`without_huge_pages`).
    #[cfg(target_os = "linux")]
    if cli.command.without_huge_pages() {
        // SAFETY: prctl with integer arguments only; it sets this process's THP flag.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    // A client command piped into `head` should stop quietly when the pipe closes, not panic on the next print.
    // Daemons keep Rust's default (SIGPIPE ignored): a peer that closes a socket while a response is written
    // (hyper writes with writev, which has no MSG_NOSIGNAL) must cost an EPIPE error, not the whole process.
    #[cfg(unix)]
    if !cli.command.is_daemon() {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Err(e) = init_tracing(cli.global.log_level.as_deref(), cli.command.is_daemon()) {
        eprintln!("error: {e:#}");
        return ExitCode::from(1);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(cli::run(cli));
    // Do not wait on stray blocking tasks (e.g. a stdin reader) at exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<cli::Exit>() {
            Some(exit) => {
                if !exit.msg.is_empty() {
                    eprintln!("{}", exit.msg);
                }
                ExitCode::from(exit.code)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn init_tracing(level: Option<&str>, daemon: bool) -> anyhow::Result<()> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| anyhow::anyhow!("bad --log-level `{l}`: {e}"))?,
        None => match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => {
                EnvFilter::try_new(&v).map_err(|e| anyhow::anyhow!("bad RUST_LOG `{v}`: {e}"))?
            }
            // openraft narrates every election at info; keep it to warnings unless asked.
            _ => EnvFilter::new(if daemon { "info,openraft=warn" } else { "warn" }),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}
