//! Pods as network namespaces: a namespace joined to the host by a veth
//! pair, with an IPv4 /30 from 198.18.0.0/15 and an IPv6 /64 from a
//! per-process random ULA; or, on a bridge, a port of it with an
//! address in each of the bridge's subnets. Everything is removed on drop,
//! panics included.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::{AsFd, AsRawFd},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use netns::NetnsFile;
use rtnetlink::packet_route::route::RouteMessage;
use socket2::{Domain, Protocol, Socket, Type};

pub use crate::setup::exclusive_namespace_creation;
use crate::{
    netlink, plumbing,
    setup::{shared_creation, step},
    shield::{self, Shield},
    space::{assert_test_range, host_addresses, in_bridge_space, ula_prefix},
};

/// The pod's end of its veth pair.
const POD_IF: &str = "eth0";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Which /30 and /64 a pod uses; two pods with the same `Addressing`
/// hold the same addresses (IP reuse, conflicts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addressing {
    index: u32,
}

impl Addressing {
    /// A fresh one: unique in this process, and skipping /30s whose host
    /// side is already on this host (another test process, a leftover)
    /// and the /30s of the space bridges use.
    pub fn fresh() -> Self {
        let in_use = host_addresses();
        // As many tries as there are /30s.
        for _ in 0..32768 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let pid = std::process::id();
            let a = Self {
                index: ((pid % 509) * 64 + n) % 32768,
            };
            if !in_use.contains(&a.v4(1)) && !in_bridge_space(a.v4(0)) {
                return a;
            }
        }
        panic!("every /30 of 198.18.0.0/15 is in use on this host");
    }

    /// 198.18.0.0/15 split into /30s: .1 is the host side, .2 the pod.
    fn v4(&self, host: u8) -> Ipv4Addr {
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + self.index * 4;
        Ipv4Addr::from(base + host as u32)
    }

    fn v6(&self, host: u16) -> Ipv6Addr {
        let p = ula_prefix();
        Ipv6Addr::new(p[0], p[1], p[2], self.index as u16, 0, 0, 0, host)
    }
}

/// A pod's network: namespace + veth pair + addresses.
pub struct PodNet {
    pub name: String,
    pub host_if: String,
    /// The /30 and /64 of a routed pod. A bridged pod's addresses are the
    /// bridge's (see [`PodNet::on_bridge`]): this one is unused.
    pub addressing: Addressing,
    alive: bool,
    bridged: Option<OnBridge>,
    /// Dropped after the pod is removed (fields drop after `Drop::drop`).
    _shield: Arc<Shield>,
}

/// Where a bridged pod goes: the bridge's name, the pod's addresses,
/// and the bridge's (its gateways).
pub(crate) struct BridgePort {
    pub bridge: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub gateway_v4: Ipv4Addr,
    pub gateway_v6: Ipv6Addr,
    pub v4_prefix_len: u8,
    pub v6_prefix_len: u8,
}

/// A bridged pod's addresses and its gateways (the bridge's addresses).
#[derive(Clone, Copy, Debug)]
struct OnBridge {
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    gateway_v4: Ipv4Addr,
    gateway_v6: Ipv6Addr,
}

impl PodNet {
    pub fn new() -> Self {
        Self::with_addressing(Addressing::fresh())
    }

