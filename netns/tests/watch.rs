//! The watcher against real namespaces (needs root: `ip netns add`).

use std::{
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use netns::{NetnsFile, WatchConfig, WatchSet};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace with a veth pair whose other end is on the host (its
/// disappearance tells that the kernel is freeing the namespace), removed
/// on drop.
struct TestNs {
    name: String,
    host_if: String,
}

impl TestNs {
    fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("nstest-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Self {
            name,
            host_if: format!("nt{}x{n}", std::process::id() % 1_000_000),
        };
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "d0",
            "netns",
            &ns.name,
        ]);
        ns.exec(&["link", "set", "d0", "up"]);
        ns
    }

    fn host_link_exists(&self) -> bool {
        std::path::Path::new("/sys/class/net")
            .join(&self.host_if)
            .exists()
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
        for args in [
            vec!["link", "del", &self.host_if],
            vec!["netns", "del", &self.name],
        ] {
            let _ = Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        }
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
    let file = NetnsFile::open(ns.path()).unwrap();
    let lease = set.acquire(&file).await.unwrap();
    drop(file);
    let c = lease.cookie();

    let a: IpAddr = "198.18.200.1".parse().unwrap();
    let b: IpAddr = "198.18.201.2".parse().unwrap();
    let v6: IpAddr = "fd42:1:2:3::9".parse().unwrap();
    // The first dump is complete when acquire returns.
    assert!(set.index().holds(&a, c));
    let dumps = set.stats().dumps;

    // Another subnet: deleting a primary address also deletes its
    // secondaries (the kernel reports each with RTM_DELADDR).
    ns.exec(&["addr", "add", "198.18.201.2/24", "dev", "d0"]);
    ns.exec(&["addr", "add", "fd42:1:2:3::9/64", "dev", "d0", "nodad"]);
    poll_until("added addresses", || {
        set.index().holds(&b, c) && set.index().holds(&v6, c)
    })
    .await;
    ns.exec(&["addr", "del", "198.18.200.1/24", "dev", "d0"]);
    poll_until("removed address", || !set.index().holds(&a, c)).await;
    assert_eq!(set.stats().dumps, dumps, "events alone, no re-dump");

    // Without a rate limit every refresh re-dumps...
    assert!(lease.refresh().await);
    assert!(lease.refresh().await);
    assert_eq!(set.stats().redumps, 2);
    // ...with one, a refresh right after a dump is answered from it.
    let limited = WatchSet::new(WatchConfig {
        min_refresh_interval: Duration::from_secs(3600),
        ..WatchConfig::default()
    });
    let other = limited
        .acquire(&NetnsFile::open(ns.path()).unwrap())
        .await
        .unwrap();
    assert_eq!(other.cookie(), c, "one instance, one cookie");
    assert!(other.refresh().await);
    assert_eq!(limited.stats().redumps, 0);
    drop(other);
    assert_eq!(limited.stats().watched, 0);

    // A second lease by the same path shares the watcher.
    let second = set
        .acquire(&NetnsFile::open(ns.path()).unwrap())
        .await
        .unwrap();
    assert_eq!(set.stats().watched, 1);
    let status = second.status();
    assert!(status.live);
    assert!(status.addresses.contains(&b));

    // Delete the namespace without telling the set: it notices, lets go,
    // and both leases are over.
    ip(&["netns", "del", &ns.name]);
    poll_until("namespace gone", || !lease.is_live()).await;
    assert!(!second.is_live());
    assert!(second.status().reason.unwrap().contains("no longer names"));
    assert!(set.index().holders(&b).is_empty());
    poll_until("the kernel to free the namespace", || {
        !ns.host_link_exists()
    })
    .await;
    drop((lease, second));
    assert_eq!(set.stats().watched, 0);
}

#[test]
fn a_path_that_is_not_a_namespace_is_refused() {
    let err = NetnsFile::open("/etc/hostname").unwrap_err();
    assert!(err.to_string().contains("not a network namespace"), "{err}");
}
