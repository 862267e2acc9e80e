//! Target destinations: which (address, port) pairs a `[[target]]` covers.
//!
//! The agent sees connections as socket addresses, after any name resolution the
//! workload did, so targets are written as addresses and networks, never host
//! names: a host name here would silently match nothing.
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The forms an address can take, for error messages.
const FORMS: &str = "expected IP:PORT, [IPv6]:PORT, CIDR:PORT, [IPv6-CIDR]:PORT or *:PORT";

/// Where a target lives. Built only by [`Destination::from_str`], which normalises
/// IPv4-mapped IPv6 addresses to IPv4 and rejects port 0, so every value is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One address and port (`10.0.0.5:5432`, `[::1]:5432`).
    Exact(SocketAddr),
    /// Every address of a network, on one port (`10.0.0.0/8:5432`, `[fd00::/8]:5432`).
    Network {
        /// The network; its host bits are zero.
        net: IpNet,
        /// The port, 1..=65535.
        port: u16,
    },
    /// Any address on one port (`*:5432`).
    AnyHost {
        /// The port, 1..=65535.
        port: u16,
    },
}

impl Destination {
    /// Whether a connection to `addr` goes to this destination. An IPv4-mapped IPv6
    /// address (`::ffff:10.0.0.5`, what a dual-stack socket reports for an IPv4
    /// peer) is compared as the IPv4 address it stands for.
    pub fn matches(&self, addr: SocketAddr) -> bool {
        let ip = canonical_ip(addr.ip());
        match *self {
            Destination::Exact(want) => want.ip() == ip && want.port() == addr.port(),
            Destination::Network { net, port } => port == addr.port() && net.contains(&ip),
            Destination::AnyHost { port } => port == addr.port(),
        }
    }

    /// The destination's port.
    pub fn port(&self) -> u16 {
        match *self {
            Destination::Exact(addr) => addr.port(),
            Destination::Network { port, .. } | Destination::AnyHost { port } => port,
        }
    }
}

/// Shows the destination in the syntax the configuration uses, so that it can be
/// pasted back into a file.
impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Exact(addr) => write!(f, "{addr}"),
            Destination::Network {
                net: IpNet::V4(net),
                port,
            } => write!(f, "{net}:{port}"),
            Destination::Network {
                net: IpNet::V6(net),
                port,
            } => write!(f, "[{net}]:{port}"),
            Destination::AnyHost { port } => write!(f, "*:{port}"),
        }
    }
}

/// The IPv4 address an IPv4-mapped IPv6 address stands for; any other address as is.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

impl FromStr for Destination {
    /// A sentence saying what is wrong, without position (the caller adds it).
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(format!("empty address ({FORMS})"));
        }
        let (host, port) = split_host_port(trimmed)?;
        let port = parse_port(port, trimmed)?;
        if host == "*" {
            return Ok(Destination::AnyHost { port });
        }
        if host.contains('/') {
            let net = parse_network(host)?;
            return Ok(Destination::Network { net, port });
        }
        let ip = parse_ip(host)?;
        Ok(Destination::Exact(SocketAddr::new(canonical_ip(ip), port)))
    }
}

/// Splits `host:port`, where an IPv6 host must be in brackets.
fn split_host_port(text: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("unclosed '[' in address \"{text}\" ({FORMS})"));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!(
                "missing port after ']' in address \"{text}\" ({FORMS})"
            ));
        };
        return Ok((host, port));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("missing port in address \"{text}\" ({FORMS})"));
    };
    if host.contains(':') {
        // Without brackets we cannot tell where an IPv6 address ends and the port
        // begins ("::1:5432" is also a valid address on its own).
        return Err(format!(
            "IPv6 addresses must be written in brackets, as in \"[::1]:5432\" or \"[fd00::/8]:5432\" (got \"{text}\")"
        ));
    }
    Ok((host, port))
}

/// Parses a port, 1..=65535: port 0 cannot be connected to, so it is a mistake.
fn parse_port(port: &str, whole: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err(format!("missing port in address \"{whole}\" ({FORMS})"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid port \"{port}\" in address \"{whole}\": ports are numbers from 1 to 65535"
        ));
    }
    match port.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(format!(
            "port {port} in address \"{whole}\" is out of range: ports are numbers from 1 to 65535"
        )),
    }
}

/// Parses an IP address, with a dedicated message for host names.
fn parse_ip(host: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    if looks_like_hostname(host) {
        return Err(format!(
            "\"{host}\" is a host name; targets must be IP addresses or CIDR networks because the agent matches the addresses connections go to, not names (resolve it and list its addresses)"
        ));
    }
    Err(format!("invalid IP address \"{host}\" ({FORMS})"))
}

/// Whether `host` could be a DNS name (letters, digits, '-', '.'; not all digits
/// and dots, which would be a malformed IPv4 address instead).
fn looks_like_hostname(host: &str) -> bool {
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && host.bytes().any(|b| b.is_ascii_alphabetic())
}

