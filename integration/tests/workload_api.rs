//! The SPIFFE Workload API (SPEC §9) with a real client: rust-spiffe's
//! `WorkloadApiClient` (crate `spiffe`), run inside pod namespaces against
//! `tcp://HOST:PORT`. No code of ours on the client side, but for the one
//! raw request that leaves out the security header. Needs root; runs in
//! CI.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use futures::StreamExt;
use integration::{fixtures, http::Request, privilege::require_root, Agent, AgentOptions, PodNet};
use spiffe::{TrustDomain, WorkloadApiClient};

const T_A: &str = "aaaa56789abcdef0123456789abcdef0";
const U_A: &str = "aaaaaaaa-a507-4694-aabf-edbe4fc5266f";
const TD: &str = "example.org";

fn id(app: Option<&str>) -> String {
    let pod = format!("spiffe://{TD}/rkt/node/node-1/pod/{U_A}");
    app.map_or(pod.clone(), |a| format!("{pod}/app/{a}"))
}

fn start(mode: &'static str, extra: &[&str]) -> (Agent, PodNet) {
    let mut options = AgentOptions::identity(mode)
        .arg("--node-name")
        .arg("node-1")
        .arg("--trust-domain")
        .arg(TD);
    for a in extra {
        options = options.arg(*a);
    }
    let agent = Agent::start(options);
    let pod = PodNet::new();
    agent.register_in(U_A, T_A, &fixtures::read(fixtures::WEB.manifest), &pod);
    (agent, pod)
}

/// Runs `f` with a Workload API client inside `pod`'s namespace (its own
/// thread and runtime: the client's sockets are the pod's).
fn in_pod<T, F, Fut>(pod: &PodNet, agent: &Agent, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    spawn_in_pod(pod, agent, f)
        .join()
        .expect("the client thread")
}

/// [`in_pod`], not waiting: for a client that runs while the test acts.
fn spawn_in_pod<T, F, Fut>(pod: &PodNet, agent: &Agent, f: F) -> std::thread::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let endpoint = format!("tcp://{}:{}", pod.host_v4(), agent.workload_port);
    let ns = pod.netns();
    std::thread::spawn(move || {
        netns::run_in(&ns, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f(endpoint))
        })
        .expect("run in the pod's namespace")
    })
}

fn permission_denied(e: &spiffe::WorkloadApiError) -> bool {
    matches!(e, spiffe::WorkloadApiError::PermissionDenied(_))
        || e.to_string().to_lowercase().contains("permission")
}

