//! The identity policy (SPEC §5): from a claimed registration (by token)
//! and the namespaces that hold the peer's address, decide which pod is
//! asking, or why it is refused. Pure: no I/O, no locks.

use std::fmt;

use netns::NetnsId;

use crate::appc::PodUuid;

/// `--identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The token alone identifies the pod (rkt's behaviour).
    #[value(name = "token")]
    Token,
    /// The token identifies the pod; the source address must be in its
    /// network namespace when that is known.
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
    /// Watched and live.
    Netns(NetnsId),
    /// Was known, but is gone.
    Gone,
    /// Host network, or not known yet: no namespace to check against.
    None,
}

/// A refusal; `Display` is the one-line reason sent to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownToken,
    TokenRequired,
    NotInNetns,
    NetnsGone,
    AddressOfAnotherPod,
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
            Refusal::AddressOfAnotherPod => "address-of-another-pod",
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
            Refusal::AddressOfAnotherPod => "source address belongs to another pod",
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
    RefreshThenRetry(NetnsId),
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

/// Decides who is asking. `holders` are the namespaces holding the peer
/// address; `pods_in` lists the pods bound to a namespace.
pub fn decide(
    mode: Mode,
    claim: Claim,
    holders: &[NetnsId],
    pods_in: impl Fn(NetnsId) -> Vec<PodUuid>,
    may_refresh: bool,
) -> Verdict {
    match (mode, claim) {
        (_, Claim::UnknownToken) => Verdict::Refuse(Refusal::UnknownToken),
        (Mode::Token | Mode::TokenNetns, Claim::NoToken) => Verdict::Refuse(Refusal::TokenRequired),
        (Mode::Token, Claim::Pod(uuid, _)) => Verdict::Accept(uuid),
        (Mode::TokenNetns | Mode::Netns, Claim::Pod(uuid, binding)) => match binding {
            Binding::Netns(id) if holders.contains(&id) => Verdict::Accept(uuid),
            Binding::Netns(id) if may_refresh => Verdict::RefreshThenRetry(id),
            Binding::Netns(_) => Verdict::Refuse(Refusal::NotInNetns),
            Binding::Gone => Verdict::Refuse(Refusal::NetnsGone),
            // No namespace to check against: accept the token, unless the
            // address is provably another pod's (a stolen token used from
            // inside a registered pod).
            Binding::None => {
                let foreign = holders
                    .iter()
                    .any(|h| pods_in(*h).iter().any(|p| *p != uuid));
                if foreign {
                    Verdict::Refuse(Refusal::AddressOfAnotherPod)
                } else {
                    Verdict::Accept(uuid)
                }
            }
        },
        (Mode::Netns, Claim::NoToken) => {
            let mut found: Option<PodUuid> = None;
            for h in holders {
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

    fn ns(i: u64) -> NetnsId {
        NetnsId { dev: 4, ino: i }
    }
    fn uuid(b: u8) -> PodUuid {
        PodUuid::parse(&format!("{b:02x}").repeat(16)).unwrap()
    }
    /// Namespace i holds pod i (and namespace 9 holds pods 1 and 2).
    fn pods_in(id: NetnsId) -> Vec<PodUuid> {
        match id.ino {
            9 => vec![uuid(1), uuid(2)],
            0 => vec![],
            i => vec![uuid(i as u8)],
        }
    }
    fn a(m: Mode, c: Claim, h: &[NetnsId], r: bool) -> Verdict {
        decide(m, c, h, pods_in, r)
    }

    #[test]
    fn token_mode_is_rkt() {
        let c = Claim::Pod(uuid(1), Binding::Netns(ns(1)));
        assert_eq!(a(Mode::Token, c, &[ns(2)], true), Verdict::Accept(uuid(1)));
        assert_eq!(
            a(Mode::Token, Claim::NoToken, &[ns(1)], true),
            Verdict::Refuse(Refusal::TokenRequired)
        );
        assert_eq!(
            a(Mode::Token, Claim::UnknownToken, &[], true),
            Verdict::Refuse(Refusal::UnknownToken)
        );
    }

    #[test]
    fn token_netns_checks_the_source() {
        let c = Claim::Pod(uuid(1), Binding::Netns(ns(1)));
        for m in [Mode::TokenNetns, Mode::Netns] {
            assert_eq!(a(m, c, &[ns(1)], true), Verdict::Accept(uuid(1)));
            // A conflict: the own namespace holds it too.
            assert_eq!(a(m, c, &[ns(2), ns(1)], false), Verdict::Accept(uuid(1)));
            assert_eq!(a(m, c, &[ns(2)], true), Verdict::RefreshThenRetry(ns(1)));
            assert_eq!(
                a(m, c, &[ns(2)], false),
                Verdict::Refuse(Refusal::NotInNetns)
            );
            assert_eq!(a(m, c, &[], false), Verdict::Refuse(Refusal::NotInNetns));
            let gone = Claim::Pod(uuid(1), Binding::Gone);
            assert_eq!(
                a(m, gone, &[ns(1)], true),
                Verdict::Refuse(Refusal::NetnsGone)
            );
        }
        assert_eq!(
            a(Mode::TokenNetns, Claim::NoToken, &[ns(1)], true),
            Verdict::Refuse(Refusal::TokenRequired)
        );
    }

    #[test]
    fn unbound_pods_are_token_only_but_not_from_another_pod() {
        let host = Claim::Pod(uuid(3), Binding::None);
        assert_eq!(
            a(Mode::TokenNetns, host, &[], true),
            Verdict::Accept(uuid(3))
        );
        assert_eq!(
            a(Mode::TokenNetns, host, &[ns(0)], true),
            Verdict::Accept(uuid(3))
        );
        assert_eq!(
            a(Mode::TokenNetns, host, &[ns(2)], true),
            Verdict::Refuse(Refusal::AddressOfAnotherPod)
        );
    }

    #[test]
    fn tokenless_resolution() {
        assert_eq!(
            a(Mode::Netns, Claim::NoToken, &[ns(1)], true),
            Verdict::Accept(uuid(1))
        );
        assert_eq!(
            a(Mode::Netns, Claim::NoToken, &[], true),
            Verdict::Refuse(Refusal::NoPodForAddress)
        );
        assert_eq!(
            a(Mode::Netns, Claim::NoToken, &[ns(0)], true),
            Verdict::Refuse(Refusal::NoPodForAddress)
        );
        assert_eq!(
            a(Mode::Netns, Claim::NoToken, &[ns(1), ns(2)], true),
            Verdict::Refuse(Refusal::Ambiguous)
        );
        assert_eq!(
            a(Mode::Netns, Claim::NoToken, &[ns(9)], true),
            Verdict::Refuse(Refusal::Ambiguous)
        );
    }
}
