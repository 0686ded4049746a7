//! rkt compatibility end to end (SPEC §2–§4): rkt's exact registration
//! sequence with every shared fixture, every public endpoint as an app
//! reads it, and every bad input. Unix socket + TCP on loopback; no root
//! needed (pods registered here are host-network).

use std::{
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    time::Duration,
};

use integration::{
    fixtures::{self, PODS},
    http::{self, Request},
    Agent, AgentOptions,
};
use serde_json::{json, Value};

const TEXT: &str = "text/plain; charset=us-ascii";
const JSON: &str = "application/json";

fn uuid(n: u8) -> String {
    format!("6733c088-a507-4694-aabf-edbe4fc526{n:02x}")
}

fn token(n: u8) -> String {
    format!("{n:02x}23456789abcdef0123456789abcdef")
}

fn base(token: &str) -> String {
    format!("/{token}/acMetadata/v1")
}

fn merged(image: &Value, app: &Value) -> Value {
    let mut out: Vec<Value> = image["annotations"].as_array().cloned().unwrap_or_default();
    for a in app["annotations"].as_array().cloned().unwrap_or_default() {
        match out.iter_mut().find(|o| o["name"] == a["name"]) {
            Some(slot) => *slot = a,
            None => out.push(a),
        }
    }
    Value::Array(out)
}

#[test]
fn rkt_sequence_with_every_fixture() {
    let agent = Agent::start(AgentOptions::identity("token"));
    for (i, fx) in PODS.iter().enumerate() {
        let (uuid, token) = (uuid(i as u8 + 1), token(i as u8 + 1));
        let manifest_bytes = fixtures::read(fx.manifest);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();

        // rkt run-prepared's availability probe: connect, send nothing.
        drop(std::os::unix::net::UnixStream::connect(&agent.socket).unwrap());

        let r = agent.register(
            &uuid.to_uppercase().replace('-', ""),
            &token,
            &manifest_bytes,
            "",
        );
        assert_eq!(
            (r.status, r.text()),
            (200, String::new()),
            "{}",
            fx.manifest
        );
        for (app, image) in fx.apps {
            let r = agent.register_app(&uuid, app, &fixtures::read(image));
            assert_eq!(r.status, 200, "{app}: {}", r.text());
        }

        let b = base(&token);
        let r = agent.get(&format!("{b}/pod/uuid"));
        assert_eq!(
            (r.status, r.content_type(), r.text()),
            (200, TEXT, uuid.clone())
        );

        let r = agent.get(&format!("{b}/pod/manifest"));
        assert_eq!((r.status, r.content_type()), (200, JSON));
        let echoed = r.json();
        let mut expected = manifest.clone();
        if expected.get("annotations").is_none() {
            expected["annotations"] = Value::Null;
        }
        assert_eq!(echoed, expected, "manifest echoed with unknown fields kept");

        let r = agent.get(&format!("{b}/pod/annotations"));
        assert_eq!((r.status, r.content_type()), (200, JSON));
        assert_eq!(
            r.json(),
            echoed["annotations"],
            "annotations agree with the manifest"
        );
        for a in manifest["annotations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let name = a["name"].as_str().unwrap();
            let r = agent.get(&format!("{b}/pod/annotations/{name}"));
            assert_eq!((r.status, r.content_type()), (200, TEXT));
            assert_eq!(r.text(), a["value"].as_str().unwrap());
        }

        for app in manifest["apps"].as_array().unwrap() {
            let name = app["name"].as_str().unwrap();
            let Some((_, image_file)) = fx.apps.iter().find(|(n, _)| *n == name) else {
                let r = agent.get(&format!("{b}/apps/{name}/image/id"));
                assert_eq!((r.status, r.text()), (404, "app not found".into()));
                continue;
            };
            let image: Value = serde_json::from_slice(&fixtures::read(image_file)).unwrap();
            let r = agent.get(&format!("{b}/apps/{name}/image/manifest"));
            assert_eq!((r.status, r.content_type()), (200, JSON));
            assert_eq!(r.json(), image);
            let r = agent.get(&format!("{b}/apps/{name}/image/id"));
            assert_eq!((r.status, r.content_type()), (200, TEXT));
            assert_eq!(r.text(), app["image"]["id"].as_str().unwrap());
            let want = merged(&image, app);
            let r = agent.get(&format!("{b}/apps/{name}/annotations"));
            assert_eq!((r.status, r.content_type()), (200, JSON));
            assert_eq!(r.json(), want, "merge order, app {name}");
            for a in want.as_array().unwrap() {
                let n = a["name"].as_str().unwrap();
                let r = agent.get(&format!("{b}/apps/{name}/annotations/{n}"));
                assert_eq!(
                    (r.status, r.text()),
                    (200, a["value"].as_str().unwrap().to_owned())
                );
            }
        }

        let sig = http::tcp(
            agent.loopback(),
            &Request::form(&format!("{b}/pod/hmac/sign"), &[("content", "hello")]),
        )
        .unwrap();
        assert_eq!((sig.status, sig.content_type()), (200, TEXT));
        assert_eq!(sig.body.len(), 88);
        // Another pod (here: no pod at all) verifies it.
        let v = http::tcp(
            agent.loopback(),
            &Request::form(
                &format!("{}/pod/hmac/verify", base("someone-else-entirely-x")),
                &[
                    ("content", "hello"),
                    ("uuid", &uuid),
                    ("signature", &sig.text()),
                ],
            ),
        )
        .unwrap();
        assert_eq!((v.status, v.content_type()), (200, TEXT));

        let r = agent.unregister(&uuid);
        assert_eq!(r.status, 200);
        assert_eq!(agent.get(&format!("{b}/pod/uuid")).status, 401);
        assert_eq!(agent.unregister(&uuid).status, 404, "rkt gc tolerates 404");
    }
    // Lines reach the log in batches: wait for the last request's.
    let log = agent.wait_log("the last request's access line", |log| {
        log.lines()
            .filter(|l| l.contains("method=DELETE") && l.contains("status=404"))
            .count()
            == PODS.len()
    });
    assert!(!log.contains(" ERROR "), "{log}");
}

