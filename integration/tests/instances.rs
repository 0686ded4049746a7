//! Namespace instances (SPEC §5 "Namespace instances"): a pod is bound to
//! one instance, identified by its netns cookie, and a dead pod's identity
//! never passes to a namespace that recycles its inode number or its path.
//! Each scenario forces the kernel to recycle the inode and asserts that it
//! did. Needs root; runs in CI.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use integration::{
    fixtures,
    http::{Conn, Request, Response},
    pod::{exclusive_namespace_creation, Addressing, PodProcess},
    privilege::require_root,
    wait_for, Agent, AgentOptions, PodNet,
};
use serde_json::Value;

const T_A: &str = "aaaa56789abcdef0123456789abcdef0";
const T_C: &str = "cccc56789abcdef0123456789abcdef0";
const U_A: &str = "aaaaaaaa-a507-4694-aabf-edbe4fc5266f";
const U_C: &str = "cccccccc-a507-4694-aabf-edbe4fc5266f";

/// How a registration names the pod's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// `netns=/var/run/netns/NAME`
    Netns,
    /// `pid=PID` of a process inside it
    Pid,
    /// rkt's lazy form: the pod directory's `netns` file, written after
    /// the registration
    RktDir,
}

const FORMS: [Form; 3] = [Form::Netns, Form::Pid, Form::RktDir];

/// A pod as the scenarios use it: its network, and the process inside it
/// for the `pid=` form.
struct Pod {
    net: PodNet,
    process: Option<PodProcess>,
}

impl Pod {
    fn new(net: PodNet, form: Form) -> Self {
        let process = (form == Form::Pid).then(|| net.spawn_process());
        Self { net, process }
    }

    /// Kills the pod the way a crashed runtime does: its process dies and
    /// its namespace's name is deleted, nothing is unregistered. Waits
    /// until the agent let go and the kernel freed the namespace.
    fn die(self) -> (String, u64, Addressing) {
        if let Some(p) = self.process {
            p.kill();
        }
        self.net.delete_and_wait_freed()
    }
}

/// Registers `uuid` for `pod` in `form`, asserting success.
fn register(agent: &Agent, pod: &Pod, form: Form, uuid: &str, token: &str) {
    let query = match form {
        Form::Netns => format!("&netns={}", pod.net.netns_path()),
        Form::Pid => format!("&pid={}", pod.process.as_ref().expect("process").pid()),
        Form::RktDir => String::new(),
    };
    let dir = agent.rkt_dir().join("pods/run").join(uuid);
    if form == Form::RktDir {
        std::fs::create_dir_all(&dir).unwrap();
    }
    agent.register_fixture(uuid, token, &fixtures::WEB, &query);
    if form == Form::RktDir {
        // rkt writes the file after registering.
        std::fs::write(dir.join("netns"), pod.net.netns_path()).unwrap();
    }
}

fn get(token: &str, endpoint: &str) -> Request {
    if token.is_empty() {
        Request::get(&format!("/acMetadata/v1/{endpoint}"))
    } else {
        Request::get(&format!("/{token}/acMetadata/v1/{endpoint}"))
    }
}

/// One request from inside `pod` to the agent's host-side address.
fn from_pod(agent: &Agent, pod: &PodNet, v6: bool, req: &Request) -> Response {
    let dst = if v6 {
        IpAddr::V6(pod.host_v6())
    } else {
        IpAddr::V4(pod.host_v4())
    };
    let stream = pod
        .connect(None, SocketAddr::new(dst, agent.port))
        .expect("connect from pod");
    Conn::new(stream).send(req).expect("request from pod")
}

fn state(agent: &Agent, uuid: &str) -> Value {
    agent.pod_entry(uuid).unwrap_or(Value::Null)["state"].clone()
}

fn wait_state(agent: &Agent, uuid: &str, want: &str) {
    wait_for(
        &format!("{uuid} to be {want}"),
        Duration::from_secs(10),
        || (state(agent, uuid) == want).then_some(()),
    );
}

