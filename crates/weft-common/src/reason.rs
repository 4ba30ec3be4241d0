//! Verdict reasons. `Forwarded` and `Transmitted` (sent back out of the device it came in on, by
//! XDP) are the non-drops; every other reason is a named drop, counted
//! in the metrics map and reported as a drop event. Numbers are a stable format: never renumber,
//! only append.

macro_rules! reasons {
    ($($variant:ident = $num:literal => $name:literal),+ $(,)?) => {
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Reason {
            $($variant = $num),+
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),+];

            /// The name `weft observe` and the metrics show.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name),+
                }
            }

            pub const fn from_u8(v: u8) -> Option<Reason> {
                match v {
                    $($num => Some(Reason::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    Forwarded = 0 => "forwarded",
    MalformedEthernet = 1 => "malformed ethernet header",
    MalformedArp = 2 => "malformed ARP packet",
    MalformedIpv4 = 3 => "malformed IPv4 header",
    MalformedIpv6 = 4 => "malformed IPv6 header",
    MalformedTcp = 5 => "malformed TCP header",
    MalformedUdp = 6 => "malformed UDP header",
    MalformedIcmp = 7 => "malformed ICMP header",
    UnsupportedL3 = 8 => "unsupported L3 protocol",
    InvalidSource = 9 => "invalid source",
    SnatNoPort = 10 => "no free SNAT port",
    TtlExceeded = 11 => "TTL exceeded",
    NatUnsupportedProto = 12 => "unsupported protocol for NAT",
    MalformedGeneve = 13 => "malformed Geneve header",
    UnknownVni = 14 => "unknown Geneve VNI",
    EncapFailed = 15 => "encapsulation failed",
    DecapFailed = 16 => "decapsulation failed",
    NatFailed = 17 => "NAT rewrite failed",
    UnknownEndpoint = 18 => "no such local endpoint",
    RedirectFailed = 19 => "redirect failed",
    NoServiceBackend = 20 => "no service backend",
    ConntrackFailed = 21 => "conntrack update failed",
    BackendMissing = 22 => "service backend missing",
    NoLocalBackend = 23 => "no local service backend",
    BackendUnreachable = 24 => "service backend unreachable",
    Prefiltered = 25 => "prefiltered",
    Transmitted = 26 => "transmitted (XDP_TX)",
    TunnelFromUnknownSource = 27 => "tunnel from unknown source",
    DsrUnknownFrontend = 28 => "DSR option for no DSR frontend",
}

impl Reason {
    /// Slots reserved per hook in the metrics map: room to append reasons without changing the
    /// map's size.
    pub const SLOTS: u32 = 64;

    pub const fn is_drop(self) -> bool {
        !matches!(self, Reason::Forwarded | Reason::Transmitted)
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.name() == name)
    }
}

const _: () = assert!((Reason::ALL[Reason::ALL.len() - 1] as u32) < Reason::SLOTS);