    pub fn with_addressing(addressing: Addressing) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::named(&format!("mds-{}-{n}", std::process::id()), addressing)
    }

    /// A pod whose namespace is called `name` (a name a dead pod used, for
    /// instance).
    pub fn named(name: &str, addressing: Addressing) -> Self {
        let _shared = shared_creation();
        ip(&["netns", "add", name]);
        Self::plumb(name, addressing)
    }

    /// Joins the existing namespace `name` to the host: veth pair,
    /// addresses, links up. Call it holding [`shared_creation`] (or the
    /// exclusive lock).
    fn plumb(name: &str, addressing: Addressing) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // The guard exists before the first step: Drop removes whatever
        // exists, however far set-up got.
        let pod = Self {
            name: name.to_owned(),
            host_if: format!("vm{}x{n}", std::process::id() % 1_000_000),
            addressing,
            alive: true,
            bridged: None,
            _shield: shield::hold(),
        };
        let (ns, peer_ns) = (pod.netns(), pod.netns());
        // The host end: the pair (its pod end born in the pod), addresses.
        let host_if = pod.host_if.clone();
        let (v4, v6) = (pod.host_v4().into(), pod.host_v6().into());
        step(
            format!("joining {} to the host by {}", pod.name, pod.host_if),
            netlink::in_own(move |h| async move {
                plumbing::add_veth(&h, &host_if, POD_IF, peer_ns.as_fd().as_raw_fd()).await?;
                let index = plumbing::link_index(&h, &host_if).await?;
                plumbing::add_address(&h, index, v4, 30).await?;
                plumbing::add_address(&h, index, v6, 64).await
            }),
        );
        // The pod end, from inside the pod.
        let (v4, v6) = (pod.v4().into(), pod.v6().into());
        step(
            format!("configuring {}'s {POD_IF}", pod.name),
            netlink::in_netns(&ns, move |h| async move {
                plumbing::set_up(&h, "lo").await?;
                let index = plumbing::link_index(&h, POD_IF).await?;
                plumbing::add_address(&h, index, v4, 30).await?;
                plumbing::add_address(&h, index, v6, 64).await?;
                plumbing::set_up(&h, POD_IF).await
            }),
        );
        pod
    }

    /// The namespace file (`ip netns` bind mount).
    pub fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    pub fn netns(&self) -> NetnsFile {
        NetnsFile::open(self.netns_path()).expect("open pod netns")
    }

    /// The pod's IPv4 address.
    pub fn v4(&self) -> Ipv4Addr {
        match self.bridged {
            Some(b) => b.v4,
            None => self.addressing.v4(2),
        }
    }
    /// The host's address the pod reaches the host at: its /30's other
    /// end, or the bridge's address (its gateway).
    pub fn host_v4(&self) -> Ipv4Addr {
        match self.bridged {
            Some(b) => b.gateway_v4,
            None => self.addressing.v4(1),
        }
    }
    pub fn v6(&self) -> Ipv6Addr {
        match self.bridged {
            Some(b) => b.v6,
            None => self.addressing.v6(2),
        }
    }
    pub fn host_v6(&self) -> Ipv6Addr {
        match self.bridged {
            Some(b) => b.gateway_v6,
            None => self.addressing.v6(1),
        }
    }

    /// Whether the pod is a port of a bridge.
    pub fn is_bridged(&self) -> bool {
        self.bridged.is_some()
    }

    /// `ip -n <pod> args...`, asserting success: what a tenant does in
    /// its own namespace.
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// Adds `addr/prefix_len` to the pod's eth0 (IPv6 without duplicate
    /// address detection, usable at once).
    pub fn add_address(&self, addr: IpAddr, prefix_len: u8) {
        assert_test_range(addr, prefix_len);
        step(
            format!("adding {addr}/{prefix_len} to {}'s {POD_IF}", self.name),
            netlink::in_netns(&self.netns(), move |h| async move {
                let index = plumbing::link_index(&h, POD_IF).await?;
                plumbing::add_address(&h, index, addr, prefix_len).await
            }),
        );
    }

    /// Removes `addr/prefix_len` from the pod's eth0.
    pub fn del_address(&self, addr: IpAddr, prefix_len: u8) {
        step(
            format!("removing {addr}/{prefix_len} from {}'s {POD_IF}", self.name),
            netlink::in_netns(&self.netns(), move |h| async move {
                let index = plumbing::link_index(&h, POD_IF).await?;
                plumbing::del_address(&h, index, addr, prefix_len).await
            }),
        );
    }

    /// A TCP connection made from inside the pod (optionally from a given
    /// source address) to `dst`.
    pub fn connect(&self, src: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<TcpStream> {
        self.connect_within(src, dst, Duration::from_secs(5))
    }

    /// [`PodNet::connect`], giving up on the handshake after `limit`.
    pub fn connect_within(
        &self,
        src: Option<IpAddr>,
        dst: SocketAddr,
        limit: Duration,
    ) -> std::io::Result<TcpStream> {
        netns::run_in(&self.netns(), move || -> std::io::Result<TcpStream> {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            if let Some(src) = src {
                s.bind(&SocketAddr::new(src, 0).into())?;
            }
            s.connect_timeout(&dst.into(), limit)?;
            let s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            Ok(s)
        })
        .map_err(std::io::Error::other)?
    }

    /// A non-blocking TCP connection started from inside the pod to `dst`,
    /// its handshake left to finish (or not) in the background.
    pub fn connect_started(&self, dst: SocketAddr) -> std::io::Result<Socket> {
        self.connect_started_from(None, dst)
    }

    /// [`PodNet::connect_started`] from source address `src`.
    pub fn connect_started_from(
        &self,
        src: Option<IpAddr>,
        dst: SocketAddr,
    ) -> std::io::Result<Socket> {
        netns::run_in(&self.netns(), move || -> std::io::Result<Socket> {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            if let Some(src) = src {
                s.bind(&SocketAddr::new(src, 0).into())?;
            }
            s.set_nonblocking(true)?;
            match s.connect(&dst.into()) {
                Err(e) if e.raw_os_error() != Some(nix::errno::Errno::EINPROGRESS as i32) => Err(e),
                _ => Ok(s),
            }
        })
        .map_err(std::io::Error::other)?
    }

    /// Deletes the veth pair and the namespace now.
    pub fn teardown(mut self) {
        self.remove();
    }

    /// Deletes only the namespace's name (`ip netns del`), as a runtime
    /// does; the veth goes when the kernel frees the namespace.
    pub fn delete_netns_only(&mut self) {
        ip(&["netns", "del", &self.name]);
    }

    /// The nsfs inode of the namespace now.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.netns_path())
            .expect("stat pod netns")
            .ino()
    }

    /// Waits until the kernel has freed the namespace (its veth is gone),
    /// after [`PodNet::delete_netns_only`] and after the agent let go.
    pub fn wait_freed(&self) {
        crate::wait_for(
            &format!("the kernel to free {} (its veth vanishes)", self.name),
            Duration::from_secs(10),
            || (!self.host_link_exists()).then_some(()),
        );
    }

    /// Deletes the namespace's name (as a runtime does, without telling the
    /// agent) and waits until the kernel has freed it, which needs the
    /// agent to have let go too. Returns what a successor needs to reuse
    /// the name, the inode number and the addresses.
    pub fn delete_and_wait_freed(mut self) -> (String, u64, Addressing) {
        let inode = self.inode();
        self.delete_netns_only();
        self.wait_freed();
        self.alive = false;
        (self.name.clone(), inode, self.addressing)
    }

    /// A new pod under `name` whose namespace has the nsfs inode `inode`:
    /// the number a dead namespace had.
    ///
    /// Every kind of namespace, and every `/proc/net` entry of a network
    /// namespace, draws its inode from one allocator that hands out the
    /// lowest free number, once a release has completed (asynchronously,
    /// after the veth is gone). Lower numbers freed meanwhile (a process's
    /// mount namespace, another test's pod) would go first: UTS
    /// namespaces, which take exactly one number each, hold them until the
    /// target is the lowest free number; then the new network namespace
    /// gets it. Call this under [`exclusive_namespace_creation`], taken
    /// before the old namespace died.
    pub fn recycling(name: &str, inode: u64, addressing: Addressing) -> Self {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut holders = Vec::new();
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the kernel never recycled inode {inode} for {name}"
            );
            let probe = InodeHolder::new();
            if probe.inode < inode {
                holders.push(probe);
                continue;
            }
            let lowest_free = probe.inode == inode;
            // Released at once: a UTS namespace is freed synchronously.
            drop(probe);
            if !lowest_free {
                // The number is not free yet.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            ip(&["netns", "add", name]);
            if netns_inode(name) == inode {
                break;
            }
            quiet(&["netns", "del", name]);
        }
        drop(holders);
        Self::plumb(name, addressing)
    }

    /// A process inside the pod's namespace (for `pid=` registrations);
    /// killed on drop.
    pub fn spawn_process(&self) -> PodProcess {
        // `ip netns exec` makes a mount namespace: an inode number too.
        let _shared = shared_creation();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a process in the pod");
        let process = PodProcess { child };
        // `ip netns exec` enters the namespace and then execs sleep: wait
        // until the pid is in it.
        let want = self.inode();
        crate::wait_for(
            "the process to enter the pod",
            Duration::from_secs(5),
            || {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(format!("/proc/{}/ns/net", process.pid()))
                    .ok()
                    .filter(|m| m.ino() == want)
                    .map(|_| ())
            },
        );
        process
    }

    /// Whether the host end of the veth still exists.
    pub fn host_link_exists(&self) -> bool {
        let name = self.host_if.clone();
        match netlink::in_own(move |h| async move { plumbing::link_index(&h, &name).await }) {
            Ok(_) => true,
            Err(e) if e.is_no_link() => false,
            Err(e) => panic!("looking up host link {}: {e}", self.host_if),
        }
    }

    /// Never panics: it runs in Drop, panics included.
    fn remove(&mut self) {
        if !self.alive {
            return;
        }
        self.alive = false;
        let host_if = self.host_if.clone();
        // Gone already if the kernel freed the namespace: nothing to do.
        let _ = netlink::in_own(move |h| async move { plumbing::del_link(&h, &host_if).await });
        quiet(&["netns", "del", &self.name]);
    }
}

