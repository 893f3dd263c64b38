//! `aidos-edge`: the edge agent as a small binary of its own (also `aidos edge agent`).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "aidos-edge",
    version,
    about = "aidos edge agent: runs signed ONNX deployments on a device, offline too"
)]
struct Cli {
    #[command(flatten)]
    agent: aidos_edge::args::AgentArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // RUST_LOG=debug|info|warn|error (a plain level: the agent carries no filter-expression engine).
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).init();
    let cfg = match cli.agent.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Two threads: the local server and the control loop; a device has few cores.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    match rt.block_on(aidos_edge::run(cfg, shutdown())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