#[test]
fn app_annotation_overrides_image_annotation_in_place() {
    let agent = Agent::start(AgentOptions::identity("token"));
    let (u, t) = (uuid(9), token(9));
    agent.register_fixture(&u, &t, &fixtures::WEB, "");
    let names: Vec<String> = agent
        .get(&format!("{}/apps/web/annotations", base(&t)))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "authors",
            "example.com/tier",
            "created",
            "coreos.com/rkt/stage1/run"
        ]
    );
    let r = agent.get(&format!(
        "{}/apps/web/annotations/example.com/tier",
        base(&t)
    ));
    assert_eq!(r.text(), "frontend-override");
}

#[test]
fn bad_registrations_are_refused_and_change_nothing() {
    let agent = Agent::start(AgentOptions::identity("token"));
    let pod = fixtures::read("pods/bare-pod.json");
    let good: Value = serde_json::from_slice(&pod).unwrap();
    let (u, t) = (uuid(1), token(1));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "malformed uuid",
            format!("/pods/not-a-uuid?token={t}"),
            pod.clone(),
            400,
            "UUID is missing or malformed",
        ),
        (
            "zero uuid",
            format!("/pods/00000000-0000-0000-0000-000000000000?token={t}"),
            pod.clone(),
            400,
            "UUID",
        ),
        (
            "missing token",
            format!("/pods/{u}"),
            pod.clone(),
            400,
            "token missing",
        ),
        (
            "empty token",
            format!("/pods/{u}?token="),
            pod.clone(),
            400,
            "token missing",
        ),
        (
            "weak token",
            format!("/pods/{u}?token=abc"),
            pod.clone(),
            400,
            "token",
        ),
        (
            "token with bad chars",
            format!("/pods/{u}?token=0123456789abcdef0123%20456789"),
            pod.clone(),
            400,
            "token",
        ),
        (
            "token is the uuid",
            format!("/pods/{u}?token={u}"),
            pod.clone(),
            400,
            "UUID",
        ),
        (
            "invalid json",
            format!("/pods/{u}?token={t}"),
            b"{not json".to_vec(),
            400,
            "JSON-decoding failed",
        ),
        (
            "wrong acKind",
            format!("/pods/{u}?token={t}"),
            with(&|v| v["acKind"] = json!("ImageManifest")),
            400,
            "acKind",
        ),
        (
            "duplicate annotations",
            format!("/pods/{u}?token={t}"),
            with(&|v| {
                v["annotations"] = json!([{"name": "a", "value": "1"}, {"name": "a", "value": "2"}])
            }),
            400,
            "duplicate",
        ),
        (
            "invalid app name",
            format!("/pods/{u}?token={t}"),
            with(&|v| v["apps"][0]["name"] = json!("Worker_1")),
            400,
            "AC name",
        ),
        (
            "invalid annotation name",
            format!("/pods/{u}?token={t}"),
            with(&|v| v["annotations"] = json!([{"name": "Not Valid", "value": "1"}])),
            400,
            "AC identifier",
        ),
        (
            "relative netns",
            format!("/pods/{u}?token={t}&netns=relative/path"),
            pod.clone(),
            400,
            "absolute",
        ),
        (
            "bad pid",
            format!("/pods/{u}?token={t}&pid=-4"),
            pod.clone(),
            400,
            "pid",
        ),
    ];
    for (what, path, body, status, text) in cases {
        let r = agent.unix(&Request::chunked("PUT", &path, &body));
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert!(r.text().contains(text), "{what}: {}", r.text());
        assert_eq!(r.content_type(), TEXT, "{what}");
        assert!(
            agent.pods()["pods"].as_array().unwrap().is_empty(),
            "{what} changed state"
        );
    }

    // Over the body limit, chunked (as rkt sends) or not: 413.
    let huge = vec![b' '; 1024 * 1024 + 1];
    assert_eq!(
        agent
            .unix(&Request::chunked(
                "PUT",
                &format!("/pods/{u}?token={t}"),
                &huge
            ))
            .status,
        413
    );
    assert_eq!(
        agent
            .unix(&Request::new(
                "PUT",
                &format!("/pods/{u}?token={t}"),
                Some(&huge),
                &[]
            ))
            .status,
        413
    );

    // Apps: unknown pod, bad name, not in the manifest, bad image.
    let image = fixtures::read("pods/worker-image.json");
    assert_eq!(agent.register_app(&u, "worker", &image).status, 404);
    assert_eq!(agent.register(&u, &t, &pod, "").status, 200);
    let r = agent.register_app(&u, "Worker", &image);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = agent.register_app(&u, "other", &image);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = agent.register_app(
        &u,
        "worker",
        br#"{"acKind":"PodManifest","acVersion":"0.8.11","name":"x"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = agent.register_app(&u, "worker", b"[");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        agent
            .get(&format!("{}/apps/worker/image/id", base(&t)))
            .status,
        404
    );

    // Idempotent with the same token; 409 with another, old state kept.
    assert_eq!(agent.register(&u, &t, &pod, "").status, 200);
    let other = with(&|v| v["annotations"] = json!([{"name": "evil", "value": "1"}]));
    let r = agent.register(&u, &token(2), &other, "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        agent.get(&format!("{}/pod/uuid", base(&token(2)))).status,
        401
    );
    assert_eq!(
        agent.get(&format!("{}/pod/annotations", base(&t))).text(),
        "null"
    );
    // A token belongs to one pod only.
    assert_eq!(agent.register(&uuid(2), &t, &pod, "").status, 409);
    assert_eq!(agent.pods()["pods"].as_array().unwrap().len(), 1);

    // Unregistration.
    assert_eq!(agent.unregister("zzz").status, 400);
    assert_eq!(agent.unregister(&uuid(3)).status, 404);
    assert_eq!(agent.unix(&Request::get(&format!("/pods/{u}"))).status, 405);
    assert_eq!(
        agent
            .unix(&Request::get(&format!("/pods/{u}")))
            .header("allow"),
        Some("PUT, DELETE")
    );
    assert_eq!(agent.unix(&Request::get("/nope")).status, 404);
}