impl Default for PodNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The nsfs inode of `ip netns` namespace `name`.
fn netns_inode(name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/var/run/netns/{name}"))
        .expect("stat netns")
        .ino()
}

/// A UTS namespace kept alive by a bind mount: it holds exactly one
/// namespace inode number until dropped.
struct InodeHolder {
    file: std::path::PathBuf,
    inode: u64,
}

impl InodeHolder {
    fn new() -> Self {
        use std::os::unix::fs::MetadataExt;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let file = std::env::temp_dir().join(format!("mds-inode-{}-{n}", std::process::id()));
        std::fs::File::create(&file).expect("create holder file");
        let out = Command::new("unshare")
            .arg(format!("--uts={}", file.display()))
            .arg("true")
            .output()
            .expect("run unshare");
        assert!(
            out.status.success(),
            "unshare --uts: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let inode = std::fs::metadata(&file).expect("stat holder").ino();
        Self { file, inode }
    }
}

impl Drop for InodeHolder {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.file).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Runs `ip ARGS`, asserting that it succeeds.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl PodNet {
    /// An IPv4 address of the test range that no pod of this process uses.
    pub fn new_addressing_v4() -> Ipv4Addr {
        Addressing::fresh().v4(2)
    }

    /// An IPv6 address of this process's range that no pod uses.
    pub fn new_addressing_v6() -> Ipv6Addr {
        Addressing::fresh().v6(2)
    }
}

/// A host route, removed on drop.
pub struct HostRoute {
    route: RouteMessage,
}

impl HostRoute {
    /// `ip route add DST dev DEV`; `dst` is `ADDR/PREFIX` or a bare
    /// address, inside the test ranges.
    pub fn add(dst: &str, dev: &str) -> Self {
        let (addr, prefix_len) = parse_prefix(dst)
            .unwrap_or_else(|| panic!("HostRoute::add: {dst:?} is not ADDR[/PREFIX]"));
        assert_test_range(addr, prefix_len);
        let name = dev.to_owned();
        let route = step(
            format!("adding host route {dst} dev {dev}"),
            netlink::in_own(move |h| async move {
                let index = plumbing::link_index(&h, &name).await?;
                let route = plumbing::device_route(addr, prefix_len, index)?;
                plumbing::add_route(&h, route.clone()).await?;
                Ok(route)
            }),
        );
        Self { route }
    }
}

impl Drop for HostRoute {
    fn drop(&mut self) {
        // Gone already if its device went first.
        let route = self.route.clone();
        let _ = netlink::in_own(move |h| async move { plumbing::del_route(&h, route).await });
    }
}

/// `ADDR/PREFIX` or `ADDR` (a host route) into its parts.
fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((addr, len))
}