/// Parses `address/prefix`. Host bits must be zero: `10.0.0.5/8` is more likely a
/// typo for `10.0.0.5/32` than a way to write `10.0.0.0/8`, so we ask.
fn parse_network(text: &str) -> Result<IpNet, String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("invalid network \"{text}\""))?;
    let ip = parse_ip(addr)?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("invalid prefix length \"{prefix}\" in network \"{text}\""))?;
    let net = match ip {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new(v4, prefix).map_err(|_| {
            format!("prefix length /{prefix} is too long for IPv4 network \"{text}\" (at most /32)")
        })?),
        IpAddr::V6(v6) => {
            let net = Ipv6Net::new(v6, prefix).map_err(|_| {
                format!("prefix length /{prefix} is too long for IPv6 network \"{text}\" (at most /128)")
            })?;
            canonical_network(net, text)?
        }
    };
    if net.trunc() != net {
        return Err(format!(
            "network \"{text}\" has host bits set: write \"{}\" for the network, or a single address without a prefix",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Turns an IPv6 network inside `::ffff:0:0/96` into the IPv4 network it stands
/// for, because connections are matched with mapped addresses turned into IPv4.
fn canonical_network(net: Ipv6Net, text: &str) -> Result<IpNet, String> {
    let mapped = Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
        .expect("/96 is a valid IPv6 prefix length");
    if !mapped.contains(&net.network()) && !net.contains(&mapped.network()) {
        return Ok(IpNet::V6(net));
    }
    if net.prefix_len() < 96 {
        // Such a network mixes IPv4-mapped and real IPv6 addresses; nobody means that.
        return Err(format!(
            "network \"{text}\" spans both IPv4-mapped and other IPv6 addresses: write the IPv4 part as an IPv4 network, or use *:PORT for any host"
        ));
    }
    let v4: Ipv4Addr = net
        .network()
        .to_ipv4_mapped()
        .expect("an address inside ::ffff:0:0/96 is IPv4-mapped");
    let v4net = Ipv4Net::new(v4, net.prefix_len() - 96)
        .expect("a prefix of at most 128 - 96 = 32 bits is valid for IPv4");
    Ok(IpNet::V4(v4net))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(text: &str) -> Destination {
        text.parse()
            .unwrap_or_else(|e| panic!("{text} should parse: {e}"))
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().expect("test socket address")
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            dest("10.0.0.5:5432"),
            Destination::Exact(sa("10.0.0.5:5432"))
        );
        assert_eq!(dest("[::1]:5432"), Destination::Exact(sa("[::1]:5432")));
        assert_eq!(
            dest("10.0.0.0/8:5432"),
            Destination::Network {
                net: "10.0.0.0/8".parse().expect("net"),
                port: 5432
            }
        );
        assert_eq!(
            dest("[fd00::/8]:5432"),
            Destination::Network {
                net: "fd00::/8".parse().expect("net"),
                port: 5432
            }
        );
        assert_eq!(dest("*:5432"), Destination::AnyHost { port: 5432 });
        assert_eq!(dest(" 10.0.0.5:1 "), Destination::Exact(sa("10.0.0.5:1")));
        assert_eq!(dest("10.0.0.5:65535").port(), 65535);
    }

    #[test]
    fn normalises_ipv4_mapped_addresses() {
        assert_eq!(
            dest("[::ffff:10.0.0.1]:5432"),
            Destination::Exact(sa("10.0.0.1:5432"))
        );
        assert_eq!(
            dest("[::ffff:10.0.0.0/104]:5432"),
            Destination::Network {
                net: "10.0.0.0/8".parse().expect("net"),
                port: 5432
            }
        );
        assert!("[::/64]:5432".parse::<Destination>().is_err());
    }

    #[test]
    fn rejects_bad_addresses() {
        let cases = [
            ("db.example.com:5432", "host name"),
            ("localhost:5432", "host name"),
            ("10.0.0.5:0", "out of range"),
            ("10.0.0.5:70000", "out of range"),
            ("10.0.0.5:http", "invalid port"),
            ("10.0.0.5", "missing port"),
            ("10.0.0.5:", "missing port"),
            ("::1:5432", "brackets"),
            ("[::1]5432", "missing port after ']'"),
            ("[::1:5432", "unclosed"),
            ("10.0.0.0/33:5432", "too long"),
            ("10.0.0.0/x:5432", "invalid prefix"),
            ("[fd00::/129]:5432", "too long"),
            ("10.0.0.5/8:5432", "host bits"),
            ("10.0.0.256:5432", "invalid IP address"),
            ("", "empty"),
        ];
        for (text, expected) in cases {
            match text.parse::<Destination>() {
                Ok(d) => panic!("{text:?} should be rejected, got {d:?}"),
                Err(e) => assert!(e.contains(expected), "{text:?}: {e:?} lacks {expected:?}"),
            }
        }
    }

    #[test]
    fn matches_addresses() {
        let exact = dest("10.0.0.5:5432");
        assert!(exact.matches(sa("10.0.0.5:5432")));
        assert!(exact.matches(sa("[::ffff:10.0.0.5]:5432")));
        assert!(!exact.matches(sa("10.0.0.5:5433")));
        assert!(!exact.matches(sa("10.0.0.6:5432")));

        let net = dest("10.0.0.0/8:5432");
        assert!(net.matches(sa("10.255.1.2:5432")));
        assert!(net.matches(sa("[::ffff:10.1.1.1]:5432")));
        assert!(!net.matches(sa("11.0.0.1:5432")));
        assert!(!net.matches(sa("10.0.0.1:80")));

        let v6 = dest("[fd00::/8]:5432");
        assert!(v6.matches(sa("[fd12::1]:5432")));
        assert!(!v6.matches(sa("[fe80::1]:5432")));

        let any = dest("*:5432");
        assert!(any.matches(sa("192.0.2.1:5432")));
        assert!(any.matches(sa("[2001:db8::1]:5432")));
        assert!(!any.matches(sa("192.0.2.1:5431")));
    }

    #[test]
    fn displays_in_config_syntax() {
        for text in [
            "10.0.0.5:5432",
            "[::1]:5432",
            "10.0.0.0/8:5432",
            "[fd00::/8]:5432",
            "*:5432",
        ] {
            assert_eq!(dest(text).to_string(), text);
        }
    }
}
