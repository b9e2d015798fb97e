//! The report SQL and how its parameters become literals.
//!
//! The statements are the `<!-- query: NAME -->` blocks of `docs/queries.md`, compiled into the
//! binary with `include_str!` and cut out at first use: the document analysts read is the
//! code the API runs, so the two cannot drift (`tests/chdb/analytics.py` runs the same blocks
//! against chDB and 18.16).
//!
//! Parameters are written `{name:Type}`. ClickHouse 18.16 has no query parameters, so
//! [`bind`] substitutes literals, with the rendering of `tests/chdb/analytics.py`: `String` as
//! a quoted literal with `\` and `'` backslash-escaped, `Date` as `toDate('YYYY-MM-DD')`,
//! `UInt32` as a decimal number. A parameter the statement names but the caller did not pass,
//! or passed with another type, is an error, never an empty substitution.

use std::collections::HashMap;
use std::sync::LazyLock;

const QUERIES_MD: &str = include_str!("../../docs/queries.md");

/// The reports the API serves, by block name in `docs/queries.md`.
pub const PAGES: &str = "pages";
pub const HEATMAP: &str = "heatmap";
pub const ELEMENTS: &str = "elements";
pub const SCROLL: &str = "scroll";
pub const FOLD: &str = "fold";
pub const SITE_TOTALS: &str = "site_totals";

static BLOCKS: LazyLock<HashMap<&'static str, &'static str>> = LazyLock::new(|| blocks(QUERIES_MD));

/// Every `<!-- query: NAME -->` followed by a ```` ```sql ```` fence, by name.
pub fn blocks(md: &'static str) -> HashMap<&'static str, &'static str> {
    let mut out = HashMap::new();
    let mut rest = md;
    while let Some(i) = rest.find("<!-- query: ") {
        rest = &rest[i + "<!-- query: ".len()..];
        let Some(end) = rest.find(" -->") else { break };
        let name = &rest[..end];
        rest = &rest[end + " -->".len()..];
        // As tests/chdb/analytics.py reads them: the fence follows the marker, only blank
        // space between (a marker quoted in prose is not a block).
        let Some(body) = rest.trim_start().strip_prefix("```sql\n") else {
            continue;
        };
        rest = body;
        let Some(close) = rest.find("```") else { break };
        out.insert(name, rest[..close].trim());
        rest = &rest[close + 3..];
    }
    out
}

/// The statement of report `name`, with its placeholders.
///
/// # Panics
/// If `docs/queries.md` lost the block; a unit test checks every name the API uses.
pub fn statement(name: &str) -> &'static str {
    BLOCKS
        .get(name)
        .unwrap_or_else(|| panic!("docs/queries.md has no `<!-- query: {name} -->` block"))
}

/// A UTC day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(pub i64);

impl Day {
    /// The first and last day a ClickHouse `Date` holds on every server we support.
    pub const MIN_YEAR: i64 = 1970;
    pub const MAX_YEAR: i64 = 2105;

    /// Parses `YYYY-MM-DD` (a real calendar day between 1970 and 2105).
    pub fn parse(s: &str) -> Option<Day> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = &s[r];
            part.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| part.parse().ok())
                .flatten()
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if !(Self::MIN_YEAR..=Self::MAX_YEAR).contains(&y) || !(1..=12).contains(&m) {
            return None;
        }
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let days_in_month = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if d < 1 || d > days_in_month[(m - 1) as usize] {
            return None;
        }
        Some(Day(days_from_civil(y, m, d)))
    }

    /// `YYYY-MM-DD`.
    pub fn format(self) -> String {
        let (y, m, d) = civil_from_days(self.0);
        format!("{y:04}-{m:02}-{d:02}")
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.format())
    }
}

// Howard Hinnant's algorithms (http://howardhinnant.github.io/date_algorithms.html).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// A parameter value, typed as the statement's `{name:Type}` expects it.
#[derive(Debug, Clone)]
pub enum Param {
    String(String),
    Date(Day),
    UInt32(u32),
}