#[test]
fn a_pod_gets_its_identities_from_the_workload_api() {
    if !require_root("a_pod_gets_its_identities_from_the_workload_api") {
        return;
    }
    let (agent, pod) = start("token+netns", &[]);
    let http_bundle = agent.unix(&Request::get("/.well-known/spiffe-bundle"));
    let http_bundle: serde_json::Value = serde_json::from_slice(&http_bundle.body).unwrap();
    let (svids, bundle, jwt, validated, jwt_bundles) =
        in_pod(&pod, &agent, |endpoint| async move {
            let client = WorkloadApiClient::connect_to(&endpoint)
                .await
                .expect("connect");
            let svids = client.fetch_all_x509_svids().await.expect("X.509-SVIDs");
            let svids: Vec<(String, Vec<u8>, Vec<u8>)> = svids
                .iter()
                .map(|s| {
                    (
                        s.spiffe_id().to_string(),
                        s.leaf().as_bytes().to_vec(),
                        s.private_key().as_bytes().to_vec(),
                    )
                })
                .collect();
            let td = TrustDomain::new(TD).unwrap();
            let bundles = client.fetch_x509_bundles().await.expect("X.509 bundles");
            let bundle: Vec<Vec<u8>> = bundles
                .get(&td)
                .expect("our trust domain's bundle")
                .authorities()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect();
            let jwt = client
                .fetch_jwt_svid(["db"], None)
                .await
                .expect("a JWT-SVID");
            let validated = client
                .validate_jwt_token("db", jwt.token())
                .await
                .expect("validated by the agent");
            let wrong_audience = client.validate_jwt_token("other", jwt.token()).await;
            assert!(wrong_audience.is_err(), "another audience validates");
            let jwt_bundles = client.fetch_jwt_bundles().await.expect("JWT bundles");
            let keys = jwt_bundles
                .get(&td)
                .map(|b| b.jwt_authorities().count())
                .unwrap_or(0);
            (
                svids,
                bundle,
                jwt.spiffe_id().to_string(),
                validated.spiffe_id().to_string(),
                keys,
            )
        });
    let ids: Vec<&str> = svids.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        ids,
        vec![id(None), id(Some("web")), id(Some("log-shipper"))],
        "the pod's SVID first, then one per app"
    );
    // The bundle is the one HTTP serves.
    let x5c: Vec<Vec<u8>> = http_bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(k["x5c"][0].as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(bundle, x5c);
    assert_eq!(
        (jwt.as_str(), validated.as_str()),
        (id(None).as_str(), id(None).as_str())
    );
    assert!(jwt_bundles >= 1);
    // OpenSSL verifies each SVID against the bundle.
    let dir = tempfile::tempdir().unwrap();
    let pem = integration::openssl::pem_certificate;
    let ca = dir.path().join("bundle.pem");
    std::fs::write(&ca, bundle.iter().map(|c| pem(c)).collect::<String>()).unwrap();
    for (n, (_, leaf, key)) in svids.iter().enumerate() {
        assert!(!key.is_empty(), "a private key comes with each SVID");
        let cert = dir.path().join(format!("{n}.pem"));
        std::fs::write(&cert, pem(leaf)).unwrap();
        let (ca, cert) = (ca.to_str().unwrap(), cert.to_str().unwrap());
        let verify = integration::openssl::run(None, &["verify", "-CAfile", ca, cert]);
        integration::openssl::ok(&verify, "openssl verify");
    }
}

/// Refusals: a namespace nobody registered, rkt's token mode, and a call
/// without the security header (a raw HTTP/2 request: every SPIFFE client
/// sends it).
#[test]
fn callers_the_agent_cannot_attest_are_refused() {
    if !require_root("callers_the_agent_cannot_attest_are_refused") {
        return;
    }
    let (agent, _pod) = start("token+netns", &[]);
    let stranger = PodNet::new();
    let refused = in_pod(&stranger, &agent, |endpoint| async move {
        let client = WorkloadApiClient::connect_to(&endpoint)
            .await
            .expect("connect");
        match client.fetch_x509_svid().await {
            Ok(_) => panic!("an SVID for a caller it cannot attest"),
            Err(e) => e,
        }
    });
    assert!(permission_denied(&refused), "{refused:?}");
    let to = SocketAddr::new(IpAddr::V4(stranger.host_v4()), agent.workload_port);
    let status = netns::run_in(&stranger.netns(), move || grpc_status_without_header(to)).unwrap();
    assert_eq!(status.as_deref(), Some("3"), "InvalidArgument");
    drop(agent);
    let (agent, pod) = start("token", &[]);
    let refused = in_pod(&pod, &agent, |endpoint| async move {
        let client = WorkloadApiClient::connect_to(&endpoint)
            .await
            .expect("connect");
        match client.fetch_x509_svid().await {
            Ok(_) => panic!("an SVID for a caller it cannot attest"),
            Err(e) => e,
        }
    });
    assert!(permission_denied(&refused), "{refused:?}");
}

/// `FetchJWTBundles` as a bare HTTP/2 request without
/// `workload.spiffe.io`: the `grpc-status` the agent answers with.
fn grpc_status_without_header(to: SocketAddr) -> Option<String> {
    grpc_status_of(to, bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))
}

