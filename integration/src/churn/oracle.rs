//! The oracle: from the model of who holds which namespace instance, which
//! registration is bound to which, and which address is routed where,
//! which answers to a request are acceptable.
//!
//! A 200 is checked strictly: the pod it names must be the token's owner
//! (when a token was given), and in the modes that check the source, its
//! bound namespace instance must be the very one the request came from
//! (or, for a pod without a namespace, the request came from the host).
//! Anything else is a misattribution. A refusal where the model expects
//! service is a false refusal: counted, and allowed only inside the
//! window of a change still in flight.

use std::time::{Duration, Instant};

/// How long after a change touching a request (its pod's registration or
/// binding, its namespace, its source address, an agent restart) a
/// refusal is not held against the agent: the agent follows events, and
/// re-dumps on a miss, so in practice it catches up in milliseconds.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Where a registration's identity lives, as the model knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Bound (for good) to the namespace instance with this model id.
    Instance(u64),
    /// Registered without a namespace: served on the host only.
    Host,
    /// rkt's lazy form, the pod-directory file not discovered yet: served
    /// on the host, or from this instance once discovered.
    Pending(u64),
}

/// Who made the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    Host,
    /// From inside the namespace instance with this model id.
    Ns(u64),
}

/// One registration as the model knows it.
#[derive(Clone, Debug)]
pub struct Reg {
    pub uuid: String,
    pub token: String,
    pub binding: Binding,
    /// Still registered (not unregistered, dropped at reload or collected).
    pub registered: bool,
    /// Since when its binding is over (its namespace's name deleted, its
    /// process dead), if it is.
    pub dead_since: Option<Instant>,
    /// Its last change (registration, binding, death).
    pub changed: Instant,
}

/// Everything the oracle needs about one request.
pub struct Case<'a> {
    pub mode: &'a str,
    pub actor: Actor,
    /// The token sent, if any.
    pub token: Option<&'a str>,
    /// The registration that token belongs to (the newest with it).
    pub owner: Option<&'a Reg>,
    /// For a tokenless request: the live registrations bound to the actor.
    pub bound_to_actor: Vec<&'a Reg>,
    /// The host's tables attribute the source address to the actor, in a
    /// way that proves it: routed to its veth (a base address, or a pool
    /// address assigned to it), or pinned to its bridge port (neighbour
    /// and FDB entries fixed, and the pod wears its own MAC address).
    pub source_routed: bool,
    /// The actor is on a bridge port its operator did not pin: its
    /// address proves nothing, whatever the tables say now.
    pub unpinned_bridge_port: bool,
    /// The latest change touching this request.
    pub last_change: Instant,
    /// How long a dead registration may linger before the agent's GC.
    pub gc_grace: Duration,
}

/// What the oracle says of an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Judgement {
    Fine,
    Misattribution(String),
    FalseRefusal { in_window: bool },
}

/// Judges one answer: `served` is the UUID of a 200, else `None`.
pub fn judge(case: &Case<'_>, served: Option<&str>, now: Instant) -> Judgement {
    match served {
        Some(uuid) => judge_200(case, uuid),
        None => {
            if expected_served(case, now) {
                Judgement::FalseRefusal {
                    in_window: now.duration_since(case.last_change) < WINDOW,
                }
            } else {
                Judgement::Fine
            }
        }
    }
}

fn judge_200(case: &Case<'_>, uuid: &str) -> Judgement {
    let bad = |why: String| Judgement::Misattribution(why);
    let reg = match case.token {
        Some(token) => match case.owner {
            Some(owner) if owner.uuid == uuid && owner.token == token => owner,
            Some(owner) => return bad(format!("token of {} answered as {uuid}", owner.uuid)),
            None => return bad(format!("an unknown token answered as {uuid}")),
        },
        None => {
            if case.mode != "netns" {
                return bad(format!(
                    "a tokenless request answered as {uuid} in {}",
                    case.mode
                ));
            }
            match case.bound_to_actor.iter().find(|r| r.uuid == uuid) {
                Some(r) => r,
                None => {
                    return bad(format!(
                        "a tokenless request from {:?} answered as {uuid}, not bound there",
                        case.actor
                    ))
                }
            }
        }
    };
    if case.mode == "token" {
        return Judgement::Fine;
    }
    if case.unpinned_bridge_port {
        return bad(format!(
            "{uuid} answered in {} to {:?}, on a bridge port nobody pinned",
            case.mode, case.actor
        ));
    }
    let ok = match (reg.binding, case.actor) {
        (Binding::Instance(i), Actor::Ns(a)) => i == a,
        (Binding::Host, Actor::Host) => true,
        (Binding::Pending(_), Actor::Host) => true,
        (Binding::Pending(i), Actor::Ns(a)) => i == a,
        _ => false,
    };
    if ok {
        Judgement::Fine
    } else {
        bad(format!(
            "{uuid} (bound {:?}) answered to {:?}",
            reg.binding, case.actor
        ))
    }
}

