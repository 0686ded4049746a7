//! The churn's world: the agent, the namespaces alive now (in slots), the
//! pool addresses and who holds them, every registration ever made, and
//! the operations on them. Each operation updates the model as it acts.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    oracle::{self, Actor, Binding, Case, Judgement, Reg},
    Config, Report, Rng,
};
use crate::{
    agent::{Agent, AgentOptions},
    fixtures,
    http::{Conn, Request},
    pod::{exclusive_namespace_creation, HostRoute, PodProcess},
    Bridge, PodNet,
};

/// How long a dead registration lingers before the agent collects it.
const GC_GRACE: Duration = Duration::from_secs(3);
/// The most host-network registrations alive at once.
const MAX_HOST_PODS: usize = 3;
/// Operations kept for a failure's message.
const KEPT_OPS: usize = 40;
/// Of new namespaces, how many (percent) are bridged, and of those how
/// many the operator pins.
const BRIDGED_PERCENT: u64 = 35;
const ENFORCED_PERCENT: u64 = 80;

/// A namespace alive now.
struct Ns {
    /// The model's id of this instance (never reused).
    id: u64,
    net: PodNet,
    /// Its netns cookie, read by the test itself.
    cookie: u64,
    process: Option<PodProcess>,
    /// Addresses it holds beyond its base ones: assigned pool addresses
    /// (routed to it) and claimed ones (another pod's, a pool address
    /// routed elsewhere or nowhere, the host's).
    held: Vec<IpAddr>,
    /// A port of the churn's bridge, not a routed veth.
    bridged: Option<OnBridge>,
    changed: Instant,
}

/// A bridged namespace's place on the bridge.
#[derive(Clone, Copy)]
struct OnBridge {
    /// Its host number: its addresses are the bridge's for it.
    host: u8,
    /// Pinned by the operator at creation (permanent neighbour entries,
    /// static sticky FDB entry), as most are.
    enforced: bool,
    /// Its own MAC address.
    mac: [u8; 6],
    /// It wears another pod's MAC address now.
    spoofing: bool,
}

/// A pool address: at most one pod holds it with the host's route.
struct Pool {
    addr: IpAddr,
    owner: Option<u64>,
    route: Option<HostRoute>,
    changed: Instant,
}

pub struct World {
    cfg: Config,
    /// One P-256 CSR every actor posts for an X509-SVID.
    csr: String,
    pub(super) report: Report,
    agent: Agent,
    slots: Vec<Option<Ns>>,
    /// Deleted namespaces (their guards, dropped at the end) and the host
    /// ends of their veths, which must all vanish.
    dead: Vec<PodNet>,
    /// Bridged namespaces' bridge: its pods' host numbers are few, so a
    /// new pod often takes a dead one's addresses (whose pinned neighbour
    /// entries the operator left behind).
    bridge: Bridge,
    /// Host-side veths of deleted namespaces, with the TCP sockets each
    /// namespace still had when it was deleted (what can outlive a name).
    dead_links: Vec<(String, String)>,
    regs: Vec<Reg>,
    pool: Vec<Pool>,
    next_id: u64,
    next_pod: u64,
    last_restart: Instant,
    ops: VecDeque<String>,
    manifest: Vec<u8>,
}

fn cookie_of(net: &PodNet) -> u64 {
    netns::run_in(&net.netns(), netns::NetnsCookie::current)
        .expect("enter the pod")
        .expect("read the pod's cookie")
        .0
}