/// The `grpc-status` of `FetchJWTBundles` with `body` (gRPC framing
/// included) and no security header.
fn grpc_status_of(to: SocketAddr, body: bytes::Bytes) -> Option<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let stream = tokio::net::TcpStream::connect(to).await.ok()?;
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .ok()?;
            tokio::spawn(conn);
            let req =
                hyper::Request::post(format!("http://{to}/SpiffeWorkloadAPI/FetchJWTBundles"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(http_body_util::Full::new(body))
                    .ok()?;
            let response = sender.send_request(req).await.ok()?;
            if let Some(s) = response.headers().get("grpc-status") {
                return s.to_str().ok().map(str::to_owned);
            }
            use http_body_util::BodyExt;
            let trailers = response
                .into_body()
                .collect()
                .await
                .ok()?
                .trailers()?
                .clone();
            trailers
                .get("grpc-status")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
}

/// An SVID stream: a new SVID arrives at half its life (here 4 s), and the
/// stream ends with `PermissionDenied` once the pod is unregistered.
#[test]
fn the_svid_stream_rotates_and_ends_with_its_pod() {
    if !require_root("the_svid_stream_rotates_and_ends_with_its_pod") {
        return;
    }
    let (agent, pod) = start("token+netns", &["--x509-ttl", "4s"]);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (gone_tx, gone_rx) = std::sync::mpsc::channel::<()>();
    let client = spawn_in_pod(&pod, &agent, move |endpoint| async move {
        let client = WorkloadApiClient::connect_to(&endpoint)
            .await
            .expect("connect");
        let mut stream = Box::pin(client.stream_x509_svids().await.expect("a stream"));
        let mut leaves = Vec::new();
        for _ in 0..2 {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an SVID within 10 s")
                .expect("the stream goes on")
                .expect("an SVID");
            leaves.push(next.leaf().as_bytes().to_vec());
        }
        ready_tx.send(()).unwrap();
        gone_rx.recv().unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Some(e.to_string()),
                    None => return None,
                }
            }
        })
        .await
        .expect("the stream ends within 10 s");
        (leaves, end)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("two SVIDs on the stream");
    let r = agent.unix(&Request::new("DELETE", &format!("/pods/{U_A}"), None, &[]));
    assert_eq!(r.status, 200, "{}", r.text());
    gone_tx.send(()).unwrap();
    let (serials, end) = client.join().expect("the client thread");
    assert_ne!(serials[0], serials[1], "a new SVID at half-life");
    let end = end.unwrap_or_default().to_lowercase();
    assert!(end.contains("permission") || end.is_empty(), "{end}");
}

/// `keys rotate --kind x509` while a bundle stream is open: the stream
/// pushes the new bundle at once, with the old CA still in it (SVIDs it
/// signed are still valid).
#[test]
fn a_ca_rotation_reaches_the_bundle_stream() {
    if !require_root("a_ca_rotation_reaches_the_bundle_stream") {
        return;
    }
    let (agent, pod) = start("token+netns", &[]);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (rotated_tx, rotated_rx) = std::sync::mpsc::channel::<()>();
    let client = spawn_in_pod(&pod, &agent, move |endpoint| async move {
        let client = WorkloadApiClient::connect_to(&endpoint)
            .await
            .expect("connect");
        let mut stream = Box::pin(client.stream_x509_bundles().await.expect("a stream"));
        let td = TrustDomain::new(TD).unwrap();
        let mut counts = Vec::new();
        for round in 0..2 {
            if round == 1 {
                ready_tx.send(()).unwrap();
                rotated_rx.recv().unwrap();
            }
            let set = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("a bundle within 10 s")
                .expect("the stream goes on")
                .expect("a bundle set");
            counts.push(set.get(&td).expect("our bundle").authorities().len());
        }
        (counts[0], counts[1])
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the first bundle");
    let r = agent.unix(&Request::new("POST", "/keys/rotate?kind=x509", None, &[]));
    assert_eq!(r.status, 200, "{}", r.text());
    rotated_tx.send(()).unwrap();
    let (before, after) = client.join().expect("the client thread");
    assert_eq!((before, after), (1, 2), "the old CA and the new");
}

/// The Workload API on its Unix socket: a process inside the pod's
/// namespace (rust-spiffe's client, run with `ip netns exec`) gets its
/// SVIDs, attested by its pidfd's namespace; a host process and a process
/// in a namespace nobody registered get `PermissionDenied`.
#[test]
fn the_unix_socket_attests_the_calling_process() {
    if !require_root("the_unix_socket_attests_the_calling_process") {
        return;
    }
    let (agent, pod) = start("token+netns", &[]);
    let stranger = PodNet::new();
    let endpoint = format!("unix://{}", agent.workload_socket().display());
    let mode = std::fs::metadata(agent.workload_socket())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("the socket");
    assert_eq!(mode, 0o666);
    let client = |netns: Option<&str>| {
        let mut cmd = match netns {
            Some(name) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", name, env!("CARGO_BIN_EXE_spiffe-client")]);
                c
            }
            None => std::process::Command::new(env!("CARGO_BIN_EXE_spiffe-client")),
        };
        let out = cmd
            .env("SPIFFE_ENDPOINT_SOCKET", &endpoint)
            .output()
            .expect("run spiffe-client");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, ids, err) = client(Some(&pod.name));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        ids.lines().collect::<Vec<_>>(),
        vec![id(None), id(Some("web")), id(Some("log-shipper"))]
    );
    for (who, netns) in [
        ("the host", None),
        ("a stranger", Some(stranger.name.as_str())),
    ] {
        let (code, _, err) = client(netns);
        assert_eq!(code, Some(1), "{who}: {err}");
        assert!(err.to_lowercase().contains("permission"), "{who}: {err}");
    }
}