/// Whether the model says the request should be served.
fn expected_served(case: &Case<'_>, now: Instant) -> bool {
    let live = |r: &Reg| r.registered && r.dead_since.is_none();
    // A dead registration may be gone already: token mode would still
    // serve it until the GC, but not for certain.
    let collectable = |r: &Reg| {
        r.dead_since
            .is_some_and(|d| now.duration_since(d) + WINDOW >= case.gc_grace)
    };
    match (case.mode, case.token) {
        ("token", Some(_)) => case.owner.is_some_and(|o| o.registered && !collectable(o)),
        (_, None) => {
            case.mode == "netns"
                && case.source_routed
                && matches!(case.actor, Actor::Ns(_))
                && case.bound_to_actor.len() == 1
                && case.bound_to_actor.iter().all(|r| live(r))
        }
        (_, Some(_)) => {
            let Some(owner) = case.owner.filter(|o| live(o)) else {
                return false;
            };
            match (owner.binding, case.actor) {
                (Binding::Instance(i), Actor::Ns(a)) => i == a && case.source_routed,
                (Binding::Host, Actor::Host) => true,
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(uuid: &str, binding: Binding) -> Reg {
        Reg {
            uuid: uuid.into(),
            token: format!("tok-{uuid}"),
            binding,
            registered: true,
            dead_since: None,
            changed: Instant::now() - Duration::from_secs(60),
        }
    }

    fn case<'a>(
        mode: &'a str,
        actor: Actor,
        owner: Option<&'a Reg>,
        bound: Vec<&'a Reg>,
    ) -> Case<'a> {
        Case {
            mode,
            actor,
            token: owner.map(|o| o.token.as_str()),
            owner,
            bound_to_actor: bound,
            source_routed: true,
            unpinned_bridge_port: false,
            last_change: Instant::now() - Duration::from_secs(60),
            gc_grace: Duration::from_secs(3),
        }
    }

    #[test]
    fn a_200_must_name_the_pod_bound_where_the_request_came_from() {
        let now = Instant::now();
        let a = reg("a", Binding::Instance(1));
        let c = case("token+netns", Actor::Ns(1), Some(&a), vec![]);
        assert_eq!(judge(&c, Some("a"), now), Judgement::Fine);
        let from_other = case("token+netns", Actor::Ns(2), Some(&a), vec![]);
        assert!(matches!(
            judge(&from_other, Some("a"), now),
            Judgement::Misattribution(_)
        ));
        assert_eq!(judge(&from_other, None, now), Judgement::Fine);
        // Token mode is rkt's: the token alone.
        let token_mode = case("token", Actor::Ns(2), Some(&a), vec![]);
        assert_eq!(judge(&token_mode, Some("a"), now), Judgement::Fine);
        assert!(matches!(
            judge(&token_mode, Some("b"), now),
            Judgement::Misattribution(_)
        ));
        // Tokenless: only the pod bound to the actor.
        let b = reg("b", Binding::Instance(2));
        let tokenless = case("netns", Actor::Ns(2), None, vec![&b]);
        assert_eq!(judge(&tokenless, Some("b"), now), Judgement::Fine);
        assert!(matches!(
            judge(&tokenless, Some("a"), now),
            Judgement::Misattribution(_)
        ));
        assert_eq!(
            judge(&tokenless, None, now),
            Judgement::FalseRefusal { in_window: false }
        );
        // A host-only pod from a namespace.
        let h = reg("h", Binding::Host);
        let c = case("netns", Actor::Ns(1), Some(&h), vec![]);
        assert!(matches!(
            judge(&c, Some("h"), now),
            Judgement::Misattribution(_)
        ));
    }

    #[test]
    fn nothing_is_served_from_an_unpinned_bridge_port_in_checking_modes() {
        let now = Instant::now();
        let a = reg("a", Binding::Instance(1));
        for mode in ["token+netns", "netns"] {
            let mut c = case(mode, Actor::Ns(1), Some(&a), vec![&a]);
            c.unpinned_bridge_port = true;
            c.source_routed = false;
            assert!(matches!(
                judge(&c, Some("a"), now),
                Judgement::Misattribution(_)
            ));
            assert_eq!(judge(&c, None, now), Judgement::Fine);
        }
        let mut c = case("token", Actor::Ns(1), Some(&a), vec![]);
        c.unpinned_bridge_port = true;
        assert_eq!(judge(&c, Some("a"), now), Judgement::Fine);
    }

    #[test]
    fn a_dead_pods_token_is_never_expected_in_checking_modes() {
        let now = Instant::now();
        let mut a = reg("a", Binding::Instance(1));
        a.dead_since = Some(now);
        let c = case("netns", Actor::Ns(1), Some(&a), vec![]);
        assert_eq!(judge(&c, None, now), Judgement::Fine);
        // Served anyway from its own instance: true, not a misattribution.
        assert_eq!(judge(&c, Some("a"), now), Judgement::Fine);
    }
}