/// Scenarios 1, 3 and 4 of the churn issue, in every registration form,
/// identity mode and address family: pod A dies unregistered, the kernel
/// gives its inode number (and here its name and addresses) to a new
/// namespace, pod C registers there. A's token is refused from C's
/// namespace; C is served, by token and (netns mode) by address alone.
#[test]
fn a_dead_pods_identity_never_passes_to_a_namespace_that_recycles_its_inode() {
    if !require_root("a_dead_pods_identity_never_passes_to_a_recycled_inode") {
        return;
    }
    for mode in ["token+netns", "netns"] {
        for form in FORMS {
            let what = format!("{mode} {form:?}");
            let agent = Agent::start(AgentOptions::identity(mode));
            let a = Pod::new(PodNet::new(), form);
            register(&agent, &a, form, U_A, T_A);
            let r = from_pod(&agent, &a.net, false, &get(T_A, "pod/uuid"));
            assert_eq!((r.status, r.text()), (200, U_A.to_owned()), "{what}");
            let cookie_a = agent.pod_entry(U_A).unwrap()["netns"]["cookie"].clone();

            let exclusive = exclusive_namespace_creation();
            let (name, inode, addressing) = a.die();
            wait_state(&agent, U_A, "netns-gone");
            let c_net = PodNet::recycling(&name, inode, addressing);
            drop(exclusive);
            let c = Pod::new(c_net, form);
            assert_eq!(c.net.inode(), inode, "{what}: the inode was recycled");
            register(&agent, &c, form, U_C, T_C);

            for v6 in [false, true] {
                let r = from_pod(&agent, &c.net, v6, &get(T_A, "pod/uuid"));
                assert_eq!(
                    (r.status, r.text().as_str()),
                    (403, "the pod's network namespace is gone"),
                    "{what} v6={v6}: A's token from C's namespace"
                );
                let r = from_pod(&agent, &c.net, v6, &get(T_C, "pod/uuid"));
                assert_eq!(
                    (r.status, r.text()),
                    (200, U_C.to_owned()),
                    "{what} v6={v6}"
                );
                if mode == "netns" {
                    let r = from_pod(&agent, &c.net, v6, &get("", "pod/uuid"));
                    assert_eq!(
                        (r.status, r.text()),
                        (200, U_C.to_owned()),
                        "{what} v6={v6}: the dead pod must not shadow the live one"
                    );
                }
            }
            let entry_c = agent.pod_entry(U_C).unwrap();
            assert_ne!(entry_c["netns"]["cookie"], cookie_a, "{what}");
            assert_eq!(entry_c["netns"]["inode"], inode, "{what}");
            // From the host, too, the dead pod is refused.
            let r = agent.get(&format!("/{T_A}/acMetadata/v1/pod/uuid"));
            assert_eq!(r.status, 403, "{what}");
            assert_eq!(state(&agent, U_A), "netns-gone", "{what}");
            assert_eq!(state(&agent, U_C), "verified", "{what}");
            assert_eq!(
                agent.pod_entry(U_A).unwrap()["addresses"],
                Value::Array(vec![])
            );
        }
    }
}

