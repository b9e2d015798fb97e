//! What the collector adds to every event of a request: browser, OS and device from the
//! User-Agent, the stored (anonymised) address, and the cookieless visitor id, whose daily
//! key lives only in memory.

use std::net::IpAddr;

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
}

/// Browser, OS and device class (`desktop`, `mobile`, `tablet`, `bot`, `other`).
pub fn parse_user_agent(ua: &str) -> (String, String, String) {
    if ua.is_empty() {
        return (String::new(), String::new(), "other".into());
    }
    match woothee::parser::Parser::new().parse(ua) {
        Some(r) => {
            let device = match r.category {
                "pc" => "desktop",
                "smartphone" | "mobilephone" => {
                    if ua.contains("iPad") || (ua.contains("Android") && !ua.contains("Mobile")) {
                        "tablet"
                    } else {
                        "mobile"
                    }
                }
                "crawler" => "bot",
                _ => "other",
            };
            let name = |s: &str| {
                if s == woothee::woothee::VALUE_UNKNOWN {
                    String::new()
                } else {
                    s.to_string()
                }
            };
            (name(r.name), name(r.os), device.to_string())
        }
        None => (String::new(), String::new(), "other".into()),
    }
}

/// Keeps the network, drops the host: IPv4 /24, IPv6 /48.
pub fn anonymize_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return anonymize_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
        }
    }
}

/// The cookieless visitor key: random per UTC day, in memory only, never written anywhere, so
/// yesterday's visitor ids cannot be recomputed or linked to today's.
#[derive(Debug)]
pub struct DailySalt {
    current: std::sync::Mutex<(i64, [u8; 32])>,
}

impl DailySalt {
    pub(super) fn new() -> Self {
        Self {
            current: std::sync::Mutex::new((i64::MIN, [0; 32])),
        }
    }

    fn key_for_day(&self, day: i64) -> [u8; 32] {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.0 != day {
            *cur = (day, rand::random());
        }
        cur.1
    }

    pub(super) fn visitor_id(&self, ctx: &RequestContext) -> String {
        let day = ctx.received_at_ms.div_euclid(86_400_000);
        let mut h = blake3::Hasher::new_keyed(&self.key_for_day(day));
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
}
