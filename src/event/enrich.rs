//! What the collector adds to every event of a request: browser, OS and device from the
//! User-Agent (`bots.rs`), the stored (anonymised) address, and the cookieless visitor id,
//! keyed by the salt of its day (`salt.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::salt::Salts;
use super::validate::RequestContext;

/// Per-request enrichment computed once: parsing the user agent and hashing the visitor are
/// the same for every event of a batch.
pub(super) struct RequestEnrichment {
    pub(super) browser: String,
    pub(super) os: String,
    pub(super) device: String,
    pub(super) user_agent: String,
    pub(super) ip: String,
    pub(super) cookieless_visitor: String,
    pub(super) bot: bool,
}

/// Keeps the network, drops the host: IPv4 /24, IPv6 /48. An IPv6 address that carries a
/// client's IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) is stored as that IPv4 address's
/// /24: its /48 would keep the whole IPv4 address (6to4), or name a relay, not the client.
pub fn anonymize_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return anonymize_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
        }
    }
}

/// The client IPv4 address inside an IPv6 one, where the address format puts one.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let from = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match (s[0], s[1]) {
        // 6to4 (RFC 3056): 2002:AABB:CCDD::/48 is the site of IPv4 AA.BB.CC.DD.
        (0x2002, _) => Some(from(s[1], s[2])),
        // Teredo (RFC 4380): 2001:0::/32, the client's IPv4 in the last 32 bits, inverted.
        (0x2001, 0x0000) => Some(from(!s[6], !s[7])),
        // NAT64 well-known prefix (RFC 6052): 64:ff9b::/96.
        (0x0064, 0xff9b) if s[2..6] == [0, 0, 0, 0] => Some(from(s[6], s[7])),
        _ => None,
    }
}

/// The cookieless visitor id: a keyed hash of (site, client address, user agent) with the
/// salt of the request's receive day ([`Salts`]).
pub(super) fn cookieless_visitor(salts: &Salts, ctx: &RequestContext) -> String {
    let day = ctx.received_at_ms.div_euclid(86_400_000);
    let mut h = blake3::Hasher::new_keyed(&salts.key_for_day(day));
    h.update(ctx.site.as_bytes());
    h.update(&[0]);
    // The raw address, not the anonymised one: the hash is already one-way and keyed, and
    // the /24 alone would merge every visitor of an office into one.
    if let Some(ip) = ctx.client_ip {
        h.update(ip.to_string().as_bytes());
    }
    h.update(&[0]);
    h.update(ctx.user_agent.as_bytes());
    let hash = h.finalize();
    let mut out = String::with_capacity(17);
    out.push('c');
    for b in &hash.as_bytes()[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
