//! The identity policy (SPEC §5): from a claimed registration (by token)
//! and what is known of the peer's address, decide which pod is asking, or
//! why it is refused. Pure: no I/O, no locks.

use std::fmt;

use netns::NetnsCookie;

use crate::appc::PodUuid;

/// `--identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The token alone identifies the pod (rkt's behaviour).
    #[value(name = "token")]
    Token,
    /// The token identifies the pod; the source address must be in its
    /// network namespace (a pod without one: on the host).
    #[value(name = "token+netns")]
    TokenNetns,
    /// The source address identifies the pod; a token, if given, must agree.
    #[value(name = "netns")]
    Netns,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Token => "token",
            Mode::TokenNetns => "token+netns",
            Mode::Netns => "netns",
        })
    }
}

/// The claimed pod's namespace as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Bound to this namespace instance, which is live.
    Netns(NetnsCookie),
    /// Bound to an instance that is gone: for good.
    Gone,
    /// No namespace: host network, or not known yet. Such a pod is served
    /// only from the host's own addresses.
    None,
}

/// A refusal; `Display` is the one-line reason sent to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    UnknownToken,
    TokenRequired,
    NotInNetns,
    NetnsGone,
    NotOnHost,
    NoPodForAddress,
    Ambiguous,
}

impl Refusal {
    /// 401 for token problems, 403 for identity refusals.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::UnknownToken | Refusal::TokenRequired => 401,
            _ => 403,
        }
    }

    /// Short stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::UnknownToken => "unknown-token",
            Refusal::TokenRequired => "token-required",
            Refusal::NotInNetns => "not-in-netns",
            Refusal::NetnsGone => "netns-gone",
            Refusal::NotOnHost => "not-on-host",
            Refusal::NoPodForAddress => "no-pod-for-address",
            Refusal::Ambiguous => "ambiguous-address",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            // rkt's exact text for an unknown token.
            Refusal::UnknownToken => "pod not found",
            Refusal::TokenRequired => "a token is required in this identity mode",
            Refusal::NotInNetns => "source address is not in the pod's network namespace",
            Refusal::NetnsGone => "the pod's network namespace is gone",
            Refusal::NotOnHost => "source address is not on this host",
            Refusal::NoPodForAddress => "source address belongs to no registered pod",
            Refusal::Ambiguous => "source address belongs to more than one pod",
        })
    }
}

/// The outcome of one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept(PodUuid),
    Refuse(Refusal),
    /// The address was not (yet) seen in this namespace: re-dump it once
    /// and decide again with `may_refresh = false`.
    RefreshThenRetry(NetnsCookie),
}

/// The claim a request makes.
#[derive(Clone, Copy, Debug)]
pub enum Claim {
    /// No token in the URL.
    NoToken,
    /// A token that matches no registration.
    UnknownToken,
    /// A token of this registered pod.
    Pod(PodUuid, Binding),
}

/// What is known of the peer's address.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The address is the host's own: loopback, or held by the agent's own
    /// network namespace (as the host sees it, whatever pods claim).
    pub on_host: bool,
    /// The pods' namespace instances that hold the address.
    pub holders: &'a [NetnsCookie],
}

