//! Ring all-reduce (issue #15): bus bandwidth, 2(N-1)/N · bytes / time, for 1 KiB to 64 MiB at N = 2 and 4, beside
//! the raw TCP bandwidth and round trip of the same link measured in the same run; ranks are threads, each in its
//! own network namespace (192.0.2.0/24, veth pairs to a bridge in a hub namespace), so every byte crosses real
//! interfaces. Two series: the link as is, and shaped with `tc tbf` to `AIDOS_BENCH_RATE` (default 1gbit) on every
//! host's egress. Then an α-β model `t = 2(N-1)·α + 2(N-1)/N · S · β` fitted to the shaped series, the reference
//! CNN's compute time per step measured here, and the data-parallel efficiency the model predicts at 8, 64 and
//! 512 ranks; and the CNN trained by 1, 2 and 4 ranks on the shaped link (weak scaling, 64 samples per rank).
//!
//! `cargo bench --bench allreduce` (root: it creates namespaces). Without `--bench` (cargo test) it runs a
//! small loopback check only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use aidos_sdk::collective::{RingId, loopback_rings};
use aidos_sdk::{Collective, RingOptions, TcpRing};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOSTS: usize = 4;
const SIZES: [usize; 9] = [1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20];

fn ip(i: usize) -> String {
    format!("192.0.2.{}", 10 + i)
}

fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "`ip {}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Namespaces `aidos-bench-<pid>-<i>` joined by a bridge in a hub namespace; removed on drop.
struct Net {
    prefix: String,
}

