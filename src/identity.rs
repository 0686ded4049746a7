//! The identity policy (SPEC §5): from a claimed registration (by token)
//! and what is known of the peer's address (the host's attribution and the
//! pods' own views), decide which pod is asking, or why it is refused.
//! Pure: no I/O, no locks.

use std::fmt;

use netns::{Attribution, NetnsCookie};

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
    ViewsDisagree,
    BridgeNotEnforced,
}

impl Refusal {
    /// Every refusal, for metrics exported from the start.
    pub const ALL: [Refusal; 9] = [
        Refusal::UnknownToken,
        Refusal::TokenRequired,
        Refusal::NotInNetns,
        Refusal::NetnsGone,
        Refusal::NotOnHost,
        Refusal::NoPodForAddress,
        Refusal::Ambiguous,
        Refusal::ViewsDisagree,
        Refusal::BridgeNotEnforced,
    ];

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
            Refusal::ViewsDisagree => "views-disagree",
            Refusal::BridgeNotEnforced => "bridge-not-enforced",
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
            Refusal::ViewsDisagree => {
                "the host and the pod's namespace disagree about the source address"
            }
            Refusal::BridgeNotEnforced => {
                "the pod's bridge does not enforce source addresses: identity by address is off (--allow-unenforced-bridge)"
            }
        })
    }
}

/// The outcome of one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept(PodUuid),
    Refuse(Refusal),
    /// The views may lag (an address or route just added): bring the host
    /// view up to date and re-dump this namespace (if any), then decide
    /// again with `may_refresh = false`.
    RefreshThenRetry(Option<NetnsCookie>),
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
    /// network namespace (whatever pods claim).
    pub on_host: bool,
    /// The host's attribution: route → veth → peer namespace (or, on a
    /// bridge, neighbour → FDB port → veth → namespace). The authority.
    pub attributed: Attribution,
    /// The pods' namespace instances that hold the address themselves.
    /// A pod controls this view of its own namespace: it must agree with
    /// the host's, it never overrides it.
    pub holders: &'a [NetnsCookie],
}

impl Source<'_> {
    /// The instance the host attributes the address to, if any (never one
    /// of the host's own addresses).
    fn instance(&self) -> Option<(NetnsCookie, bool)> {
        if self.on_host {
            return None;
        }
        match self.attributed {
            Attribution::Routed(c) => Some((c, true)),
            Attribution::Bridged { cookie, enforced } => Some((cookie, enforced)),
            Attribution::Unwatched { .. } | Attribution::Elsewhere(_) => None,
        }
    }
}

/// Operator choices that relax the policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Identity by address for bridged pods whose bridge does not enforce
    /// source addresses (`--allow-unenforced-bridge`): their tokens, and
    /// tokenless requests in `netns` mode.
    pub allow_unenforced_bridge: bool,
}

/// Decides who is asking. `pods_in` lists the live pods bound to a
/// namespace instance.
pub fn decide(
    mode: Mode,
    options: Options,
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
            Binding::Netns(c) => match source.instance() {
                // On a bridge that does not enforce, another port can take
                // the pod's MAC and address (the FDB follows the last frame):
                // the attribution proves nothing, even with a token.
                Some((host, false)) if host == c && !options.allow_unenforced_bridge => {
                    Verdict::Refuse(Refusal::BridgeNotEnforced)
                }
                Some((host, _)) if host == c => agree(uuid, c, source.holders, may_refresh),
                _ if source.on_host => Verdict::Refuse(Refusal::NotInNetns),
                _ if may_refresh => Verdict::RefreshThenRetry(Some(c)),
                // The pod claims an address the host routes elsewhere.
                _ if source.holders.contains(&c) => Verdict::Refuse(Refusal::ViewsDisagree),
                _ => Verdict::Refuse(Refusal::NotInNetns),
            },
            Binding::Gone => Verdict::Refuse(Refusal::NetnsGone),
            // No namespace to check against: the host's own addresses only,
            // so a leaked token is useless in a pod or on another machine.
            Binding::None if source.on_host => Verdict::Accept(uuid),
            Binding::None => Verdict::Refuse(Refusal::NotOnHost),
        },
        (Mode::Netns, Claim::NoToken) => match source.instance() {
            Some((c, enforced)) => {
                let pods = pods_in(c);
                match pods.as_slice() {
                    [] => Verdict::Refuse(Refusal::NoPodForAddress),
                    [_, _, ..] => Verdict::Refuse(Refusal::Ambiguous),
                    [_] if !enforced && !options.allow_unenforced_bridge => {
                        Verdict::Refuse(Refusal::BridgeNotEnforced)
                    }
                    [uuid] => agree(*uuid, c, source.holders, may_refresh),
                }
            }
            // A pod may hold it while the host has not seen its route yet.
            None if may_refresh && !source.on_host && !source.holders.is_empty() => {
                Verdict::RefreshThenRetry(None)
            }
            None => Verdict::Refuse(Refusal::NoPodForAddress),
        },
    }
}

