//! Reaction time: from `ip addr add|del` inside a pod namespace returning
//! to the agent's inventory (what identity checks read) showing it.

use std::time::{Duration, Instant};

use integration::{Agent, PodNet};

use crate::{check_interrupted, report::Reaction, UUID};

fn holds(agent: &Agent, addr: &str) -> bool {
    agent.pod_entry(UUID).is_some_and(|p| {
        p["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == addr))
    })
}

/// Polls until `holds == want`, returning the elapsed milliseconds.
fn until(agent: &Agent, addr: &str, want: bool, start: Instant) -> Result<f64, String> {
    let deadline = start + Duration::from_secs(5);
    while holds(agent, addr) != want {
        if Instant::now() > deadline {
            return Err(format!(
                "the agent did not see {addr} {} within 5 s",
                if want { "added" } else { "removed" }
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

pub fn measure(agent: &Agent, pod: &PodNet, trials: usize) -> Result<Reaction, String> {
    let mut r = Reaction {
        add_ms: Vec::new(),
        del_ms: Vec::new(),
    };
    for _ in 0..trials {
        check_interrupted()?;
        let addr = PodNet::new_addressing_v4().to_string();
        let cidr = format!("{addr}/32");
        pod.exec(&["addr", "add", &cidr, "dev", "eth0"]);
        r.add_ms.push(until(agent, &addr, true, Instant::now())?);
        pod.exec(&["addr", "del", &cidr, "dev", "eth0"]);
        r.del_ms.push(until(agent, &addr, false, Instant::now())?);
    }
    Ok(r)
}
