//! What of a page is stored: URLs and referrers without query string, fragment and userinfo
//! (except allowlisted parameters), and click text only for the configured element tags.
//!
//! Invariants:
//! - A stored URL keeps only `utm_*` parameters and those of `privacy.keep_query_params` and
//!   of its site's `[[sites]] keep_query_params`, in their original order and encoding; its `#fragment` only with `privacy.keep_fragment`;
//!   never a user name or password.
//! - A URL that needs no change is stored byte for byte as sent (no re-serialisation).
//! - Click text is kept only when the selector's last element names a tag of
//!   `privacy.text_for_tags`, or names no tag at all (`#id`: the snippet sends text only for
//!   links and buttons, so it already applied the rule).

use crate::config::PrivacyConfig;

/// The URL and text rules of `[privacy]`, prepared once.
#[derive(Debug, Clone)]
pub(super) struct PagePolicy {
    keep_params: Vec<String>,
    keep_fragment: bool,
    /// `None`: text of any element.
    text_tags: Option<Vec<String>>,
}

impl PagePolicy {
    pub(super) fn new(p: &PrivacyConfig) -> Self {
        Self {
            keep_params: p.keep_query_params.clone(),
            keep_fragment: p.keep_fragment,
            text_tags: (!p.text_for_tags.iter().any(|t| t == "*")).then(|| {
                p.text_for_tags
                    .iter()
                    .map(|t| t.to_ascii_lowercase())
                    .collect()
            }),
        }
    }

    fn keeps_param(&self, site_params: &[String], pair: &str) -> bool {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        name.starts_with("utm_")
            || self.keep_params.iter().any(|k| k == name)
            || site_params.iter().any(|k| k == name)
    }

    /// The page URL as stored, from the parsed URL and the string the client sent;
    /// `site_params`: the site's own `keep_query_params`.
    pub(super) fn page_url(&self, site_params: &[String], sent: &str, mut url: url::Url) -> String {
        let query_ok = url
            .query()
            .is_none_or(|q| q.split('&').all(|p| self.keeps_param(site_params, p)));
        let clean = query_ok
            && (self.keep_fragment || url.fragment().is_none())
            && url.username().is_empty()
            && url.password().is_none();
        if clean {
            return sent.to_string();
        }
        if let Some(q) = url.query() {
            let kept: Vec<&str> = q
                .split('&')
                .filter(|p| !p.is_empty() && self.keeps_param(site_params, p))
                .collect();
            let kept = kept.join("&");
            url.set_query((!kept.is_empty()).then_some(kept.as_str()));
        }
        if !self.keep_fragment {
            url.set_fragment(None);
        }
        // Only fails for URLs that cannot have a host, which page URLs (http/https) always do.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.into()
    }

    /// A referrer as stored: an http(s) URL cleaned like a page URL; anything else (an app's
    /// `android-app://` referrer, garbage) cut at its first `?` or `#`.
    pub(super) fn referrer(&self, site_params: &[String], sent: &str) -> String {
        match url::Url::parse(sent) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                self.page_url(site_params, sent, u)
            }
            _ => sent
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// Whether the text of the element `selector` names is kept.
    pub(super) fn keeps_text(&self, selector: &str) -> bool {
        let Some(tags) = &self.text_tags else {
            return true;
        };
        // The last compound selector: after the last combinator.
        let last = selector
            .rsplit(['>', ' ', '+', '~'])
            .find(|s| !s.is_empty())
            .unwrap_or("");
        let tag_len = last
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
            .count();
        if tag_len == 0 {
            // `#id`, `.class`, `[attr]`: no tag named (see the module invariants).
            return last.starts_with('#');
        }
        let tag = &last[..tag_len];
        tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(keep: &[&str], fragment: bool) -> PagePolicy {
        PagePolicy::new(&PrivacyConfig {
            keep_query_params: keep.iter().map(|s| s.to_string()).collect(),
            keep_fragment: fragment,
            ..PrivacyConfig::default()
        })
    }

    fn page(p: &PagePolicy, s: &str) -> String {
        p.page_url(&[], s, url::Url::parse(s).unwrap())
    }

    #[test]
    fn urls_lose_query_fragment_and_userinfo_but_utm_and_allowlisted_params() {
        let p = policy(&["gclid"], false);
        let cases = [
            ("https://shop.example/cart", "https://shop.example/cart"),
            ("https://shop.example", "https://shop.example"),
            (
                "https://shop.example/cart?email=a%40b.c&token=x",
                "https://shop.example/cart",
            ),
            (
                "https://shop.example/?utm_source=news&email=a%40b.c&utm_campaign=w%20k&gclid=G1",
                "https://shop.example/?utm_source=news&utm_campaign=w%20k&gclid=G1",
            ),
            (
                "https://shop.example/a#reset-token=xyz",
                "https://shop.example/a",
            ),
            ("https://u:pw@shop.example/a", "https://shop.example/a"),
            (
                "https://shop.example/a?utm_medium=x",
                "https://shop.example/a?utm_medium=x",
            ),
            (
                "https://shop.example/a?gclidx=1&gclid",
                "https://shop.example/a?gclid",
            ),
            ("https://shop.example/a?", "https://shop.example/a"),
        ];
        for (sent, want) in cases {
            assert_eq!(page(&p, sent), want, "{sent}");
        }
        let hash = policy(&[], true);
        assert_eq!(
            page(&hash, "https://a.b/#/cart?x=1"),
            "https://a.b/#/cart?x=1"
        );
        assert_eq!(page(&hash, "https://a.b/?q=1#/cart"), "https://a.b/#/cart");
    }

    #[test]
    fn a_site_keeps_its_own_params_besides_the_global_ones() {
        let p = policy(&["gclid"], false);
        let search = ["q".to_string()];
        let sent = "https://shop.example/search?q=boots&email=a%40b.c&gclid=G";
        assert_eq!(
            p.page_url(&search, sent, url::Url::parse(sent).unwrap()),
            "https://shop.example/search?q=boots&gclid=G"
        );
        // Another site (no params of its own) loses q.
        assert_eq!(page(&p, sent), "https://shop.example/search?gclid=G");
        assert_eq!(
            p.referrer(&search, "https://shop.example/search?q=boots&x=1"),
            "https://shop.example/search?q=boots"
        );
    }

    #[test]
    fn referrers_are_cleaned_like_urls() {
        let p = policy(&[], false);
        assert_eq!(
            p.referrer(&[], "https://search.example/?q=my+illness&utm_source=x"),
            "https://search.example/?utm_source=x"
        );
        assert_eq!(p.referrer(&[], ""), "");
        assert_eq!(
            p.referrer(&[], "android-app://com.mail/?to=a#b"),
            "android-app://com.mail/"
        );
    }

    #[test]
    fn text_is_kept_for_links_and_buttons_only_by_default() {
        let p = policy(&[], false);
        for (sel, keep) in [
            ("main>nav>button:nth-of-type(2)", true),
            ("#tabs>a:nth-of-type(2)", true),
            ("main > button.buy", true),
            ("#buy", true),
            ("body", false),
            ("main>div>p", false),
            ("#form>label", false),
            ("main>section>SPAN", false),
            ("", false),
        ] {
            assert_eq!(p.keeps_text(sel), keep, "{sel}");
        }
        let any = PagePolicy::new(&PrivacyConfig {
            text_for_tags: vec!["*".into()],
            ..PrivacyConfig::default()
        });
        assert!(any.keeps_text("main>div>p"));
    }
}
