//! The watcher against real namespaces (needs root: `ip netns add`).

use std::{
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use netns::{NetnsRef, WatchConfig, WatchSet};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bare namespace with a veth pair inside it, removed on drop.
struct TestNs {
    name: String,
}

impl TestNs {
    fn new() -> Self {
        let name = format!(
            "nstest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
        ns.exec(&["link", "set", "d1", "up"]);
        ns.exec(&["link", "set", "d0", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    fn exec(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full);
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

fn have_root() -> bool {
    if nix_is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but not root: namespace tests must run in CI"
    );
    // Straight to the stderr handle: libtest captures `eprintln!`.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        b"SKIPPED (needs root): netns watch tests\n",
    );
    false
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

async fn poll_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn inventory_follows_events_and_lets_go_of_deleted_namespaces() {
    if !have_root() {
        return;
    }
    let ns = TestNs::new();
    ns.exec(&["addr", "add", "198.18.200.1/24", "dev", "d0"]);
    let set = WatchSet::new(WatchConfig {
        liveness_interval: Duration::from_millis(100),
        min_refresh_interval: Duration::ZERO,
        ..WatchConfig::default()
    });
    let r = NetnsRef::open(ns.path()).unwrap();
    set.acquire(&r).await.unwrap();

    let a: IpAddr = "198.18.200.1".parse().unwrap();
    let b: IpAddr = "198.18.201.2".parse().unwrap();
    let v6: IpAddr = "fd42:1:2:3::9".parse().unwrap();
    // The first dump is complete when acquire returns.
    assert!(set.index().holds(&a, r.id()));
    let dumps = set.stats().dumps;

    // Another subnet: deleting a primary address also deletes its
    // secondaries (the kernel reports each with RTM_DELADDR).
    ns.exec(&["addr", "add", "198.18.201.2/24", "dev", "d0"]);
    ns.exec(&["addr", "add", "fd42:1:2:3::9/64", "dev", "d0", "nodad"]);
    poll_until("added addresses", || {
        set.index().holds(&b, r.id()) && set.index().holds(&v6, r.id())
    })
    .await;
    ns.exec(&["addr", "del", "198.18.200.1/24", "dev", "d0"]);
    poll_until("removed address", || !set.index().holds(&a, r.id())).await;
    assert_eq!(set.stats().dumps, dumps, "events alone, no re-dump");

    // Without a rate limit every refresh re-dumps...
    assert!(set.refresh(r.id()).await);
    assert!(set.refresh(r.id()).await);
    assert_eq!(set.stats().redumps, 2);
    // ...with one, a refresh right after a dump is answered from it.
    let limited = WatchSet::new(WatchConfig {
        min_refresh_interval: Duration::from_secs(3600),
        ..WatchConfig::default()
    });
    limited.acquire(&r).await.unwrap();
    assert!(limited.refresh(r.id()).await);
    assert_eq!(limited.stats().redumps, 0);
    limited.release(r.id());

    let status = set.status(r.id()).unwrap();
    assert!(status.live);
    assert!(status.addresses.contains(&b));

    // Delete the namespace without telling the set: it notices and lets go.
    ip(&["netns", "del", &ns.name]);
    poll_until("namespace gone", || {
        set.status(r.id()).is_some_and(|s| !s.live)
    })
    .await;
    assert!(set.index().holders(&b).is_empty());
    set.release(r.id());
    assert_eq!(set.stats().watched, 0);
}

#[tokio::test]
async fn a_path_that_is_not_a_namespace_is_refused() {
    if !have_root() {
        return;
    }
    let set = WatchSet::new(WatchConfig::default());
    let r = NetnsRef::open("/etc/hostname").unwrap();
    let err = set.acquire(&r).await.unwrap_err();
    assert!(err.to_string().contains("cannot enter"), "{err}");
    assert_eq!(set.stats().watched, 0);
}
