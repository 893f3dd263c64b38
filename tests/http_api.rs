//! Issue #19, the JSON HTTP API on every node of a 3-node cluster: each node answers from the same state (reads on
//! a follower, writes relayed to the leader by the same forwarding layer as gRPC), under the same tokens and rules
//! (no token: 401; a viewer cannot cancel: 403; another project's job: 404), pages of the jobs list cover every job
//! once, and bad input is refused naming the problem with nothing changed.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use aidos_api::v1::*;
use common::*;
use serde_json::Value;

/// The HTTP address node `id` printed in its log.
fn http_addr(c: &Cluster, id: u64) -> SocketAddr {
    let log = &c.nodes[&id].1.log;
    wait_until(&format!("node {id} prints its HTTP address"), Duration::from_secs(30), || {
        let text = std::fs::read_to_string(log).ok()?;
        let line = text.lines().find_map(|l| l.strip_prefix("dashboard and HTTP API on http://"))?;
        line.split('/').next()?.parse().ok()
    })
}

fn get(addr: SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let auth = if token.is_empty() { String::new() } else { format!("Authorization: Bearer {token}\r\n") };
    let (code, body) = http_with(addr, "GET", path, &auth, "");
    (code, serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body:?}")))
}

fn post(addr: SocketAddr, path: &str, token: &str, body: &str) -> (u16, Value) {
    let (code, body) = http_with(addr, "POST", path, &format!("Authorization: Bearer {token}\r\n"), body);
    (code, serde_json::from_str(&body).unwrap_or_else(|e| panic!("POST {path}: {e}: {body:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_the_json_api_under_the_same_rules() {
    let c = start_cluster_with(3, &["--http", "127.0.0.1:0"]).await;
    let nodes: Vec<SocketAddr> = (1..=3).map(|i| http_addr(&c, i)).collect();
    let root = TOKEN.as_str();

    // No worker: the jobs stay pending.
    let mut ids = Vec::new();
    for i in 0..7 {
        let (code, out, err) = c.cli(&["job", "submit", "--name", &format!("j{i}"), "--label", "team=a", "--", "true"]);
        assert_eq!(code, 0, "{err}");
        ids.push(out.trim().to_string());
    }

    // Every node: the same cluster and, after it applied them, the same jobs; pages of 3 cover all 7 once.
    let (_, st) = get(nodes[0], "/v1/cluster", root);
    let leader = st["leaderId"].clone();
    for &n in &nodes {
        let (code, s) = get(n, "/v1/cluster", root);
        assert_eq!((code, &s["leaderId"]), (200, &leader), "{s}");
        wait_until("the node applied every submission", Duration::from_secs(10), || {
            (get(n, "/v1/jobs?limit=1", root).1["total"] == "7").then_some(())
        });
        let (mut seen, mut token) = (Vec::new(), String::new());
        loop {
            let (code, page) = get(n, &format!("/v1/jobs?limit=3&label=team=a&page_token={token}"), root);
            assert_eq!(code, 200, "{page}");
            assert_eq!(page["total"], "7");
            seen.extend(page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()));
            token = page["nextPageToken"].as_str().unwrap().to_string();
            if token.is_empty() {
                break;
            }
        }
        let want: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(seen, want, "node {n}: every job once, newest first");
    }

    // Rules: no token, a viewer's write, another project's job; refused with the gRPC code's name and nothing
    // changed.
    let follower =
        nodes.iter().enumerate().find(|(i, _)| leader.as_str() != Some((i + 1).to_string().as_str())).unwrap().1;
    let (code, e) = get(*follower, "/v1/jobs", "");
    assert_eq!((code, e["code"].as_str()), (401, Some("Unauthenticated")), "{e}");
    let (code, out, err) = c.cli(&["-o", "json", "token", "create", "--name", "eve", "--role", "viewer"]);
    assert_eq!(code, 0, "{err}");
    let viewer = serde_json::from_str::<Value>(&out).unwrap()["secret"].as_str().unwrap().to_string();
    // A follower that has not applied the new token yet answers 503 with the leader's address (retry): wait for it.
    let code = wait_until("the follower knows the new token", Duration::from_secs(10), || {
        let (code, _) = get(*follower, "/v1/jobs", &viewer);
        (code != 503).then_some(code)
    });
    assert_eq!(code, 200, "a viewer reads");
    let (code, e) = post(*follower, &format!("/v1/jobs/{}/cancel", ids[0]), &viewer, "");
    assert_eq!((code, e["code"].as_str()), (403, Some("PermissionDenied")), "{e}");
    let auth = format!("Authorization: Bearer {root}\r\naidos-project: elsewhere\r\n");
    let (code, body) = http_with(*follower, "GET", &format!("/v1/jobs/{}", ids[0]), &auth, "");
    assert_eq!(code, 404, "another project's job is not even named: {body}");
    for (path, wants) in [
        ("/v1/jobs?state=sleeping", "sleeping"),
        ("/v1/jobs?limit=5000", "limit"),
        ("/v1/jobs?page_token=abc", "page_token"),
        ("/v1/jobs?colour=red", "colour"),
        ("/v1/runs?max_points=many", "max_points"),
        ("/v1/nothing/here", "no such API route"),
    ] {
        let (code, e) = get(*follower, path, root);
        assert!(code == 400 || code == 404, "{path}: {code} {e}");
        assert!(e["error"].as_str().unwrap().contains(wants), "{path}: {e}");
    }
    let (code, e) = post(*follower, "/v1/deployments/nosuch/scale", root, r#"{"replicas": "two"}"#);
    assert_eq!(code, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("body"), "{e}");

    // A write on a follower is relayed to the leader: the cancel lands, and every node sees it.
    let (code, j) = post(*follower, &format!("/v1/jobs/{}/cancel", ids[0]), root, "");
    assert_eq!((code, j["state"].as_str()), (200, Some("JOB_STATE_CANCELLED")), "{j}");
    c.wait_job(&ids[0], Duration::from_secs(10), |j| state_of(j) == JobState::Cancelled).await;
    for &n in &nodes {
        wait_until("every node sees the cancel", Duration::from_secs(10), || {
            (get(n, &format!("/v1/jobs/{}", ids[0]), root).1["state"] == "JOB_STATE_CANCELLED").then_some(())
        });
        let (_, page) = get(n, "/v1/jobs?state=cancelled", root);
        let got: BTreeSet<&str> = page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
        assert_eq!(got, BTreeSet::from([ids[0].as_str()]));
    }

    // The dashboard itself is served by every node, without a token (it holds no data).
    for &n in &nodes {
        let (code, html) = http_with(n, "GET", "/", "", "");
        assert_eq!(code, 200);
        assert!(html.contains("<div id=\"root\">") && html.contains("/assets/"), "{html}");
    }
}