impl Param {
    fn type_name(&self) -> &'static str {
        match self {
            Param::String(_) => "String",
            Param::Date(_) => "Date",
            Param::UInt32(_) => "UInt32",
        }
    }

    fn render(&self, out: &mut String) {
        match self {
            Param::String(s) => quote(s, out),
            Param::Date(d) => {
                out.push_str("toDate('");
                out.push_str(&d.format());
                out.push_str("')");
            }
            Param::UInt32(n) => out.push_str(&n.to_string()),
        }
    }
}

/// A ClickHouse string literal: `'` and `\` escaped with a backslash, everything else as is.
pub fn quote(s: &str, out: &mut String) {
    out.push('\'');
    for c in s.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("parameter {0} is used by the statement but was not given")]
    Missing(String),
    #[error("parameter {name} is {wanted} in the statement, given as {given}")]
    WrongType {
        name: String,
        wanted: String,
        given: &'static str,
    },
}

/// Fills `{{db}}` and every `{name:Type}` of `sql` with literals.
pub fn bind(sql: &str, db: &str, params: &[(&str, Param)]) -> Result<String, BindError> {
    let sql = sql.replace("{{db}}", db);
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql.as_str();
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let placeholder = after.find('}').and_then(|close| {
            let (name, typ) = after[..close].split_once(':')?;
            let ident = |s: &str| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            };
            (ident(name) && ident(typ)).then_some((name, typ, close))
        });
        let Some((name, typ, close)) = placeholder else {
            out.push('{');
            rest = after;
            continue;
        };
        let value = params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| BindError::Missing(name.to_string()))?;
        if value.type_name() != typ {
            return Err(BindError::WrongType {
                name: name.to_string(),
                wanted: typ.to_string(),
                given: value.type_name(),
            });
        }
        value.render(&mut out);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_is_in_docs_queries_md() {
        for name in [PAGES, HEATMAP, ELEMENTS, SCROLL, FOLD, SITE_TOTALS] {
            let sql = statement(name);
            assert!(sql.starts_with("SELECT"), "{name}: {sql}");
            // The API's invariant: reports read rollups, never raw rows.
            assert!(!sql.contains("{{db}}.events"), "{name} reads raw events");
        }
    }

    #[test]
    fn literals_are_escaped_like_the_analytics_test() {
        let got = bind(
            "SELECT * FROM {{db}}.t WHERE p = {path:String} AND d >= {from:Date} LIMIT {limit:UInt32} AND q = {path:String}",
            "clicktrail",
            &[
                ("path", Param::String(r"/a'b\c?{x:String}".into())),
                ("from", Param::Date(Day::parse("2024-02-29").unwrap())),
                ("limit", Param::UInt32(7)),
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            r"SELECT * FROM clicktrail.t WHERE p = '/a\'b\\c?{x:String}' AND d >= toDate('2024-02-29') LIMIT 7 AND q = '/a\'b\\c?{x:String}'"
        );
    }

    #[test]
    fn a_missing_or_mistyped_parameter_is_an_error() {
        assert_eq!(
            bind("{a:String}", "db", &[]),
            Err(BindError::Missing("a".into()))
        );
        assert!(matches!(
            bind("{a:Date}", "db", &[("a", Param::UInt32(1))]),
            Err(BindError::WrongType { .. })
        ));
        // Not placeholders: braces in other positions stay as they are.
        assert_eq!(bind("{ x } {a b}", "db", &[]).unwrap(), "{ x } {a b}");
    }

    #[test]
    fn days_parse_strictly_and_round_trip() {
        for s in ["1970-01-01", "2024-02-29", "2024-06-30", "2105-12-31"] {
            assert_eq!(Day::parse(s).unwrap().format(), s);
        }
        assert_eq!(Day::parse("1970-01-02"), Some(Day(1)));
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-6-1",
            "1969-12-31",
            "2106-01-01",
            "2024-06-31",
            "+024-06-01",
            "2024/06/01",
            "",
        ] {
            assert_eq!(Day::parse(bad), None, "{bad}");
        }
    }
}