#[test]
fn public_api_errors_and_hmac_forms() {
    let agent = Agent::start(AgentOptions::identity("token"));
    let (u, t) = (uuid(1), token(1));
    agent.register_fixture(&u, &t, &fixtures::WEB, "");
    let b = base(&t);
    let get = |p: &str| agent.get(p);

    let r = get(&format!("{}/pod/uuid", base("unknown-token-0123456789abc")));
    assert_eq!((r.status, r.text().as_str()), (401, "pod not found"));
    let r = get(&format!("{b}/pod/annotations/Bad_Name"));
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            "Pod annotation \"Bad_Name\" is not a valid AC Identifier"
        )
    );
    let r = get(&format!("{b}/pod/annotations/missing"));
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, "Pod annotation \"missing\" not found")
    );
    let r = get(&format!("{b}/apps/web/annotations/missing"));
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, "App annotation \"missing\" not found")
    );
    let r = get(&format!("{b}/apps/web/annotations/Bad"));
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            "App annotation name \"Bad\" is not a valid AC Identifier"
        )
    );
    assert_eq!(get(&format!("{b}/apps/Web/image/id")).status, 400);
    assert_eq!(get(&format!("{b}/apps/nope/image/id")).status, 404);
    assert_eq!(get(&format!("{b}/pod/nope")).status, 404);
    assert_eq!(get("/").status, 404);
    let r = http::tcp(
        agent.loopback(),
        &Request::new("POST", &format!("{b}/pod/uuid"), Some(b""), &[]),
    )
    .unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let r = get(&format!("{b}/pod/hmac/sign"));
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    for r in [
        get(&format!("{b}/pod/nope")),
        get(&format!("{b}/pod/annotations/missing")),
    ] {
        assert_eq!(r.content_type(), TEXT);
        assert!(!r.text().contains(&t));
    }

    let post = |req: Request| http::tcp(agent.loopback(), &req).unwrap();
    let sign = format!("{b}/pod/hmac/sign");
    let verify = format!("{b}/pod/hmac/verify");
    // Sign: no content → 400; content from the query; body wins.
    assert_eq!(post(Request::form(&sign, &[])).status, 400);
    let from_query = post(Request::new(
        "POST",
        &format!("{sign}?content=hello"),
        Some(b""),
        &[],
    ));
    let from_body = post(Request::form(&sign, &[("content", "hello")]));
    assert_eq!(from_query.status, 200);
    assert_eq!(from_query.text(), from_body.text());
    let body_wins = post(Request::new(
        "POST",
        &format!("{sign}?content=other"),
        Some(b"content=hello"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
    ));
    assert_eq!(body_wins.text(), from_body.text());
    let multipart =
        b"--B\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nhello\r\n--B--\r\n";
    let mp = post(Request::new(
        "POST",
        &sign,
        Some(multipart),
        &[("Content-Type", "multipart/form-data; boundary=B")],
    ));
    assert_eq!((mp.status, mp.text()), (200, from_body.text()));
    let sig = from_body.text();

    // Verify.
    let v = |fields: &[(&str, &str)]| post(Request::form(&verify, fields));
    assert_eq!(
        v(&[("content", "hello"), ("uuid", &u), ("signature", &sig)]).status,
        200
    );
    let upper = u.to_uppercase().replace('-', "");
    assert_eq!(
        v(&[("content", "hello"), ("uuid", &upper), ("signature", &sig)]).status,
        200
    );
    let bad = v(&[("content", "hellO"), ("uuid", &u), ("signature", &sig)]);
    assert_eq!((bad.status, bad.content_type()), (403, TEXT));
    assert_eq!(
        v(&[
            ("content", "hello"),
            ("uuid", &uuid(2)),
            ("signature", &sig)
        ])
        .status,
        403
    );
    assert_eq!(
        v(&[("content", "hello"), ("uuid", &u)]).status,
        403,
        "missing signature is zero bytes"
    );
    assert_eq!(v(&[("content", "hello"), ("signature", &sig)]).status, 400);
    assert_eq!(
        v(&[("content", "hello"), ("uuid", "xyz"), ("signature", &sig)]).status,
        400
    );
    let r = v(&[
        ("content", "hello"),
        ("uuid", &u),
        ("signature", "!!not base64!!"),
    ]);
    assert_eq!((r.status, r.content_type()), (400, TEXT));

    // Public bodies are limited to 64 KiB.
    let big = format!("content={}", "x".repeat(64 * 1024 + 1));
    let r = post(Request::new(
        "POST",
        &sign,
        Some(big.as_bytes()),
        &[("Content-Type", "application/x-www-form-urlencoded")],
    ));
    assert_eq!(r.status, 413);

    // No token, key or signature in the log; tokens appear redacted.
    let log = agent.wait_log("the last request's access line", |l| {
        l.contains("status=413")
    });
    assert!(!log.contains(&t), "token in the log");
    assert!(!log.contains(&sig), "signature in the log");
    assert!(
        log.contains("/***/acMetadata/v1/pod/uuid"),
        "access log lines redacted"
    );
}

