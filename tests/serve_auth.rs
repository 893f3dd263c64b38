//! Issue #17, inference keys: a deployment's replicas and the gateway accept the keys of the deployment's project
//! and nothing else. Every HTTP route and every gRPC method of both fronts (enumerated from the serving crate's
//! route table and the inference service's descriptors, so a new one without a rule fails here) refuses no key, a
//! malformed one, a forged one, an expired one and a revoked one (401 / UNAUTHENTICATED), and a viewer's token,
//! another project's key and a key limited to another deployment (403 / PERMISSION_DENIED). tritonclient passes a
//! key with `headers=` over HTTP and gRPC. A revocation reaches the gateway and the replica within the refresh
//! bound. A public deployment needs no key. Deployments, models and datasets belong to projects: another project
//! neither sees, changes nor takes the name of one.

mod common;

use std::time::{Duration, Instant};

use aidos_api::auth::{format_token, new_secret};
use aidos_serve::auth::{Need, http_rule};
use common::*;

const ROW: &str = r#"{"inputs":[{"name":"input","shape":[1,784],"datatype":"FP32","data":[DATA]}]}"#;

fn infer_body() -> String {
    ROW.replace("DATA", &vec!["0.1"; 784].join(","))
}

fn as_key(addr: std::net::SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let auth = key.map(|k| format!("Authorization: {k}\r\n")).unwrap_or_default();
    http_with(addr, method, path, &auth, body)
}