/// Workload API calls are charged to the pod's rate, an SVID per identity
/// (the pod's and its two apps'): with a burst of 5, one FetchX509SVID
/// (3) passes and the next is `ResourceExhausted`; the other pod is not
/// affected.
#[test]
fn svid_calls_are_charged_to_the_pods_rate() {
    if !require_root("svid_calls_are_charged_to_the_pods_rate") {
        return;
    }
    let (agent, pod) = start("token+netns", &["--rate-limit", "1", "--rate-burst", "5"]);
    let (first, second) = in_pod(&pod, &agent, |endpoint| async move {
        let client = WorkloadApiClient::connect_to(&endpoint)
            .await
            .expect("connect");
        let first = client.fetch_all_x509_svids().await.map(|s| s.len());
        let second = client.fetch_all_x509_svids().await.map(|s| s.len());
        (
            first.map_err(|e| e.to_string()),
            second.map_err(|e| e.to_string()),
        )
    });
    assert_eq!(first, Ok(3));
    let second = second.expect_err("a second call within the burst");
    assert!(second.to_lowercase().contains("rate limit"), "{second}");
    assert!(agent.metric("rkt_mds_rate_limited_total{reason=\"pod\"}") >= 1);
}

/// What an unattested client can make the agent hold is bounded before
/// any call is attested: a 1 MiB message is refused (not read into
/// memory), a connection that never speaks is closed, and Workload API
/// connections count in the agent's connection cap.
#[test]
fn unattested_clients_hold_little() {
    if !require_root("unattested_clients_hold_little") {
        return;
    }
    let (agent, _pod) = start("token+netns", &["--max-connections", "4"]);
    let to = SocketAddr::new(
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        agent.workload_port,
    );
    let mut big = vec![0u8, 0, 0x10, 0, 0];
    big.resize(5 + (1 << 20), b'x');
    let status = grpc_status_of(to, bytes::Bytes::from(big));
    assert!(
        matches!(status.as_deref(), Some("8") | Some("11")),
        "a 1 MiB message: {status:?}"
    );
    // Four connections that never speak fill the cap (one per address:
    // each its own share); the fifth is closed at once.
    let silent: Vec<std::net::TcpStream> = (2..6u8)
        .map(|n| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::from(([127, 0, 0, n], 0)).into())
                .unwrap();
            s.connect(&to.into()).unwrap();
            s.into()
        })
        .collect();
    integration::wait_for("the cap to be full", Duration::from_secs(5), || {
        let mut s = std::net::TcpStream::connect(to).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut buf = [0u8; 1];
        matches!(std::io::Read::read(&mut s, &mut buf), Ok(0) | Err(_)).then_some(())
    });
    assert!(agent.metric("rkt_mds_connections_refused_total{reason=\"cap\"}") >= 1);
    // Silent ones are closed by the agent (within its 10 s for a first
    // call).
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 64];
        let closed = loop {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // the server's HTTP/2 preface
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "a silent connection was kept");
    }
}