#[test]
fn metadata_flavor_can_be_required() {
    let agent = Agent::start(AgentOptions::identity("token").arg("--require-metadata-flavor"));
    let (u, t) = (uuid(1), token(1));
    agent.register_fixture(&u, &t, &fixtures::BARE, "");
    let path = format!("{}/pod/uuid", base(&t));
    assert_eq!(agent.get(&path).status, 403);
    let r = http::tcp(
        agent.loopback(),
        &Request::new("GET", &path, None, &[("Metadata-Flavor", "AppContainer")]),
    )
    .unwrap();
    assert_eq!((r.status, r.text()), (200, u));
}

#[test]
fn slow_request_heads_are_cut_off_at_the_deadline() {
    let agent = Agent::start(
        AgentOptions::identity("token")
            .arg("--header-timeout")
            .arg("1s"),
    );
    for unix in [false, true] {
        let mut buf = Vec::new();
        let result = if unix {
            let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"PUT /pods/x HTTP/1.1\r\nHost: unixsock\r\n")
                .unwrap();
            s.read_to_end(&mut buf)
        } else {
            let mut s = std::net::TcpStream::connect(agent.loopback()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"GET /t/acMetadata/v1/pod/uuid HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s.read_to_end(&mut buf)
        };
        // The agent closed the connection (EOF, maybe after a 408); a read
        // timeout error here would mean it kept waiting.
        let n = result.expect("connection closed by the agent, not timed out");
        assert!(
            n == 0 || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
    }
    // Still serving.
    assert_eq!(agent.unix(&Request::get("/health")).status, 200);
}

#[test]
fn keys_and_registrations_survive_a_restart() {
    let mut agent = Agent::start(AgentOptions::identity("token"));
    let (u, t) = (uuid(1), token(1));
    agent.register_fixture(&u, &t, &fixtures::WEB, "");
    let b = base(&t);
    let sig = http::tcp(
        agent.loopback(),
        &Request::form(&format!("{b}/pod/hmac/sign"), &[("content", "before")]),
    )
    .unwrap()
    .text();
    let before = agent.get(&format!("{b}/apps/web/annotations")).text();

    // SIGINT is a clean exit too.
    let status = agent.stop_with(nix::sys::signal::Signal::SIGINT);
    assert_eq!(status.code(), Some(0), "SIGINT is a clean exit");
    assert!(!agent.socket.exists(), "own socket removed on clean exit");
    // Registrations were durable: one private file per pod.
    let runtime = agent.runtime_dir();
    assert_eq!(
        std::fs::metadata(&runtime).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let record = runtime.join(format!("{u}.json"));
    assert_eq!(
        std::fs::metadata(&record).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !std::fs::read_to_string(&record).unwrap().contains(&t),
        "the token is stored only as a digest"
    );
    agent.restart();

    let v = http::tcp(
        agent.loopback(),
        &Request::form(
            &format!("{b}/pod/hmac/verify"),
            &[("content", "before"), ("uuid", &u), ("signature", &sig)],
        ),
    )
    .unwrap();
    assert_eq!(
        v.status, 200,
        "a signature from before the restart verifies"
    );
    assert_eq!(
        agent.get(&format!("{b}/apps/web/annotations")).text(),
        before
    );
    let state = agent.state_dir();
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for e in std::fs::read_dir(&state).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            e.metadata().unwrap().permissions().mode() & 0o777,
            0o600,
            "{:?}",
            e.path()
        );
    }
}