/// The host attributes the address to instance `c`: the pod's own view
/// must hold it too.
fn agree(uuid: PodUuid, c: NetnsCookie, holders: &[NetnsCookie], may_refresh: bool) -> Verdict {
    if holders.contains(&c) {
        Verdict::Accept(uuid)
    } else if may_refresh {
        Verdict::RefreshThenRetry(Some(c))
    } else {
        Verdict::Refuse(Refusal::ViewsDisagree)
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
    /// An address the host routes to `routed`, held by `holders`.
    fn routed(routed: u64, holders: &[NetnsCookie]) -> Source<'_> {
        Source {
            on_host: false,
            attributed: Attribution::Routed(ns(routed)),
            holders,
        }
    }
    fn bridged(cookie: u64, enforced: bool, holders: &[NetnsCookie]) -> Source<'_> {
        Source {
            on_host: false,
            attributed: Attribution::Bridged {
                cookie: ns(cookie),
                enforced,
            },
            holders,
        }
    }
    fn elsewhere(holders: &[NetnsCookie]) -> Source<'_> {
        Source {
            on_host: false,
            attributed: Attribution::Elsewhere("test"),
            holders,
        }
    }
    const HOST: Source<'static> = Source {
        on_host: true,
        // The host's own address on a pod's veth is in the pod's subnet.
        attributed: Attribution::Routed(NetnsCookie(1)),
        holders: &[],
    };
    fn a(m: Mode, c: Claim, s: Source<'_>, r: bool) -> Verdict {
        decide(m, Options::default(), c, s, pods_in, r)
    }
    fn refuse(r: Refusal) -> Verdict {
        Verdict::Refuse(r)
    }

    #[test]
    fn token_mode_is_rkt() {
        let c = Claim::Pod(uuid(1), Binding::Netns(ns(1)));
        assert_eq!(
            a(Mode::Token, c, routed(2, &[ns(2)]), true),
            Verdict::Accept(uuid(1))
        );
        let host = Claim::Pod(uuid(3), Binding::None);
        assert_eq!(
            a(Mode::Token, host, elsewhere(&[]), true),
            Verdict::Accept(uuid(3))
        );
        assert_eq!(
            a(Mode::Token, Claim::NoToken, routed(1, &[ns(1)]), true),
            refuse(Refusal::TokenRequired)
        );
        assert_eq!(
            a(Mode::Token, Claim::UnknownToken, elsewhere(&[]), true),
            refuse(Refusal::UnknownToken)
        );
    }

    #[test]
    fn a_token_needs_the_host_and_the_pod_to_agree() {
        let c = Claim::Pod(uuid(1), Binding::Netns(ns(1)));
        for m in [Mode::TokenNetns, Mode::Netns] {
            assert_eq!(a(m, c, routed(1, &[ns(1)]), true), Verdict::Accept(uuid(1)));
            assert_eq!(
                a(m, c, bridged(1, true, &[ns(1)]), true),
                Verdict::Accept(uuid(1))
            );
            // An unenforced bridge proves nothing, even with the token.
            assert_eq!(
                a(m, c, bridged(1, false, &[ns(1)]), true),
                refuse(Refusal::BridgeNotEnforced)
            );
            let opted_in = Options {
                allow_unenforced_bridge: true,
            };
            assert_eq!(
                decide(m, opted_in, c, bridged(1, false, &[ns(1)]), pods_in, true),
                Verdict::Accept(uuid(1))
            );
            // Another pod also claims it: the host's view decides.
            assert_eq!(
                a(m, c, routed(1, &[ns(2), ns(1)]), false),
                Verdict::Accept(uuid(1))
            );
            // The host routes it to the pod, the pod does not hold it (yet).
            assert_eq!(
                a(m, c, routed(1, &[]), true),
                Verdict::RefreshThenRetry(Some(ns(1)))
            );
            assert_eq!(
                a(m, c, routed(1, &[]), false),
                refuse(Refusal::ViewsDisagree)
            );
            // The pod holds it, the host routes it elsewhere.
            assert_eq!(
                a(m, c, routed(2, &[ns(1), ns(2)]), true),
                Verdict::RefreshThenRetry(Some(ns(1)))
            );
            assert_eq!(
                a(m, c, routed(2, &[ns(1), ns(2)]), false),
                refuse(Refusal::ViewsDisagree)
            );
            assert_eq!(
                a(m, c, elsewhere(&[ns(1)]), false),
                refuse(Refusal::ViewsDisagree)
            );
            // A stolen token from another pod's address.
            assert_eq!(
                a(m, c, routed(2, &[ns(2)]), false),
                refuse(Refusal::NotInNetns)
            );
            assert_eq!(a(m, c, elsewhere(&[]), false), refuse(Refusal::NotInNetns));
            // From the host, a namespaced pod's token is not its own, even
            // from the host's address in the pod's subnet.
            assert_eq!(a(m, c, HOST, true), refuse(Refusal::NotInNetns));
            let gone = Claim::Pod(uuid(1), Binding::Gone);
            for s in [routed(1, &[ns(1)]), HOST] {
                assert_eq!(a(m, gone, s, true), refuse(Refusal::NetnsGone));
            }
        }
    }

    #[test]
    fn pods_without_a_namespace_are_served_on_the_host_only() {
        let host = Claim::Pod(uuid(3), Binding::None);
        for m in [Mode::TokenNetns, Mode::Netns] {
            assert_eq!(a(m, host, HOST, true), Verdict::Accept(uuid(3)));
            // From inside a pod, an unregistered namespace or another
            // machine.
            for s in [routed(2, &[ns(2)]), routed(0, &[ns(0)]), elsewhere(&[])] {
                assert_eq!(a(m, host, s, true), refuse(Refusal::NotOnHost));
            }
        }
    }

    #[test]
    fn tokenless_resolution_follows_the_host() {
        fn n(s: Source<'_>) -> Verdict {
            a(Mode::Netns, Claim::NoToken, s, false)
        }
        assert_eq!(n(routed(1, &[ns(1)])), Verdict::Accept(uuid(1)));
        // A pod claiming another's address denies it nothing.
        assert_eq!(n(routed(1, &[ns(1), ns(2)])), Verdict::Accept(uuid(1)));
        assert_eq!(n(routed(1, &[ns(2)])), refuse(Refusal::ViewsDisagree));
        assert_eq!(n(routed(0, &[ns(0)])), refuse(Refusal::NoPodForAddress));
        assert_eq!(n(routed(9, &[ns(9)])), refuse(Refusal::Ambiguous));
        assert_eq!(n(elsewhere(&[ns(1)])), refuse(Refusal::NoPodForAddress));
        assert_eq!(n(HOST), refuse(Refusal::NoPodForAddress));
        assert_eq!(
            a(Mode::Netns, Claim::NoToken, elsewhere(&[ns(1)]), true),
            Verdict::RefreshThenRetry(None)
        );
        // Bridged: only with enforcement, or when the operator opts in.
        assert_eq!(n(bridged(1, true, &[ns(1)])), Verdict::Accept(uuid(1)));
        assert_eq!(
            n(bridged(1, false, &[ns(1)])),
            refuse(Refusal::BridgeNotEnforced)
        );
        let opted_in = Options {
            allow_unenforced_bridge: true,
        };
        assert_eq!(
            decide(
                Mode::Netns,
                opted_in,
                Claim::NoToken,
                bridged(1, false, &[ns(1)]),
                pods_in,
                false
            ),
            Verdict::Accept(uuid(1))
        );
    }
}