fn deploy(c: &Cluster, extra: &[&str]) {
    let mut args = vec!["serve", "deploy", "digits:1", "--cpus", "250m", "--memory", "256Mi", "--wait-secs", "180"];
    args.extend_from_slice(extra);
    let (code, _, err) = c.cli(&args);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_answer_only_keys_of_their_project_on_every_route_and_method() {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "2", "");
    c.train_digits(1).await;
    let replica = c.deploy_one("digits:1").await;
    deploy(&c, &["--name", "other"]);
    deploy(&c, &["--name", "demo", "--public"]);
    let (gateway_proc, gw_http, gw_grpc) = c.start_gateway().await;
    let body = infer_body();
    wait_until("the gateway routes all three deployments", Duration::from_secs(60), || {
        ["digits", "other", "demo"]
            .iter()
            .all(|d| http(gw_http, "POST", &format!("/v2/models/{d}/infer"), &body).0 == 200)
            .then_some(())
    });

    let (app_id, app) = create_token(&c, &["--name", "app", "--role", "infer", "--deployment", "digits"]);
    let (_, team) = create_token(&c, &["--name", "team", "--role", "infer"]);
    let (_, member) = create_token(&c, &["--name", "dev", "--role", "member"]);
    let (_, viewer) = create_token(&c, &["--name", "eve", "--role", "viewer"]);
    let (_, stranger) = create_token(&c, &["--name", "far", "--role", "infer", "--for-project", "elsewhere"]);
    let (_, brief) = create_token(&c, &["--name", "brief", "--role", "infer", "--expires", "1s"]);
    let (gone_id, gone) = create_token(&c, &["--name", "gone", "--role", "infer"]);
    let (code, _, err) = c.cli(&["token", "revoke", &gone_id]);
    assert_eq!(code, 0, "{err}");
    let forged = format_token(&app_id, &new_secret());
    let replica_http: std::net::SocketAddr = replica.http.parse().unwrap();
    let fronts = [("gateway", gw_http, gw_grpc.to_string()), ("replica", replica_http, replica.grpc.clone())];
    // Both fronts have read every new key, and the brief one has expired (refused as expired, not as unknown).
    wait_until("both fronts know the new keys", Duration::from_secs(10), || {
        let code =
            |a: std::net::SocketAddr, k: &str| as_key(a, "POST", "/v2/models/digits/infer", Some(&bearer(k)), &body);
        fronts
            .iter()
            .all(|(_, a, _)| {
                [&app, &team, &member].iter().all(|k| code(*a, k).0 == 200)
                    && [&viewer, &stranger].iter().all(|k| code(*a, k).0 == 403)
                    && code(*a, &brief).1.contains("expired")
            })
            .then_some(())
    });

    // Every route of both fronts, from the serving crate's route table.
    let unauthenticated: Vec<(&str, Option<String>)> = vec![
        ("no key", None),
        ("malformed", Some("Bearer aidos_nope".into())),
        ("forged secret", Some(bearer(&forged))),
        ("expired", Some(bearer(&brief))),
        ("revoked", Some(bearer(&gone))),
    ];
    let denied = [("viewer", bearer(&viewer)), ("another project's key", bearer(&stranger))];
    let mut checked = 0;
    for (front, addr, _) in &fronts {
        for template in aidos_serve::http::ROUTES {
            let path = template.replace("{model}", "digits").replace("{version}", "1");
            let post = template.ends_with("/infer") || template.contains("/repository/");
            let (method, b) = if post { ("POST", body.as_str()) } else { ("GET", "") };
            let need = http_rule(template, Some("digits")).expect("every route has a rule");
            if need == Need::Nothing {
                let (code, text) = as_key(*addr, method, &path, None, b);
                assert!(code == 200 || code == 503, "{front} {template} needs no key: {code} {text}");
                continue;
            }
            for (what, key) in &unauthenticated {
                let (code, text) = as_key(*addr, method, &path, key.as_deref(), b);
                assert_eq!(code, 401, "{front} {template} with {what}: {text}");
                checked += 1;
            }
            for (what, key) in &denied {
                let (code, text) = as_key(*addr, method, &path, Some(key), b);
                let want = if need == Need::AnyKey { 200 } else { 403 };
                assert_eq!(code, want, "{front} {template} with {what}: {text}");
                checked += 1;
            }
            if matches!(need, Need::Model(_)) {
                for key in [&app, &team, &member, &*TOKEN] {
                    let (code, text) = as_key(*addr, method, &path, Some(&bearer(key)), b);
                    assert_eq!(code, 200, "{front} {template}: {text}");
                }
            }
            if need == Need::Service {
                let (code, text) = as_key(*addr, method, &path, Some(&bearer(&team)), b);
                assert_eq!(code, 403, "{front} {template}: only service keys load or unload: {text}");
            }
        }
    }
    // A key limited to `digits` may not call `other` (at the gateway; the replica serves digits only).
    let (code, text) = as_key(gw_http, "POST", "/v2/models/other/infer", Some(&bearer(&app)), &body);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains(&app_id) && text.contains("other"), "{text}");
    assert_eq!(as_key(gw_http, "POST", "/v2/models/other/infer", Some(&bearer(&team)), &body).0, 200);
    // A public deployment needs no key.
    assert_eq!(as_key(gw_http, "POST", "/v2/models/demo/infer", None, &body).0, 200);

    // Every gRPC method of both fronts, from the inference service's descriptors (an empty request: model "").
    for (front, _, grpc) in &fronts {
        for m in aidos_serve::grpc::method_names() {
            let path = format!("/inference.GRPCInferenceService/{m}");
            let need = aidos_serve::auth::grpc_rule(&m, "").expect("every method has a rule");
            if need == Need::Nothing {
                assert_eq!(call(grpc, &path, None, None).await, tonic::Code::Ok, "{front} {m}");
                continue;
            }
            for (what, key) in &unauthenticated {
                let code = call(grpc, &path, key.as_deref(), None).await;
                assert_eq!(code, tonic::Code::Unauthenticated, "{front} {m} with {what}");
                checked += 1;
            }
            for (what, key) in &denied {
                let want = if need == Need::AnyKey { tonic::Code::Ok } else { tonic::Code::PermissionDenied };
                assert_eq!(call(grpc, &path, Some(key), None).await, want, "{front} {m} with {what}");
                checked += 1;
            }
        }
    }
    eprintln!("{checked} refused or narrowed calls checked");

    // tritonclient through the gateway with the key in `headers=`, over HTTP and gRPC; outputs as the replica's.
    let dir = c.path().join("triton");
    std::fs::create_dir_all(&dir).unwrap();
    let x: Vec<f32> = (0..4 * 784).map(|i| ((i * 37 % 255) as f32) / 255.0).collect();
    let data: Vec<String> = x.iter().map(|v| v.to_string()).collect();
    let req = serde_json::json!({"inputs": [{"name": "input", "shape": [4, 784], "datatype": "FP32",
        "data": serde_json::from_str::<serde_json::Value>(&format!("[{}]", data.join(","))).unwrap()}]});
    let (code, out) = http(replica_http, "POST", "/v2/models/digits/infer", &req.to_string());
    assert_eq!(code, 200, "{out}");
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    let expected: Vec<f32> =
        out["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join("x.f32"), f32s(&x)).unwrap();
    std::fs::write(dir.join("expected.f32"), f32s(&expected)).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/triton_check.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .args([&gw_http.to_string(), &gw_grpc.to_string(), dir.to_str().unwrap(), "digits"])
        .env("AIDOS_TOKEN", &app)
        .env("AIDOS_SERVER_NAME", "aidos-gateway")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tritonclient with a key through the gateway:\n{text}");

    // A revocation: both fronts refuse the key once they have re-read the scheduler (250 ms and 500 ms loops).
    let team_id = aidos_api::auth::parse_token(&team).unwrap().id;
    let (code, _, err) = c.cli(&["token", "revoke", &team_id]);
    assert_eq!(code, 0, "{err}");
    let revoked_at = Instant::now();
    wait_until("both fronts refuse the revoked key", Duration::from_secs(10), || {
        fronts
            .iter()
            .all(|(_, a, _)| as_key(*a, "POST", "/v2/models/digits/infer", Some(&bearer(&team)), &body).0 == 401)
            .then_some(())
    });
    let took = revoked_at.elapsed();
    eprintln!("a revoked key was refused by the gateway and the replica {} ms after `token revoke`", took.as_millis());
    assert!(took < Duration::from_secs(2), "the revocation took {took:?} to reach the serving fronts");

    // Deployments belong to their project: another project's member neither sees, deletes nor takes the name.
    let (_, bob) = create_token(&c, &["--name", "bob", "--role", "member", "--for-project", "elsewhere"]);
    let as_bob = |args: &[&str]| {
        let mut all = vec!["--token", bob.as_str(), "--project", "elsewhere"];
        all.extend_from_slice(args);
        c.cli(&all)
    };
    let (code, out, err) = as_bob(&["-o", "json", "serve", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("digits"), "another project's deployments are listed: {out}");
    let (code, _, err) = as_bob(&["serve", "delete", "digits"]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(http(gw_http, "POST", "/v2/models/digits/infer", &body).0, 200, "digits still serves");
    // So do models and datasets: the registry and the data of `default` are not even named in `elsewhere`.
    let (code, out, err) = as_bob(&["-o", "json", "model", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("digits"), "another project's models are listed: {out}");
    let (code, out, err) = as_bob(&["-o", "json", "dataset", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("mnist"), "another project's datasets are listed: {out}");
    let (code, _, err) = as_bob(&["model", "alias", "digits@prod", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = as_bob(&["serve", "deploy", "digits:1", "--name", "theirs"]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "deploying another project's model: {err}");
    let mnist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist10k");
    let (code, _, err) = as_bob(&["dataset", "push", "mnist", mnist.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("another project"), "{err}");

    drop(gateway_proc);
    kill_tasks_under(c.path());
}
