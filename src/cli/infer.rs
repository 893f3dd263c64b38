//! `aidos infer`: one Open Inference Protocol request to a model server's HTTP front, with the outputs printed
//! (and the argmax of each row), presenting `--key` (or, to a server on this machine, the CLI's token). It needs no HTTP client library: a minimal HTTP/1.1 exchange over TCP.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::args::{Global, Output};
use super::render::print_json;

#[derive(Args, Debug)]
pub struct InferArgs {
    /// Model name on the server
    pub model: String,
    /// JSON file: an Open Inference Protocol request body, or a bare array of rows (`[[...], [...]]`)
    #[arg(long, env = "AIDOS_INFER_INPUT")]
    pub input: PathBuf,
    /// Model version (default: the server's latest)
    #[arg(long, env = "AIDOS_INFER_VERSION")]
    pub version: Option<String>,
    /// Server HTTP address
    #[arg(long, env = "AIDOS_INFER_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// The inference key to present (`aidos token create --role infer`); default: the CLI's own token, but only to
    /// a loopback address (it is a control-plane credential: not sent elsewhere unless given here)
    #[arg(long, env = "AIDOS_INFER_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

/// `aidos infer`: one request to a server's HTTP front; prints the outputs (and the argmax of each row).
pub async fn run(g: &Global, a: InferArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", a.input.display()))?;
    let body = if v.get("inputs").is_some() {
        v
    } else {
        let rows = v
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("{}: expected a request or an array of rows", a.input.display()))?;
        let width = rows.first().and_then(|r| r.as_array()).map(|r| r.len()).unwrap_or(0);
        anyhow::ensure!(width > 0, "{}: rows must be non-empty arrays of numbers", a.input.display());
        let name = input_name(&a).await?;
        serde_json::json!({"inputs": [{"name": name, "datatype": "FP32", "shape": [rows.len(), width], "data": rows}]})
    };
    let path = match &a.version {
        Some(ver) => format!("/v2/models/{}/versions/{ver}/infer", a.model),
        None => format!("/v2/models/{}/infer", a.model),
    };
    let (status, resp) = http_json("POST", &a.url, &path, Some(body.to_string()), key_for(&a)).await?;
    anyhow::ensure!(status == 200, "{} answered {status}: {}", a.url, resp.get("error").unwrap_or(&resp));
    if g.output == Output::Json {
        print_json(&resp);
        return Ok(());
    }
    for o in resp["outputs"].as_array().into_iter().flatten() {
        let shape: Vec<usize> =
            o["shape"].as_array().into_iter().flatten().filter_map(|d| d.as_u64()).map(|d| d as usize).collect();
        let data: Vec<f64> = o["data"].as_array().into_iter().flatten().filter_map(|d| d.as_f64()).collect();
        println!(
            "{} {:?} (model {} version {})",
            o["name"].as_str().unwrap_or("?"),
            shape,
            resp["model_name"],
            resp["model_version"]
        );
        let w = shape.get(1).copied().unwrap_or(1).max(1);
        for (i, row) in data.chunks(w).enumerate() {
            let best = row.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).map(|(j, _)| j).unwrap_or(0);
            let vals: Vec<String> = row.iter().map(|x| format!("{x:.4}")).collect();
            println!("  row {i}: argmax {best}  [{}]", vals.join(", "));
        }
    }
    Ok(())
}

async fn input_name(a: &InferArgs) -> anyhow::Result<String> {
    let (status, meta) = http_json("GET", &a.url, &format!("/v2/models/{}", a.model), None, key_for(a)).await?;
    anyhow::ensure!(status == 200, "{}: model {}: {}", a.url, a.model, meta.get("error").unwrap_or(&meta));
    Ok(meta["inputs"][0]["name"].as_str().unwrap_or("input").to_string())
}

/// Minimal HTTP/1.1 JSON request over a plain TCP connection (the CLI needs no HTTP client library for this).
/// The key to present to `a.url`: `--key`, else the CLI's token (--token, the login file, or `aidos up`'s admin
/// token) when the server is on this machine.
fn key_for(a: &InferArgs) -> Option<String> {
    if a.key.is_some() {
        return a.key.clone();
    }
    let host = a.url.trim_start_matches("http://").split(['/', ':']).next().unwrap_or("");
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback.then(|| super::client::credentials().token).flatten()
}

async fn http_json(
    method: &str,
    base: &str,
    path: &str,
    body: Option<String>,
    key: Option<String>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = base.strip_prefix("http://").unwrap_or(base).trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport).await.with_context(|| format!("connecting to {base}"))?;
    let body = body.unwrap_or_default();
    let key = key.map(|t| format!("Authorization: Bearer {}\r\n", t.trim()));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        key.unwrap_or_default(),
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("{base}: malformed HTTP answer"))?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    let v = if body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body))
    };
    Ok((status, v))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