fn prefix_len(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

impl World {
    pub(super) fn new(cfg: &Config) -> Self {
        let agent = Agent::start(
            AgentOptions::identity(cfg.mode)
                .arg("--rate-limit")
                .arg("0")
                .arg("--gc-grace")
                .arg(format!("{}s", GC_GRACE.as_secs())),
        );
        let mut pool = Vec::new();
        for _ in 0..cfg.pool {
            for addr in [
                IpAddr::V4(PodNet::new_addressing_v4()),
                IpAddr::V6(PodNet::new_addressing_v6()),
            ] {
                pool.push(Pool {
                    addr,
                    owner: None,
                    route: None,
                    changed: Instant::now(),
                });
            }
        }
        Self {
            report: Report {
                seed: cfg.seed,
                mode: cfg.mode.to_owned(),
                ..Report::default()
            },
            cfg: cfg.clone(),
            agent,
            slots: (0..cfg.slots).map(|_| None).collect(),
            dead: Vec::new(),
            bridge: Bridge::new(),
            dead_links: Vec::new(),
            regs: Vec::new(),
            pool,
            next_id: 1,
            next_pod: 1,
            last_restart: Instant::now(),
            ops: VecDeque::new(),
            manifest: fixtures::read("pods/bare-pod.json"),
            csr: csr(),
        }
    }

    fn log(&mut self, op: String) {
        if self.ops.len() == KEPT_OPS {
            self.ops.pop_front();
        }
        self.ops.push_back(op);
    }

    /// One operation, chosen at random.
    pub(super) fn step(&mut self, rng: &mut Rng) {
        let op = rng.below(100);
        self.op(op, rng);
    }

    fn op(&mut self, op: usize, rng: &mut Rng) {
        match op {
            0..=39 => {
                for _ in 0..1 + rng.below(8) {
                    self.request(rng);
                }
            }
            40..=49 => self.create(rng),
            50..=61 => self.register(rng),
            62..=65 => self.unregister(rng),
            66..=72 => self.delete(rng),
            73..=74 => self.recycle(rng),
            75..=82 => self.assign(rng),
            83..=86 => self.unassign(rng),
            87..=90 => self.claim(rng),
            91..=92 => self.race(rng),
            93 => self.restart(rng),
            _ => {
                for _ in 0..1 + rng.below(4) {
                    self.request(rng);
                }
            }
        }
    }

    fn live_ids(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].is_some())
            .collect()
    }

    fn pick_ns(&self, rng: &mut Rng) -> Option<usize> {
        let live = self.live_ids();
        (!live.is_empty()).then(|| live[rng.below(live.len())])
    }

    /// A live registration bound to namespace `id`, if any.
    fn live_reg_of(&self, id: u64) -> Option<usize> {
        self.regs.iter().position(|r| {
            r.registered && r.dead_since.is_none() && r.binding == Binding::Instance(id)
        })
    }

    fn create(&mut self, rng: &mut Rng) {
        let Some(slot) = self.slots.iter().position(Option::is_none) else {
            return;
        };
        if !rng.chance(BRIDGED_PERCENT) {
            self.install(slot, PodNet::new(), None);
            return;
        }
        // A host number no live pod has: two more than there are slots,
        // so addresses are reused often.
        let taken: Vec<u8> = self
            .live()
            .filter_map(|ns| ns.bridged.map(|b| b.host))
            .collect();
        let free: Vec<u8> = (2..4 + self.slots.len() as u8)
            .filter(|h| !taken.contains(h))
            .collect();
        let host = free[rng.below(free.len())];
        let (v4, v6) = self.bridge.pod_addresses(host);
        let net = PodNet::on_bridge_at(&self.bridge, v4, v6);
        let enforced = rng.chance(ENFORCED_PERCENT);
        if enforced {
            self.bridge.enforce(&net);
        }
        let mac = net.mac();
        self.report.bridged += 1;
        let on_bridge = OnBridge {
            host,
            enforced,
            mac,
            spoofing: false,
        };
        self.install(slot, net, Some(on_bridge));
    }

    fn install(&mut self, slot: usize, net: PodNet, bridged: Option<OnBridge>) {
        let id = self.next_id;
        self.next_id += 1;
        let cookie = cookie_of(&net);
        let topology = match bridged {
            None => "routed".to_owned(),
            Some(b) => format!(
                "bridged as .{}, {}",
                b.host,
                if b.enforced { "pinned" } else { "not pinned" }
            ),
        };
        self.log(format!(
            "create ns#{id} {} (cookie {cookie}, {topology}) in slot {slot}",
            net.name
        ));
        self.slots[slot] = Some(Ns {
            id,
            net,
            cookie,
            process: None,
            held: Vec::new(),
            bridged,
            changed: Instant::now(),
        });
    }

    fn live(&self) -> impl Iterator<Item = &Ns> {
        self.slots.iter().flatten()
    }

    fn fresh_pod(&mut self) -> (String, String) {
        let n = self.next_pod;
        self.next_pod += 1;
        (
            format!("{:08x}-a507-4694-aabf-{n:012x}", self.cfg.seed as u32 | 1),
            format!("churn{:011x}{n:016x}", self.cfg.seed & 0xfff_ffff_ffff),
        )
    }

    fn register(&mut self, rng: &mut Rng) {
        let host_pods = self
            .regs
            .iter()
            .filter(|r| r.registered && r.binding == Binding::Host)
            .count();
        let form = rng.below(100);
        if form < 15 {
            if host_pods >= MAX_HOST_PODS {
                return;
            }
            let (uuid, token) = self.fresh_pod();
            self.log(format!("register {uuid} host-network"));
            let r = self.agent.register(&uuid, &token, &self.manifest, "");
            assert_eq!(r.status, 200, "host-network registration: {}", r.text());
            self.add_reg(uuid, token, Binding::Host);
            return;
        }
        let Some(slot) = self.pick_ns(rng) else {
            return;
        };
        let (id, cookie, path) = {
            let ns = self.slots[slot].as_ref().expect("live");
            (ns.id, ns.cookie, ns.net.netns_path())
        };
        if self.live_reg_of(id).is_some() {
            return;
        }
        let (uuid, token) = self.fresh_pod();
        let query = if form < 55 {
            format!("&netns={path}")
        } else if form < 75 {
            let ns = self.slots[slot].as_mut().expect("live");
            let pid = ns
                .process
                .get_or_insert_with(|| ns.net.spawn_process())
                .pid();
            format!("&pid={pid}")
        } else {
            String::new()
        };
        self.log(format!(
            "register {uuid} in ns#{id} ({})",
            if query.is_empty() {
                "rkt pod dir"
            } else {
                &query
            }
        ));
        let lazy = query.is_empty();
        let dir = self.agent.rkt_dir().join("pods/run").join(&uuid);
        if lazy {
            std::fs::create_dir_all(&dir).expect("rkt pod dir");
        }
        let r = self.agent.register(&uuid, &token, &self.manifest, &query);
        assert_eq!(r.status, 200, "registration {query}: {}", r.text());
        if lazy {
            // rkt writes the file after registering; the agent binds the
            // pod at its first need (a request) or maintenance pass.
            std::fs::write(dir.join("netns"), &path).expect("rkt netns file");
            let _ = self.agent.get(&format!("/{token}/acMetadata/v1/pod/uuid"));
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.state_of(&uuid).as_deref() == Some("netns-unknown") {
                if Instant::now() > deadline {
                    self.report
                        .false_refusals
                        .push(format!("{uuid}: rkt's netns file was never discovered"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.add_reg(uuid.clone(), token, Binding::Instance(id));
        // The agent bound the instance the model says, by cookie.
        let bound = self
            .agent
            .pod_entry(&uuid)
            .and_then(|e| e["netns"]["cookie"].as_u64());
        if bound != Some(cookie) {
            self.report.misattributions.push(format!(
                "{uuid} registered in ns#{id} (cookie {cookie}) is bound to cookie {bound:?}"
            ));
        }
        if let Some(ns) = self.slots[slot].as_mut() {
            ns.changed = Instant::now();
        }
    }

    fn state_of(&self, uuid: &str) -> Option<String> {
        self.agent
            .pod_entry(uuid)
            .and_then(|e| e["state"].as_str().map(str::to_owned))
    }

    fn add_reg(&mut self, uuid: String, token: String, binding: Binding) {
        self.report.registrations += 1;
        self.regs.push(Reg {
            uuid,
            token,
            binding,
            registered: true,
            dead_since: None,
            changed: Instant::now(),
        });
    }

    fn unregister(&mut self, rng: &mut Rng) {
        let registered: Vec<usize> = (0..self.regs.len())
            .filter(|i| self.regs[*i].registered)
            .collect();
        if registered.is_empty() {
            return;
        }
        let i = registered[rng.below(registered.len())];
        self.unregister_at(i);
    }

    fn unregister_at(&mut self, i: usize) {
        let uuid = self.regs[i].uuid.clone();
        self.log(format!("unregister {uuid}"));
        let r = self.agent.unregister(&uuid);
        // A dead one may have been collected already.
        let collected = self.regs[i].dead_since.is_some() && r.status == 404;
        assert!(
            r.status == 200 || collected,
            "unregister {uuid}: {} {}",
            r.status,
            r.text()
        );
        self.regs[i].registered = false;
        self.regs[i].changed = Instant::now();
    }

    /// Takes namespace `slot` out of the world, as a runtime deleting it
    /// would (its name deleted, its process killed, nothing unregistered).
    fn take_out(&mut self, slot: usize) -> Ns {
        let mut ns = self.slots[slot].take().expect("live");
        if let Some(p) = ns.process.take() {
            p.kill();
        }
        let now = Instant::now();
        for p in &mut self.pool {
            if p.owner == Some(ns.id) {
                p.owner = None;
                p.route = None;
                p.changed = now;
            }
        }
        for r in &mut self.regs {
            if r.binding == Binding::Instance(ns.id) && r.dead_since.is_none() {
                r.dead_since = Some(now);
                r.changed = now;
            }
        }
        self.report.lifecycles += 1;
        let sockets = tcp_sockets(&ns.net);
        self.dead_links.push((ns.net.host_if.clone(), sockets));
        ns.held.clear();
        ns
    }

    fn delete(&mut self, rng: &mut Rng) {
        let Some(slot) = self.pick_ns(rng) else {
            return;
        };
        let id = self.slots[slot].as_ref().expect("live").id;
        if rng.chance(50) {
            if let Some(i) = self.live_reg_of(id) {
                self.unregister_at(i);
            }
        }
        self.log(format!("delete ns#{id}"));
        let mut ns = self.take_out(slot);
        ns.net.delete_netns_only();
        self.dead.push(ns.net);
    }

    /// Deletes a namespace and makes its successor under the same name
    /// get the same inode number.
    fn recycle(&mut self, rng: &mut Rng) {
        let Some(slot) = self.pick_ns(rng) else {
            return;
        };
        let id = self.slots[slot].as_ref().expect("live").id;
        self.log(format!(
            "recycle ns#{id}: delete, wait until freed, recreate with its inode"
        ));
        let exclusive = exclusive_namespace_creation();
        let ns = self.take_out(slot);
        let (name, inode, addressing) = ns.net.delete_and_wait_freed();
        let net = PodNet::recycling(&name, inode, addressing);
        drop(exclusive);
        self.report.recycled_inodes += 1;
        self.install(slot, net, None);
    }

    fn assign(&mut self, rng: &mut Rng) {
        let free: Vec<usize> = (0..self.pool.len())
            .filter(|i| self.pool[*i].owner.is_none())
            .collect();
        let Some(slot) = self.pick_ns(rng) else {
            return;
        };
        if free.is_empty() {
            return;
        }
        let p = free[rng.below(free.len())];
        let addr = self.pool[p].addr;
        let ns = self.slots[slot].as_mut().expect("live");
        // Pool addresses are routed to veths; bridged pods have ports.
        if ns.held.contains(&addr) || ns.bridged.is_some() {
            return;
        }
        ns.net.add_address(addr, prefix_len(&addr));
        let route = HostRoute::add(&format!("{addr}/{}", prefix_len(&addr)), &ns.net.host_if);
        ns.held.push(addr);
        let now = Instant::now();
        ns.changed = now;
        let id = ns.id;
        self.pool[p] = Pool {
            addr,
            owner: Some(id),
            route: Some(route),
            changed: now,
        };
        self.log(format!("assign {addr} to ns#{id}"));
    }

    fn unassign(&mut self, rng: &mut Rng) {
        let owned: Vec<usize> = (0..self.pool.len())
            .filter(|i| self.pool[*i].owner.is_some())
            .collect();
        if owned.is_empty() {
            return;
        }
        let p = owned[rng.below(owned.len())];
        let (addr, owner) = (self.pool[p].addr, self.pool[p].owner);
        if let Some(ns) = self
            .slots
            .iter_mut()
            .flatten()
            .find(|ns| Some(ns.id) == owner)
        {
            ns.net.del_address(addr, prefix_len(&addr));
            ns.held.retain(|a| *a != addr);
            ns.changed = Instant::now();
        }
        self.pool[p].route = None;
        self.pool[p].owner = None;
        self.pool[p].changed = Instant::now();
        self.log(format!("unassign {addr} from ns#{owner:?}"));
        // Half the time it goes straight to another pod: a move.
        if rng.chance(50) {
            self.assign(rng);
        }
    }

    /// Whether the host routes (or pins) `addr` to `ns`: its base
    /// addresses and the pool addresses assigned to it.
    fn owns(&self, ns: &Ns, addr: IpAddr) -> bool {
        addr == IpAddr::V4(ns.net.v4())
            || addr == IpAddr::V6(ns.net.v6())
            || self
                .pool
                .iter()
                .any(|p| p.addr == addr && p.owner == Some(ns.id))
    }

    /// A tenant drops one of its claims, or puts on its own eth0 an
    /// address the host does not give it: a pool address (another pod's,
    /// or nobody's), another namespace's own address (a bridged tenant
    /// taking a bridged victim's may take its MAC address too), or the
    /// host's address on its link (its gateway).
    fn claim(&mut self, rng: &mut Rng) {
        let Some(slot) = self.pick_ns(rng) else {
            return;
        };
        let ns = self.slots[slot].as_ref().expect("live");
        let claims: Vec<IpAddr> = ns
            .held
            .iter()
            .copied()
            .filter(|a| !self.owns(ns, *a))
            .collect();
        if !claims.is_empty() && rng.chance(50) {
            let addr = claims[rng.below(claims.len())];
            self.drop_claim(slot, addr);
            return;
        }
        let id = ns.id;
        let others: Vec<&Ns> = self.live().filter(|o| o.id != id).collect();
        let kind = rng.below(10);
        let (addr, victim) = match kind {
            0..=4 => {
                let p = &self.pool[rng.below(self.pool.len())];
                (p.addr, p.owner.map(|o| format!("ns#{o}")))
            }
            5..=7 if !others.is_empty() => {
                let o = others[rng.below(others.len())];
                let addr = if rng.chance(50) {
                    IpAddr::V4(o.net.v4())
                } else {
                    IpAddr::V6(o.net.v6())
                };
                (addr, Some(format!("ns#{}", o.id)))
            }
            _ => {
                let addr = if rng.chance(50) {
                    IpAddr::V4(ns.net.host_v4())
                } else {
                    IpAddr::V6(ns.net.host_v6())
                };
                (addr, Some("the host".to_owned()))
            }
        };
        // The MAC too, when both are on the bridge.
        let mac = match (kind, ns.bridged) {
            (5..=7, Some(b)) if !b.spoofing && rng.chance(50) => others
                .iter()
                .find(|o| o.net.v4() == addr || o.net.v6() == addr)
                .and_then(|o| o.bridged.map(|v| v.mac)),
            _ => None,
        };
        if ns.held.contains(&addr) || self.owns(ns, addr) {
            return;
        }
        let ns = self.slots[slot].as_mut().expect("live");
        ns.net.add_address(addr, prefix_len(&addr));
        ns.held.push(addr);
        if let (Some(mac), Some(b)) = (mac, ns.bridged.as_mut()) {
            ns.net.set_mac(mac);
            b.spoofing = true;
        }
        self.report.takeovers += 1;
        self.log(format!(
            "ns#{id} claims {addr} (holder {}){}",
            victim.as_deref().unwrap_or("none"),
            if mac.is_some() {
                " and its MAC address"
            } else {
                ""
            }
        ));
    }

    /// Namespace `slot` drops its claim of `addr` (and its borrowed MAC
    /// address, if it wears one). A claim of the bridge's address answered
    /// the neighbours' queries for it: their caches are flushed, or they
    /// would send to the claimant for a while yet (what a careful tenant
    /// whose neighbour poisoned its cache would do).
    fn drop_claim(&mut self, slot: usize, addr: IpAddr) {
        let ns = self.slots[slot].as_mut().expect("live");
        ns.net.del_address(addr, prefix_len(&addr));
        ns.held.retain(|a| *a != addr);
        let id = ns.id;
        let mut restored = false;
        if let Some(b) = ns.bridged.as_mut().filter(|b| b.spoofing) {
            ns.net.set_mac(b.mac);
            b.spoofing = false;
            restored = true;
        }
        let gateway = addr == IpAddr::V4(ns.net.host_v4()) || addr == IpAddr::V6(ns.net.host_v6());
        if gateway && ns.bridged.is_some() {
            for other in self.live().filter(|o| o.bridged.is_some() && o.id != id) {
                other.net.flush_neighbours();
            }
        }
        self.log(format!(
            "ns#{id} drops its claim of {addr}{}",
            if restored {
                ", and its borrowed MAC"
            } else {
                ""
            }
        ));
    }

    /// Racing PUTs and DELETEs of one pod; the model adopts whatever the
    /// agent ends with.
    fn race(&mut self, rng: &mut Rng) {
        let Some(slot) = self.pick_ns(rng) else {
            return;
        };
        let (id, path) = {
            let ns = self.slots[slot].as_ref().expect("live");
            (ns.id, ns.net.netns_path())
        };
        if self.live_reg_of(id).is_some() {
            return;
        }
        let (uuid, token) = self.fresh_pod();
        self.log(format!("race PUT/DELETE {uuid} in ns#{id}"));
        let query = format!("&netns={path}");
        let (agent, manifest) = (&self.agent, &self.manifest);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (uuid, token, query) = (&uuid, &token, &query);
                s.spawn(move || {
                    for i in 0..6 {
                        let r = if (t + i) % 2 == 0 {
                            agent.register(uuid, token, manifest, query)
                        } else {
                            agent.unregister(uuid)
                        };
                        assert!(
                            matches!(r.status, 200 | 404),
                            "race: {} {}",
                            r.status,
                            r.text()
                        );
                    }
                });
            }
        });
        self.report.races += 1;
        if self.agent.pod_entry(&uuid).is_some() {
            self.add_reg(uuid, token, Binding::Instance(id));
        }
    }

    fn restart(&mut self, rng: &mut Rng) {
        self.sample_rss();
        let kill = rng.chance(50);
        self.log(format!(
            "restart the agent ({})",
            if kill { "SIGKILL" } else { "SIGTERM" }
        ));
        if kill {
            self.agent.kill();
        } else {
            self.agent.stop();
        }
        self.agent.restart();
        self.report.restarts += 1;
        let now = Instant::now();
        self.last_restart = now;
        // A stored pod whose instance is gone is dropped at reload.
        for r in &mut self.regs {
            if r.registered && r.dead_since.is_some() {
                r.registered = false;
                r.changed = now;
            }
        }
    }

    fn sample_rss(&mut self) {
        let hwm = self.agent.peak_rss_kib();
        self.report.peak_rss_kib = self.report.peak_rss_kib.max(hwm);
    }

    /// One request from a random actor, judged.
    fn request(&mut self, rng: &mut Rng) {
        let live = self.live_ids();
        let host = live.is_empty() || rng.chance(15);
        let actor = if host {
            Actor::Host
        } else {
            Actor::Ns(
                self.slots[live[rng.below(live.len())]]
                    .as_ref()
                    .expect("live")
                    .id,
            )
        };
        // The token: the actor's own pod's, another's, a dead one's, none.
        let own = match actor {
            Actor::Ns(id) => self.live_reg_of(id),
            Actor::Host => self
                .regs
                .iter()
                .position(|r| r.registered && r.binding == Binding::Host),
        };
        let token_choice = rng.below(4);
        let pick = |rng: &mut Rng, regs: &[Reg], f: &dyn Fn(&Reg) -> bool| {
            let found: Vec<usize> = (0..regs.len()).filter(|i| f(&regs[*i])).collect();
            (!found.is_empty()).then(|| found[rng.below(found.len())])
        };
        let reg = match token_choice {
            0 => own,
            1 => pick(rng, &self.regs, &|r| r.registered),
            2 => pick(rng, &self.regs, &|r| {
                !r.registered || r.dead_since.is_some()
            }),
            _ => None,
        };
        let token = reg.map(|i| self.regs[i].token.clone());
        // The source: a base address, or one it holds beyond them.
        let (src, dst, source_routed, changed, what) = match actor {
            Actor::Host => {
                let v6 = rng.chance(50);
                let dst: IpAddr = if v6 {
                    Ipv6Addr::LOCALHOST.into()
                } else {
                    Ipv4Addr::LOCALHOST.into()
                };
                (
                    None,
                    dst,
                    true,
                    self.last_restart,
                    format!("host via {dst}"),
                )
            }
            Actor::Ns(id) => {
                let ns = self.live().find(|ns| ns.id == id).expect("actor");
                let choice = rng.below(ns.held.len() + 2);
                let mut src: IpAddr = match choice {
                    0 => ns.net.v4().into(),
                    1 => ns.net.v6().into(),
                    k => ns.held[k - 2],
                };
                // A claimed source never completes a connection (the
                // host answers the address's holder, or nobody): try it
                // now and then.
                if !self.owns(ns, src) && !rng.chance(20) {
                    src = ns.net.v4().into();
                }
                let dst: IpAddr = if src.is_ipv4() {
                    ns.net.host_v4().into()
                } else {
                    ns.net.host_v6().into()
                };
                // The host's tables say the source is the actor's, and
                // that proves it: a routed veth, or a pinned bridge port
                // whose pod wears its own MAC address.
                let proven =
                    self.owns(ns, src) && ns.bridged.is_none_or(|b| b.enforced && !b.spoofing);
                let pool = self.pool.iter().find(|p| p.addr == src);
                let changed = pool.map_or(ns.changed, |p| p.changed.max(ns.changed));
                (
                    Some(src),
                    dst,
                    proven,
                    changed,
                    format!(
                        "ns#{id}{} from {src}",
                        match ns.bridged {
                            Some(b) if b.enforced => " (pinned bridge port)",
                            Some(_) => " (bridge port, not pinned)",
                            None => "",
                        }
                    ),
                )
            }
        };
        // An X509-SVID now and then: the same identity rules, judged on
        // the SPIFFE ID it names (not in token mode, which issues none).
        let svid = self.cfg.mode != "token" && rng.chance(25);
        let endpoint = if svid {
            "pod/identity/x509"
        } else {
            "pod/uuid"
        };
        let path = match &token {
            Some(t) => format!("/{t}/acMetadata/v1/{endpoint}"),
            None => format!("/acMetadata/v1/{endpoint}"),
        };
        let answer = self.send(actor, src, dst, &path, svid);
        self.report.requests += 1;
        self.report.svid_requests += usize::from(svid);
        let answer = answer.map(|(status, body)| match status {
            200 if svid => (status, svid_pod(&body)),
            _ => (status, body),
        });
        let Some((status, body)) = answer else {
            self.report.connect_failures += 1;
            return;
        };
        let owner = token
            .as_deref()
            .and_then(|t| self.regs.iter().rev().find(|r| r.token == t));
        let bound_to_actor: Vec<&Reg> = match actor {
            Actor::Ns(id) => self
                .regs
                .iter()
                .filter(|r| r.registered && r.binding == Binding::Instance(id))
                .collect(),
            Actor::Host => Vec::new(),
        };
        let mut last_change = changed.max(self.last_restart);
        for r in owner.iter().chain(bound_to_actor.iter()) {
            last_change = last_change.max(r.changed);
        }
        let unpinned = match actor {
            Actor::Ns(id) => self
                .live()
                .any(|ns| ns.id == id && ns.bridged.is_some_and(|b| !b.enforced)),
            Actor::Host => false,
        };
        let case = Case {
            mode: self.cfg.mode,
            actor,
            token: token.as_deref(),
            owner,
            bound_to_actor,
            source_routed,
            unpinned_bridge_port: unpinned,
            last_change,
            gc_grace: GC_GRACE,
        };
        let served = (status == 200).then_some(body.as_str());
        let judgement = oracle::judge(&case, served, Instant::now());
        let token_kind = ["own", "another's", "a dead pod's", "no"][token_choice.min(3)];
        let line = format!(
            "{what} with {token_kind} token ({}) -> {status} {body:?}",
            owner.map_or("-", |o| o.uuid.as_str())
        );
        if status == 200 {
            self.report.served += 1;
            if let Actor::Ns(id) = actor {
                if self.live().any(|ns| ns.id == id && ns.bridged.is_some()) {
                    self.report.bridged_served += 1;
                }
            }
        } else {
            self.report.refused += 1;
        }
        match judgement {
            Judgement::Fine => {}
            Judgement::Misattribution(why) => {
                self.report.misattributions.push(format!("{line}: {why}"));
            }
            Judgement::FalseRefusal { in_window: true } => {
                self.report.false_refusals_in_window += 1;
            }
            Judgement::FalseRefusal { in_window: false } => {
                self.report.false_refusals.push(line.clone());
            }
        }
        self.log(line);
    }

    /// One GET; `None` when no connection could be made.
    fn send(
        &self,
        actor: Actor,
        src: Option<IpAddr>,
        dst: IpAddr,
        path: &str,
        svid: bool,
    ) -> Option<(u16, String)> {
        let addr = SocketAddr::new(dst, self.agent.port);
        let stream = match actor {
            Actor::Host => TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?,
            Actor::Ns(id) => {
                let ns = self.slots.iter().flatten().find(|ns| ns.id == id)?;
                connect_from(&ns.net, src, addr)?
            }
        };
        let request = if svid {
            Request::new(
                "POST",
                path,
                Some(self.csr.as_bytes()),
                &[("Metadata", "true")],
            )
        } else {
            Request::get(path)
        };
        let r = Conn::new(stream).send(&request).ok()?;
        Some((r.status, r.text()))
    }

    /// Ends the run: peak memory, then everything removed, and every
    /// namespace the run deleted must have been freed by the kernel.
    pub(super) fn finish(mut self, elapsed: Duration) -> Report {
        self.sample_rss();
        for i in 0..self.regs.len() {
            if self.regs[i].registered {
                let _ = self.agent.unregister(&self.regs[i].uuid.clone());
                self.regs[i].registered = false;
            }
        }
        for slot in self.live_ids() {
            let mut ns = self.take_out(slot);
            ns.net.delete_netns_only();
            self.dead.push(ns.net);
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        let waited = Instant::now();
        let remaining = |links: &[(String, String)]| {
            links
                .iter()
                .filter(|(l, _)| std::path::Path::new("/sys/class/net").join(l).exists())
                .count()
        };
        while remaining(&self.dead_links) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = remaining(&self.dead_links);
        self.report.free_wait = waited.elapsed();
        self.report.all_freed = left == 0;
        if left > 0 {
            let names: Vec<String> = self
                .dead_links
                .iter()
                .filter(|(l, _)| std::path::Path::new("/sys/class/net").join(l).exists())
                .map(|(l, sockets)| format!("{l} ({sockets} at deletion)"))
                .collect();
            let watch = self.agent.pods()["watch"].clone();
            self.report
                .false_refusals
                .push(format!("never freed: {names:?} (agent watches {watch})"));
            self.report.false_refusals.push(format!(
                "{left} deleted namespaces were never freed in 90 s"
            ));
        }
        self.report.elapsed = elapsed;
        self.report.last_ops = self.ops.iter().cloned().collect();
        // The pods' list must agree: nothing left registered.
        let pods: Value = self.agent.pods();
        let listed = pods["pods"].as_array().map_or(0, Vec::len);
        if listed != 0 {
            self.report.false_refusals.push(format!(
                "{listed} pods still listed after unregistering all"
            ));
        }
        self.report
    }
}

/// The `TCP:` line of the namespace's `sockstat`: sockets still open,
/// orphaned (closed, still sending) and in TIME_WAIT.
fn tcp_sockets(net: &PodNet) -> String {
    netns::run_in(&net.netns(), || {
        std::fs::read_to_string("/proc/thread-self/net/sockstat").unwrap_or_default()
    })
    .ok()
    .and_then(|s| s.lines().find(|l| l.starts_with("TCP:")).map(str::to_owned))
    .unwrap_or_else(|| "sockstat unreadable".to_owned())
}

/// A connection from inside `net`, from `src`: a source the host routes
/// elsewhere never completes its handshake, so give up soon. Dropping it
/// resets it.
fn connect_from(net: &PodNet, src: Option<IpAddr>, dst: SocketAddr) -> Option<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    netns::run_in(&net.netns(), move || -> std::io::Result<TcpStream> {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        // Closed with a reset, never orphaned: a closed socket whose FIN
        // or request nobody acknowledges (the host sends the agent's
        // replies to whoever owns the source address now) keeps
        // retransmitting for about 100 s, and holds its namespace alive
        // that long. The freeing check is about the agent's references.
        s.set_linger(Some(Duration::ZERO))?;
        if let Some(src) = src {
            s.bind(&SocketAddr::new(src, 0).into())?;
        }
        s.connect_timeout(&dst.into(), Duration::from_millis(100))?;
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    })
    .ok()?
    .ok()
}

/// A P-256 CSR (its key is thrown away: only identities are judged).
fn csr() -> String {
    let key = rcgen::KeyPair::generate().expect("a key");
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .expect("a CSR")
}

/// The pod UUID an SVID (PEM) names in its SPIFFE ID
/// (`spiffe://TD/rkt/node/NODE/pod/UUID`), or what it names instead, for
/// the oracle to judge as the served identity.
fn svid_pod(pem: &str) -> String {
    let Ok((_, block)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return format!("not a PEM SVID: {pem:?}");
    };
    let Ok(cert) = block.parse_x509() else {
        return "not an X.509 certificate".to_owned();
    };
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [one] => one
            .rsplit_once("/pod/")
            .map_or_else(|| one.clone(), |(_, uuid)| uuid.to_owned()),
        _ => format!("URI SANs {uris:?}"),
    }
}