/// A process running inside a pod's namespace, killed on drop.
pub struct PodProcess {
    child: std::process::Child,
}

impl PodProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process now and reaps it.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PodNet {
    /// A namespace whose veth's host end is a port of the bridge `port`
    /// describes (see `Bridge`'s `PodNet::on_bridge`).
    pub(crate) fn bridged_port(port: BridgePort) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("mds-{}-{n}", std::process::id());
        let addressing = Addressing::fresh();
        // Until the veth exists (see `setup::CREATION`).
        let _shared = shared_creation();
        ip(&["netns", "add", &name]);
        let BridgePort {
            bridge,
            v4,
            v6,
            gateway_v4,
            gateway_v6,
            v4_prefix_len: len4,
            v6_prefix_len: len6,
        } = port;
        // The guard exists before the first step: Drop removes whatever
        // exists, however far set-up got.
        let pod = Self {
            name,
            host_if: format!("vm{}x{n}", std::process::id() % 1_000_000),
            addressing,
            alive: true,
            _shield: shield::hold(),
            bridged: Some(OnBridge {
                v4,
                v6,
                gateway_v4,
                gateway_v6,
            }),
        };
        let peer_ns = pod.netns();
        let host_if = pod.host_if.clone();
        step(
            format!("joining {} to bridge {bridge} by {}", pod.name, pod.host_if),
            netlink::in_own(move |h| async move {
                plumbing::add_veth(&h, &host_if, POD_IF, peer_ns.as_fd().as_raw_fd()).await?;
                let bridge = plumbing::link_index(&h, &bridge).await?;
                plumbing::set_controller(&h, &host_if, bridge).await
            }),
        );
        let (gw4, gw6) = (gateway_v4.into(), gateway_v6.into());
        step(
            format!("configuring {}'s {POD_IF}", pod.name),
            netlink::in_netns(&pod.netns(), move |h| async move {
                plumbing::set_up(&h, "lo").await?;
                let index = plumbing::link_index(&h, POD_IF).await?;
                plumbing::add_address(&h, index, v4.into(), len4).await?;
                plumbing::add_address(&h, index, v6.into(), len6).await?;
                plumbing::set_up(&h, POD_IF).await?;
                plumbing::add_default_route(&h, gw4).await?;
                plumbing::add_default_route(&h, gw6).await
            }),
        );
        pod
    }

    /// The MAC address of the pod's eth0 now.
    pub fn mac(&self) -> [u8; 6] {
        step(
            format!("reading {}'s {POD_IF} MAC address", self.name),
            netlink::in_netns(&self.netns(), |h| async move {
                plumbing::link_mac(&h, POD_IF).await
            }),
        )
    }

    /// Gives the pod's eth0 the MAC address `mac` (what a tenant may do in
    /// its own namespace: take another pod's MAC, say).
    pub fn set_mac(&self, mac: [u8; 6]) {
        step(
            format!("setting {}'s {POD_IF} MAC address", self.name),
            netlink::in_netns(&self.netns(), move |h| async move {
                plumbing::set_mac(&h, POD_IF, mac).await
            }),
        );
    }

    /// Empties the pod's own neighbour cache on eth0 (IPv4 and IPv6): its
    /// next packet to the host asks for the host's MAC again, from the
    /// source address it sends from, which on a bridge updates the host's
    /// entry for that address. A tenant's action.
    pub fn flush_neighbours(&self) {
        step(
            format!("flushing {}'s neighbours", self.name),
            netlink::in_netns(&self.netns(), |h| async move {
                let index = plumbing::link_index(&h, POD_IF).await?;
                plumbing::flush_neighbours(&h, index).await
            }),
        );
    }

    /// The interface index of the veth's host end (a bridged pod: its
    /// bridge port).
    pub fn host_index(&self) -> u32 {
        let name = self.host_if.clone();
        step(
            format!("looking up host link {}", self.host_if),
            netlink::in_own(move |h| async move { plumbing::link_index(&h, &name).await }),
        )
    }
}