impl Net {
    fn create(rate: Option<&str>) -> Net {
        let net = Net { prefix: format!("aidos-bench-{}-", std::process::id()) };
        let hub = format!("{}hub", net.prefix);
        ip_cmd(&["netns", "add", &hub]);
        ip_cmd(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip_cmd(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..HOSTS {
            let ns = net.ns(i);
            ip_cmd(&["netns", "add", &ns]);
            let hub_end = format!("v{i}");
            ip_cmd(&["link", "add", &hub_end, "netns", &hub, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip_cmd(&["-n", &hub, "link", "set", &hub_end, "master", "br0"]);
            ip_cmd(&["-n", &hub, "link", "set", &hub_end, "up"]);
            ip_cmd(&["-n", &ns, "link", "set", "lo", "up"]);
            ip_cmd(&["-n", &ns, "addr", "add", &format!("{}/24", ip(i)), "dev", "eth0"]);
            ip_cmd(&["-n", &ns, "link", "set", "eth0", "up"]);
            if let Some(r) = rate {
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", r])
                    .args(["burst", "256kb", "latency", "100ms"])
                    .output()
                    .expect("tc");
                assert!(out.status.success(), "tc: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        net
    }

    fn ns(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    /// Runs `f(i)` for each host `i` in `hosts` on a thread inside that host's namespace; returns the results.
    fn on_hosts<T: Send>(&self, hosts: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..hosts)
                .map(|i| {
                    let (path, f) = (format!("/run/netns/{}", self.ns(i)), &f);
                    s.spawn(move || {
                        enter_netns(&path);
                        f(i)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..HOSTS {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &format!("{}hub", self.prefix)]).status();
    }
}

fn enter_netns(path: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on an open namespace file descriptor; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// Raw TCP from host 0 to host 1: one stream's bandwidth (bytes/s) and the 1-byte round trip (s).
fn raw_link(net: &Net, bytes: usize) -> (f64, f64) {
    let port = 29_500;
    let r = net.on_hosts(2, |i| {
        if i == 1 {
            let l = TcpListener::bind(format!("{}:{port}", ip(1))).unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut b = [0u8; 1];
            for _ in 0..900 {
                s.read_exact(&mut b).unwrap();
                s.write_all(&b).unwrap();
            }
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0;
            while got < bytes {
                got += s.read(&mut buf).unwrap();
            }
            s.write_all(&[1]).unwrap();
            (0.0, 0.0)
        } else {
            let mut s = loop {
                match TcpStream::connect(format!("{}:{port}", ip(1))) {
                    Ok(s) => break s,
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            s.set_nodelay(true).unwrap();
            // The round trip first (best of 3 rounds of 300), on the fresh connection.
            let mut b = [0u8; 1];
            let mut rtt = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                for _ in 0..300 {
                    s.write_all(&b).unwrap();
                    s.read_exact(&mut b).unwrap();
                }
                rtt = rtt.min(t.elapsed().as_secs_f64() / 300.0);
            }
            let buf = vec![7u8; 1 << 20];
            let t = Instant::now();
            let mut sent = 0;
            while sent < bytes {
                s.write_all(&buf).unwrap();
                sent += buf.len();
            }
            s.read_exact(&mut b).unwrap();
            (sent as f64 / t.elapsed().as_secs_f64(), rtt)
        }
    });
    r[0]
}

fn ring_on<T: Send>(net: &Net, n: usize, port: u16, f: impl Fn(&mut TcpRing) -> T + Sync) -> Vec<T> {
    let peers: Vec<String> = (0..n).map(|i| format!("{}:{port}", ip(i))).collect();
    net.on_hosts(n, |i| {
        let l = TcpListener::bind(&peers[i]).unwrap();
        let id = RingId { job: "bench".into(), generation: 1, rank: i, world: n };
        let mut ring = TcpRing::connect(id, &l, &peers, RingOptions::default()).unwrap();
        f(&mut ring)
    })
}

/// Seconds per all-reduce of `bytes` (mean over enough iterations for ~0.4 s, at least 3).
fn time_all_reduce(ring: &mut TcpRing, bytes: usize) -> f64 {
    let mut v = vec![1.0f32; bytes / 4];
    ring.all_reduce_sum(&mut v).unwrap(); // warm-up
    // Every rank must run the same number of iterations: decide from rank 0's first timing, agreed by all-reduce.
    let t = Instant::now();
    ring.all_reduce_sum(&mut v).unwrap();
    let mut one = [(t.elapsed().as_secs_f64() * (ring.rank() == 0) as u8 as f64) as f32];
    ring.all_reduce_sum(&mut one).unwrap();
    let iters = ((0.4 / (one[0] as f64).max(1e-6)) as usize).clamp(3, 2000);
    ring.barrier().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        ring.all_reduce_sum(&mut v).unwrap();
    }
    t.elapsed().as_secs_f64() / iters as f64
}

fn human(bytes: usize) -> String {
    if bytes >= 1 << 20 { format!("{}M", bytes >> 20) } else { format!("{}K", bytes >> 10) }
}

/// Least-squares α, β for t = a·α + b·β over (a, b, t) rows.
fn fit(rows: &[(f64, f64, f64)]) -> (f64, f64) {
    let (mut aa, mut ab, mut bb, mut at, mut bt) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(a, b, t) in rows {
        // Relative error: weight each row by 1/t², so small messages count as much as large ones.
        let w = 1.0 / (t * t);
        aa += w * a * a;
        ab += w * a * b;
        bb += w * b * b;
        at += w * a * t;
        bt += w * b * t;
    }
    let det = aa * bb - ab * ab;
    ((at * bb - bt * ab) / det, (aa * bt - ab * at) / det)
}

/// The reference CNN's seconds per step (batch 64) on one rank, and its gradient bytes.
fn cnn_step_time() -> (f64, usize) {
    use aidos_train::*;
    let cfg0 = ModelConfig::reference_cnn();
    let params = param_signature(&cfg0);
    let n: usize = params
        .split_once(':')
        .unwrap()
        .1
        .split(',')
        .map(|s| s.split('x').map(|d| d.parse::<usize>().unwrap()).product::<usize>())
        .sum();
    let (x, y) = synthetic(64 * 20);
    let ds = Dataset::new(x, y, vec![1, 28, 28]).unwrap();
    let mut cfg = TrainConfig::new(cfg0, OptimizerConfig::adam(1e-3), 1, 64);
    cfg.log_every_steps = 0;
    train(&cfg, &ds.subset(0, 128).unwrap(), None, &mut NoHooks).unwrap(); // warm-up
    let t = Instant::now();
    train(&cfg, &ds, None, &mut NoHooks).unwrap();
    (t.elapsed().as_secs_f64() / 20.0, n * 4)
}

fn synthetic(rows: usize) -> (Vec<f32>, Vec<u32>) {
    let x = (0..rows * 784).map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 1000.0).collect();
    let y = (0..rows).map(|i| (i % 10) as u32).collect();
    (x, y)
}

/// Samples per second of the CNN trained by `n` ranks (64 samples each per step) on `net`.
fn cnn_ranks(net: &Net, n: usize, port: u16) -> f64 {
    use aidos_train::*;
    let steps = 12;
    let (x, y) = synthetic(64 * n * steps);
    let ds = Dataset::new(x, y, vec![1, 28, 28]).unwrap();
    let mut cfg = TrainConfig::new(ModelConfig::reference_cnn(), OptimizerConfig::adam(1e-3), 1, 64 * n);
    cfg.log_every_steps = 0;
    let secs = ring_on_any(net, n, port, |comm| {
        let t = Instant::now();
        train_with(&cfg, &ds, None, &mut NoHooks, comm).unwrap();
        t.elapsed().as_secs_f64()
    });
    (64 * n * steps) as f64 / secs.into_iter().fold(0.0, f64::max)
}

fn ring_on_any(net: &Net, n: usize, port: u16, f: impl Fn(&mut dyn Collective) -> f64 + Sync) -> Vec<f64> {
    if n == 1 {
        return net.on_hosts(1, |_| f(&mut aidos_sdk::SingleRank::default()));
    }
    ring_on(net, n, port, |r| f(r))
}

fn series(net: &Net, label: &str, port: &mut u16) -> Vec<(usize, usize, f64)> {
    let (raw, rtt) = raw_link(net, if label == "shaped" { 64 << 20 } else { 1 << 30 });
    println!(
        "\n## {label}: raw TCP host0→host1 {:.1} MB/s ({:.2} Gbit/s), round trip {:.1} µs",
        raw / 1e6,
        raw * 8.0 / 1e9,
        rtt * 1e6
    );
    println!("| N | size | time | bus bandwidth | of raw | time / (2(N-1) round trips) |");
    println!("|---|------|------|---------------|--------|-----------------------------|");
    let mut out = Vec::new();
    for n in [2usize, 4] {
        *port += 1;
        let times = ring_on(net, n, *port, |ring| SIZES.iter().map(|&s| time_all_reduce(ring, s)).collect::<Vec<_>>());
        for (&s, &t) in SIZES.iter().zip(&times[0]) {
            let bus = 2.0 * (n - 1) as f64 / n as f64 * s as f64 / t;
            println!(
                "| {n} | {} | {:.3} ms | {:.1} MB/s | {:.0}% | {:.2} |",
                human(s),
                t * 1e3,
                bus / 1e6,
                100.0 * bus / raw,
                t / (2.0 * (n - 1) as f64 * rtt)
            );
            out.push((n, s, t));
        }
    }
    out
}

fn smoke() {
    // cargo test: a loopback ring of 2, two sizes, checked for the right sums.
    std::thread::scope(|s| {
        for ring in loopback_rings("smoke", &[1, 1], RingOptions::default()) {
            let mut ring = ring.unwrap();
            s.spawn(move || {
                for bytes in [1 << 10, 1 << 20] {
                    let mut v = vec![ring.rank() as f32 + 1.0; bytes / 4];
                    ring.all_reduce_sum(&mut v).unwrap();
                    assert!(v.iter().all(|&x| x == 3.0));
                }
            });
        }
    });
    println!("allreduce: loopback smoke check passed (run `cargo bench --bench allreduce` as root for the numbers)");
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        smoke();
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the benchmark creates network namespaces: run it as root");
    let rate = std::env::var("AIDOS_BENCH_RATE").unwrap_or_else(|_| "1gbit".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("# ring all-reduce ({cores} cores; ranks are threads in separate network namespaces)");
    let mut port = 29_600u16;
    {
        let net = Net::create(None);
        series(&net, "unshaped veth", &mut port);
    }
    let net = Net::create(Some(&rate));
    let shaped = series(&net, "shaped", &mut port);

    let rows: Vec<(f64, f64, f64)> =
        shaped.iter().map(|&(n, s, t)| (2.0 * (n - 1) as f64, 2.0 * (n - 1) as f64 / n as f64 * s as f64, t)).collect();
    let (alpha, beta) = fit(&rows);
    println!(
        "\n## α-β model on the shaped link ({rate}): α = {:.1} µs per ring step, 1/β = {:.1} MB/s",
        alpha * 1e6,
        1e-6 / beta
    );
    let (step, grad_bytes) = cnn_step_time();
    println!(
        "reference CNN: {:.1} ms per step at batch 64 on one rank here, {:.2} MB of gradients",
        step * 1e3,
        grad_bytes as f64 / 1e6
    );
    println!("| ranks | predicted all-reduce | predicted efficiency (no overlap) |");
    println!("|-------|----------------------|-----------------------------------|");
    for n in [2usize, 4, 8, 64, 512] {
        let t = 2.0 * (n - 1) as f64 * alpha + 2.0 * (n - 1) as f64 / n as f64 * grad_bytes as f64 * beta;
        println!("| {n} | {:.1} ms | {:.0}% |", t * 1e3, 100.0 * step / (step + t));
    }

    println!("\n## reference CNN trained by N ranks on the shaped link (64 samples per rank per step)");
    println!("| N | samples/s | scaling efficiency |");
    println!("|---|-----------|--------------------|");
    let mut one = 0.0;
    for n in [1usize, 2, 4] {
        port += 1;
        let sps = cnn_ranks(&net, n, port);
        if n == 1 {
            one = sps;
        }
        println!("| {n} | {sps:.0} | {:.0}% |", 100.0 * sps / (one * n as f64));
    }
}