/// Scenario 3 with a new inode: rkt's pod-directory file names a path;
/// whatever namespace appears there after the pod's died is not the pod's.
#[test]
fn the_rkt_pod_dir_file_never_rebinds_a_dead_pod() {
    if !require_root("the_rkt_pod_dir_file_never_rebinds_a_dead_pod") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let a = Pod::new(PodNet::new(), Form::RktDir);
    register(&agent, &a, Form::RktDir, U_A, T_A);
    assert_eq!(
        from_pod(&agent, &a.net, false, &get(T_A, "pod/uuid")).status,
        200
    );
    let (name, _, addressing) = a.die();
    wait_state(&agent, U_A, "netns-gone");
    // Any namespace under the same name, whatever its inode.
    let replacement = PodNet::named(&name, addressing);
    for _ in 0..3 {
        let r = from_pod(&agent, &replacement, false, &get(T_A, "pod/uuid"));
        assert_eq!(r.status, 403, "{}", r.text());
    }
    // Re-registering the same pod cannot move it either.
    let r = agent.register(U_A, T_A, &fixtures::read(fixtures::WEB.manifest), "");
    assert_eq!(r.status, 409, "{}", r.text());
    let r = agent.register(
        U_A,
        T_A,
        &fixtures::read(fixtures::WEB.manifest),
        &format!("&netns={}", replacement.netns_path()),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(state(&agent, U_A), "netns-gone");
}

/// Scenario 2: the agent is down while the namespace is replaced under the
/// same name with the same inode. The stored registration is dropped at
/// start, with an `info` line saying why, in every form that binds.
#[test]
fn a_restart_drops_a_stored_pod_whose_path_holds_another_instance() {
    if !require_root("a_restart_drops_a_stored_pod_whose_path_holds_another_instance") {
        return;
    }
    for form in [Form::Netns, Form::RktDir] {
        let mut agent = Agent::start(AgentOptions::identity("token+netns"));
        let a = Pod::new(PodNet::new(), form);
        register(&agent, &a, form, U_A, T_A);
        assert_eq!(
            from_pod(&agent, &a.net, false, &get(T_A, "pod/uuid")).status,
            200
        );
        assert_eq!(state(&agent, U_A), "verified");
        agent.stop();
        let exclusive = exclusive_namespace_creation();
        let (name, inode, addressing) = a.die();
        let c = PodNet::recycling(&name, inode, addressing);
        drop(exclusive);
        agent.restart();
        let line = agent.log_line("the dropped registration", |l| {
            l.contains("dropping a stored registration") && l.contains(U_A)
        });
        assert!(
            line.contains("INFO") && line.contains("now names another network namespace instance"),
            "{form:?}: {line}"
        );
        assert!(agent.pod_entry(U_A).is_none(), "{form:?}");
        let r = from_pod(&agent, &c, false, &get(T_A, "pod/uuid"));
        assert_eq!((r.status, r.text().as_str()), (401, "pod not found"));
        agent.register_in(U_C, T_C, &fixtures::read(fixtures::WEB.manifest), &c);
        let r = from_pod(&agent, &c, false, &get(T_C, "pod/uuid"));
        assert_eq!((r.status, r.text()), (200, U_C.to_owned()));
    }
}

/// A stored binding is only as good as the boot it was made in, and a
/// record without a cookie (older versions) proves nothing.
#[test]
fn stored_bindings_from_another_boot_or_without_a_cookie_are_dropped() {
    if !require_root("stored_bindings_from_another_boot_or_without_a_cookie_are_dropped") {
        return;
    }
    let mut agent = Agent::start(AgentOptions::identity("token+netns"));
    let a = PodNet::new();
    let c = PodNet::new();
    agent.register_in(U_A, T_A, &fixtures::read(fixtures::WEB.manifest), &a);
    agent.register_in(U_C, T_C, &fixtures::read(fixtures::WEB.manifest), &c);
    agent.stop();
    let edit = |uuid: &str, f: &dyn Fn(&mut Value)| {
        let path = agent.runtime_dir().join(format!("{uuid}.json"));
        let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    edit(U_A, &|v| {
        v["netns"]["boot_id"] = "00000000-0000-0000-0000-000000000000".into()
    });
    edit(U_C, &|v| {
        let ns = v["netns"].as_object_mut().unwrap();
        ns.remove("cookie");
        ns.remove("boot_id");
    });
    agent.restart();
    let log = agent.wait_log("both drops", |log| {
        log.matches("dropping a stored registration").count() >= 2
    });
    assert!(
        log.contains("the host has rebooted since it was stored"),
        "{log}"
    );
    assert!(log.contains("without a namespace cookie"), "{log}");
    assert!(agent.pod_entry(U_A).is_none() && agent.pod_entry(U_C).is_none());
}

/// Paths named by input are opened without blocking and type-checked: a
/// FIFO (as the pod-dir file, named by it, or named by `netns=`) is
/// refused and the agent keeps serving.
#[test]
fn a_fifo_anywhere_never_hangs_the_agent() {
    if !require_root("a_fifo_anywhere_never_hangs_the_agent") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let fifo = agent.root.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let manifest = fixtures::read(fixtures::WEB.manifest);

    // netns= names a FIFO.
    let r = agent.register(U_A, T_A, &manifest, &format!("&netns={}", fifo.display()));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("a FIFO"), "{}", r.text());

    // The pod-dir file is a FIFO.
    let dir = agent.rkt_dir().join("pods/run").join(U_A);
    std::fs::create_dir_all(&dir).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(dir.join("netns"))
        .status()
        .unwrap();
    assert!(made.success());
    let r = agent.register(U_A, T_A, &manifest, "");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not a regular file"), "{}", r.text());

    // The pod-dir file names a FIFO, written after the registration: lazy
    // discovery refuses it, the pod stays unbound, requests are answered.
    std::fs::remove_file(dir.join("netns")).unwrap();
    let r = agent.register(U_A, T_A, &manifest, "");
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::write(dir.join("netns"), fifo.display().to_string()).unwrap();
    let r = agent.get(&format!("/{T_A}/acMetadata/v1/pod/uuid"));
    assert_eq!(r.status, 200, "a pending pod on the host: {}", r.text());
    assert_eq!(state(&agent, U_A), "netns-unknown");
    agent.log_line("the refused discovery", |l| {
        l.contains("cannot use the network namespace rkt recorded") && l.contains("FIFO")
    });
    let health = agent.unix(&Request::get("/health"));
    assert_eq!(health.status, 200);
}

/// `netns=` or `pid=` naming the agent's own namespace would make a pod
/// "verified" from every host address: refused, with what to do instead.
#[test]
fn binding_a_pod_to_the_agents_own_namespace_is_refused() {
    if !require_root("binding_a_pod_to_the_agents_own_namespace_is_refused") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let manifest = fixtures::read(fixtures::WEB.manifest);
    for query in [
        "&netns=/proc/self/ns/net".to_owned(),
        format!("&netns=/proc/{}/ns/net", std::process::id()),
        format!("&pid={}", std::process::id()),
        format!("&pid={}", agent.pid().unwrap()),
    ] {
        let r = agent.register(U_A, T_A, &manifest, &query);
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        assert!(
            r.text().contains("the agent's own network namespace")
                && r.text().contains("host-network pod"),
            "{query}: {}",
            r.text()
        );
    }
    assert!(agent.pod_entry(U_A).is_none());
}

/// Racing registrations and unregistrations of one pod never leak a
/// namespace watcher (a leaked one would pin the namespace for good).
#[test]
fn racing_put_and_delete_leak_no_watcher() {
    if !require_root("racing_put_and_delete_leak_no_watcher") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let watched = || agent.pods()["watch"]["watched"].as_u64().unwrap();
    let baseline = watched();
    let mut pod = PodNet::new();
    let manifest = fixtures::read(fixtures::WEB.manifest);
    let query = format!("&netns={}", pod.netns_path());
    std::thread::scope(|s| {
        for t in 0..8 {
            let (agent, manifest, query) = (&agent, &manifest, &query);
            s.spawn(move || {
                for i in 0..25 {
                    let r = if (t + i) % 2 == 0 {
                        agent.register(U_A, T_A, manifest, query)
                    } else {
                        agent.unregister(U_A)
                    };
                    assert!(matches!(r.status, 200 | 404), "{}", r.text());
                }
            });
        }
    });
    let _ = agent.unregister(U_A);
    assert!(agent.pod_entry(U_A).is_none());
    wait_for(
        "every watcher to be released",
        Duration::from_secs(5),
        || (watched() == baseline).then_some(()),
    );
    // And nothing pins the namespace: the kernel frees it.
    pod.delete_netns_only();
    pod.wait_freed();
}

/// The watch set itself, below the agent: a lease on an instance whose
/// path died stays dead when the kernel gives the inode to a new
/// namespace at the same path, and the new one is another instance.
// Multi-threaded: the test blocks its thread while the set's tasks run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_set_never_revives_a_lease_on_a_recycled_inode() {
    if !require_root("the_watch_set_never_revives_a_lease_on_a_recycled_inode") {
        return;
    }
    use netns::{NetnsFile, WatchConfig, WatchSet};
    let set = WatchSet::new(WatchConfig {
        liveness_interval: Duration::from_millis(50),
        ..WatchConfig::default()
    });
    let old = PodNet::new();
    let v4 = IpAddr::V4(old.v4());
    let lease = set.acquire(&old.netns()).await.unwrap();
    assert!(set.index().holds(&v4, lease.cookie()));
    let dead = lease.cookie();
    let exclusive = exclusive_namespace_creation();
    // Freed only once the watcher has let go of it.
    let (name, inode, addressing) = old.delete_and_wait_freed();
    assert!(!lease.is_live());
    let new = PodNet::recycling(&name, inode, addressing);
    drop(exclusive);
    let fresh = set
        .acquire(&NetnsFile::open(new.netns_path()).unwrap())
        .await
        .unwrap();
    assert_eq!(new.inode(), inode, "the kernel recycled the inode");
    assert_ne!(fresh.cookie(), dead, "but not the cookie");
    assert!(!lease.is_live(), "a dead lease never comes back");
    assert!(set.index().holds(&v4, fresh.cookie()));
    assert!(!set.index().holds(&v4, dead));
    assert_eq!(
        set.stats().watched,
        2,
        "the dead watcher is kept for its lease"
    );
    drop(lease);
    assert_eq!(set.stats().watched, 1);
}