#[test]
fn socket_file_lifecycle() {
    let mut agent = Agent::start(AgentOptions::identity("token"));
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);

    // A second agent on the same live socket refuses to start (exit 1) and
    // leaves the first one serving.
    let out = std::process::Command::new(integration::agent::binary())
        .args([
            "serve",
            "--workload-api-port",
            "0",
            "--workload-api-socket",
            "off",
            "--socket",
            agent.socket.to_str().unwrap(),
            "--listen-port",
            "0",
            "--state-dir",
            agent.root.path().join("s2").to_str().unwrap(),
            "--runtime-dir",
            agent.root.path().join("r2").to_str().unwrap(),
            "--metrics-address",
            "off",
        ])
        .output()
        .unwrap();
    // 1: a failure that may pass (the other agent may be stopping).
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already serving"));
    assert_eq!(agent.unix(&Request::get("/health")).status, 200);

    // A stale socket (crash) is replaced.
    agent.kill();
    assert!(agent.socket.exists(), "SIGKILL leaves the socket file");
    agent.restart();
    assert_eq!(agent.unix(&Request::get("/health")).status, 200);
}

#[test]
fn idle_keep_alive_outlives_the_head_deadline_then_closes() {
    let agent = Agent::start(
        AgentOptions::identity("token")
            .arg("--header-timeout")
            .arg("1s")
            .arg("--idle-timeout")
            .arg("3s"),
    );
    let (u, t) = (uuid(1), token(1));
    agent.register_fixture(&u, &t, &fixtures::BARE, "");
    let s = std::net::TcpStream::connect(agent.loopback()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut conn = http::Conn::new(s);
    let req = Request::get(&format!("{}/pod/uuid", base(&t)));
    assert_eq!(conn.send(&req).unwrap().status, 200);
    // Idle for longer than the head deadline: what is under test is time
    // passing, so this sleep is the test, not a synchronization.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        conn.send(&req).unwrap().status,
        200,
        "an idle keep-alive connection is not a slow head"
    );
    // Left idle, the agent closes it (EOF, not our 30 s read timeout).
    let mut rest = Vec::new();
    let n = conn
        .stream()
        .read_to_end(&mut rest)
        .expect("closed by the agent");
    assert_eq!(n, 0);
}

