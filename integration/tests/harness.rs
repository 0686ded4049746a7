//! The harness keeps its traffic on the machine: a reply to a test
//! address that no pod holds by the host's route (a tenant's claim of an
//! unassigned address) is dropped, never sent by the host's default route.
//! Needs root; runs in CI. The only test of this binary: it also checks
//! that the routes go with the last pod.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    process::Command,
    time::Duration,
};

use integration::{privilege::require_root, PodNet};

/// The route the host would use to reach `addr`, as `ip route get` says.
fn route_to(addr: IpAddr) -> String {
    let out = Command::new("ip")
        .args(["route", "get", &addr.to_string()])
        .output()
        .expect("run ip route get");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn replies_to_unrouted_test_addresses_stay_on_the_host() {
    if !require_root("replies_to_unrouted_test_addresses_stay_on_the_host") {
        return;
    }
    let pod = PodNet::new();
    // Addresses of the test ranges that no pod holds: a tenant claims them.
    let claimed = [
        IpAddr::V4(PodNet::new_addressing_v4()),
        IpAddr::V6(PodNet::new_addressing_v6()),
    ];
    for addr in claimed {
        let route = route_to(addr);
        assert!(
            route.contains("blackhole") || route.contains("Invalid argument"),
            "{addr}: {route}"
        );
        let len = if addr.is_ipv4() { 32 } else { 128 };
        pod.add_address(addr, len);
        let host = if addr.is_ipv4() {
            IpAddr::V4(pod.host_v4())
        } else {
            IpAddr::V6(pod.host_v6())
        };
        let listener = TcpListener::bind(SocketAddr::new(host, 0)).expect("listen on the host");
        // The SYN arrives; the SYN-ACK has nowhere to go.
        let got = pod.connect_within(
            Some(addr),
            listener.local_addr().unwrap(),
            Duration::from_millis(300),
        );
        assert!(
            got.is_err(),
            "{addr}: a claimed address completed a handshake"
        );
        pod.del_address(addr, len);
    }
    // The routes go with the last pod of the process.
    drop(pod);
    for addr in claimed {
        let route = route_to(addr);
        assert!(!route.contains("blackhole"), "{addr}: {route}");
    }
}