/// Decides who is asking. `pods_in` lists the live pods bound to a
/// namespace instance.
pub fn decide(
    mode: Mode,
    claim: Claim,
    source: Source<'_>,
    pods_in: impl Fn(NetnsCookie) -> Vec<PodUuid>,
    may_refresh: bool,
) -> Verdict {
    match (mode, claim) {
        (_, Claim::UnknownToken) => Verdict::Refuse(Refusal::UnknownToken),
        (Mode::Token | Mode::TokenNetns, Claim::NoToken) => Verdict::Refuse(Refusal::TokenRequired),
        (Mode::Token, Claim::Pod(uuid, _)) => Verdict::Accept(uuid),
        (Mode::TokenNetns | Mode::Netns, Claim::Pod(uuid, binding)) => match binding {
            Binding::Netns(c) if source.holders.contains(&c) => Verdict::Accept(uuid),
            Binding::Netns(c) if may_refresh => Verdict::RefreshThenRetry(c),
            Binding::Netns(_) => Verdict::Refuse(Refusal::NotInNetns),
            Binding::Gone => Verdict::Refuse(Refusal::NetnsGone),
            // No namespace to check against: the host's own addresses only,
            // so a leaked token is useless in a pod or on another machine.
            Binding::None if source.on_host => Verdict::Accept(uuid),
            Binding::None => Verdict::Refuse(Refusal::NotOnHost),
        },
        (Mode::Netns, Claim::NoToken) => {
            let mut found: Option<PodUuid> = None;
            for h in source.holders {
                for p in pods_in(*h) {
                    match found {
                        Some(f) if f != p => return Verdict::Refuse(Refusal::Ambiguous),
                        _ => found = Some(p),
                    }
                }
            }
            found.map_or(Verdict::Refuse(Refusal::NoPodForAddress), Verdict::Accept)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(i: u64) -> NetnsCookie {
        NetnsCookie(i)
    }
    fn uuid(b: u8) -> PodUuid {
        PodUuid::parse(&format!("{b:02x}").repeat(16)).unwrap()
    }
    /// Namespace i holds pod i (and namespace 9 holds pods 1 and 2).
    fn pods_in(c: NetnsCookie) -> Vec<PodUuid> {
        match c.0 {
            9 => vec![uuid(1), uuid(2)],
            0 => vec![],
            i => vec![uuid(i as u8)],
        }
    }
    fn pods(h: &[NetnsCookie]) -> Source<'_> {
        Source {
            on_host: false,
            holders: h,
        }
    }
    const HOST: Source<'static> = Source {
        on_host: true,
        holders: &[],
    };
    fn a(m: Mode, c: Claim, s: Source<'_>, r: bool) -> Verdict {
        decide(m, c, s, pods_in, r)
    }

    #[test]
    fn token_mode_is_rkt() {
        let c = Claim::Pod(uuid(1), Binding::Netns(ns(1)));
        assert_eq!(
            a(Mode::Token, c, pods(&[ns(2)]), true),
            Verdict::Accept(uuid(1))
        );
        let host = Claim::Pod(uuid(3), Binding::None);
        assert_eq!(
            a(Mode::Token, host, pods(&[ns(2)]), true),
            Verdict::Accept(uuid(3))
        );
        assert_eq!(
            a(Mode::Token, Claim::NoToken, pods(&[ns(1)]), true),
            Verdict::Refuse(Refusal::TokenRequired)
        );
        assert_eq!(
            a(Mode::Token, Claim::UnknownToken, pods(&[]), true),
            Verdict::Refuse(Refusal::UnknownToken)
        );
    }

    #[test]
    fn token_netns_checks_the_source() {
        let c = Claim::Pod(uuid(1), Binding::Netns(ns(1)));
        for m in [Mode::TokenNetns, Mode::Netns] {
            assert_eq!(a(m, c, pods(&[ns(1)]), true), Verdict::Accept(uuid(1)));
            // A conflict: the own namespace holds it too.
            assert_eq!(
                a(m, c, pods(&[ns(2), ns(1)]), false),
                Verdict::Accept(uuid(1))
            );
            assert_eq!(
                a(m, c, pods(&[ns(2)]), true),
                Verdict::RefreshThenRetry(ns(1))
            );
            assert_eq!(
                a(m, c, pods(&[ns(2)]), false),
                Verdict::Refuse(Refusal::NotInNetns)
            );
            assert_eq!(
                a(m, c, pods(&[]), false),
                Verdict::Refuse(Refusal::NotInNetns)
            );
            // From the host, a namespaced pod's token is not its own.
            assert_eq!(a(m, c, HOST, false), Verdict::Refuse(Refusal::NotInNetns));
            let gone = Claim::Pod(uuid(1), Binding::Gone);
            for s in [pods(&[ns(1)]), HOST] {
                assert_eq!(a(m, gone, s, true), Verdict::Refuse(Refusal::NetnsGone));
            }
        }
        assert_eq!(
            a(Mode::TokenNetns, Claim::NoToken, pods(&[ns(1)]), true),
            Verdict::Refuse(Refusal::TokenRequired)
        );
    }

    #[test]
    fn pods_without_a_namespace_are_served_on_the_host_only() {
        let host = Claim::Pod(uuid(3), Binding::None);
        for m in [Mode::TokenNetns, Mode::Netns] {
            assert_eq!(a(m, host, HOST, true), Verdict::Accept(uuid(3)));
            // From inside a pod, an unregistered namespace or another
            // machine (nobody on this host holds the address).
            for s in [pods(&[ns(2)]), pods(&[ns(0)]), pods(&[])] {
                assert_eq!(a(m, host, s, true), Verdict::Refuse(Refusal::NotOnHost));
            }
        }
    }

    #[test]
    fn tokenless_resolution() {
        fn n(s: Source<'_>) -> Verdict {
            a(Mode::Netns, Claim::NoToken, s, true)
        }
        assert_eq!(n(pods(&[ns(1)])), Verdict::Accept(uuid(1)));
        assert_eq!(n(pods(&[])), Verdict::Refuse(Refusal::NoPodForAddress));
        assert_eq!(n(HOST), Verdict::Refuse(Refusal::NoPodForAddress));
        assert_eq!(n(pods(&[ns(0)])), Verdict::Refuse(Refusal::NoPodForAddress));
        assert_eq!(
            n(pods(&[ns(1), ns(2)])),
            Verdict::Refuse(Refusal::Ambiguous)
        );
        assert_eq!(n(pods(&[ns(9)])), Verdict::Refuse(Refusal::Ambiguous));
    }
}