#[test]
fn connections_beyond_the_cap_get_503() {
    // One source (loopback) fills the cap only with no per-source share:
    // a share is at most a quarter of the cap.
    let agent = Agent::start(
        AgentOptions::identity("token")
            .arg("--max-connections")
            .arg("2")
            .arg("--max-connections-per-source")
            .arg("0"),
    );
    let (u, t) = (uuid(1), token(1));
    agent.register_fixture(&u, &t, &fixtures::BARE, "");
    let req = Request::get(&format!("{}/pod/uuid", base(&t)));
    let open = || {
        let s = std::net::TcpStream::connect(agent.loopback()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        http::Conn::new(s)
    };
    // Two connections held open (each proven served) fill the cap.
    let (mut a, mut b) = (open(), open());
    assert_eq!(a.send(&req).unwrap().status, 200);
    assert_eq!(b.send(&req).unwrap().status, 200);
    let r = open().send(&req).unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "too many connections, later")
    );
    // Closing one frees a slot.
    drop(a);
    let served = integration::wait_for("a freed slot", Duration::from_secs(5), || {
        open().send(&req).ok().filter(|r| r.status == 200)
    });
    assert_eq!(served.text(), u);
}

#[test]
fn listen_address_binds_only_what_it_names() {
    let agent = Agent::start(
        AgentOptions::identity("token")
            .arg("--listen-address")
            .arg("127.0.0.1"),
    );
    let (u, t) = (uuid(1), token(1));
    agent.register_fixture(&u, &t, &fixtures::BARE, "");
    assert_eq!(agent.get(&format!("{}/pod/uuid", base(&t))).text(), u);
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, agent.port));
    assert!(
        http::tcp(v6, &Request::get("/")).is_err(),
        "[::1] is not listened on"
    );
}
