//! What a User-Agent says: browser, OS, device class, and whether it is a known crawler or
//! headless browser, parsed once per distinct string and kept in an LRU cache.
//!
//! Bot detection is the `isbot` crate's list (patterns of the isbot project, compiled into one
//! regular expression: Googlebot and other crawlers, HeadlessChrome, PhantomJS,
//! Chrome-Lighthouse, curl, wget, python-requests, ...) or woothee's `crawler` category.
//! An empty User-Agent is not a bot: server-side clients (and the tests) often send none, and
//! the snippet always runs in a browser that sends one.
//!
//! Invariant: a cached [`Agent`] is exactly what [`parse_user_agent`] and the bot list say for
//! that string; the cache changes the cost, never the answer.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// The parse of one User-Agent string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub browser: String,
    pub os: String,
    /// `desktop`, `mobile`, `tablet`, `bot` or `other`; `bot` for every detected bot.
    pub device: String,
    pub bot: bool,
}

/// Browser, OS and device class (`desktop`, `mobile`, `tablet`, `bot`, `other`), by woothee.
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

/// The User-Agent parser with its cache; one per validator, shared by all requests.
pub struct UserAgents {
    bots: isbot::Bots,
    cache: Mutex<lru::LruCache<Box<str>, Arc<Agent>>>,
}

impl std::fmt::Debug for UserAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserAgents").finish_non_exhaustive()
    }
}

impl UserAgents {
    /// A parser caching up to `capacity` distinct strings (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            bots: isbot::Bots::default(),
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// The parse of `ua`, from the cache when this string was seen recently.
    pub fn parse(&self, ua: &str) -> Arc<Agent> {
        if let Some(a) = self.lock().get(ua) {
            return a.clone();
        }
        // Parsed outside the lock: a regex over the whole list and woothee's rules cost
        // microseconds, and two threads parsing the same new string agree anyway.
        let agent = Arc::new(self.parse_uncached(ua));
        self.lock().put(ua.into(), agent.clone());
        agent
    }

    /// The parse without the cache (the benchmark's baseline).
    pub fn parse_uncached(&self, ua: &str) -> Agent {
        let (browser, os, device) = parse_user_agent(ua);
        let bot = device == "bot" || (!ua.is_empty() && self.bots.is_bot(ua));
        Agent {
            browser,
            os,
            device: if bot { "bot".into() } else { device },
            bot,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<Box<str>, Arc<Agent>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

    #[test]
    fn crawlers_and_headless_browsers_are_bots_and_browsers_are_not() {
        let ua = UserAgents::new(16);
        for bot in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.71 Safari/537.36",
            "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/78.0.3904.97 Safari/537.36 Chrome-Lighthouse",
            "curl/8.5.0",
            "Wget/1.21.4",
            "python-requests/2.31.0",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        ] {
            let a = ua.parse(bot);
            assert!(a.bot, "{bot}");
            assert_eq!(a.device, "bot", "{bot}");
        }
        for browser in [
            CHROME,
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            "",
        ] {
            assert!(!ua.parse(browser).bot, "{browser}");
        }
        assert_eq!(ua.parse(CHROME).browser, "Chrome");
        assert_eq!(ua.parse(CHROME).device, "desktop");
    }

    #[test]
    fn the_cache_answers_like_the_parser_and_stays_bounded() {
        let ua = UserAgents::new(2);
        let first = ua.parse(CHROME);
        assert!(
            Arc::ptr_eq(&first, &ua.parse(CHROME)),
            "second parse is a hit"
        );
        assert_eq!(*first, ua.parse_uncached(CHROME));
        ua.parse("curl/8");
        ua.parse("Wget/1");
        assert_eq!(ua.lock().len(), 2);
        assert!(
            !Arc::ptr_eq(&first, &ua.parse(CHROME)),
            "evicted, parsed again"
        );
    }
}
