//! # The read-only report API: `GET /v1/query/{pages,heatmap,elements,scroll}`
//!
//! Job: answer an analyst's question about one site (which pages, where people click, which
//! elements, how far they scroll) from the rollups of `migrations/0002_analytics.sql`, as JSON
//! or, for heatmaps, as a PNG. Wire format: docs/api.md ("Query API").
//!
//! Invariants:
//! - **Read-only.** Every statement goes out on a client with the ClickHouse setting
//!   `readonly=1`, so the server refuses anything but reads whatever the SQL says.
//! - **Rollups only.** Each report runs one statement of `docs/queries.md` (see [`sql`]), all
//!   over the `*_daily` / `*_hourly` rollups; none reads raw `events` rows (a unit test checks).
//!   The SQL is compiled in from that file, so the documented query is the one that runs.
//! - **Bounded.** A report runs at most `query.timeout` (ClickHouse's `max_execution_time`, and
//!   the same deadline on the client side), over at most [`MAX_RANGE_DAYS`] days, and returns at
//!   most `query.max_rows` rows (`query.max_cells` heatmap cells), by `LIMIT`.
//! - **One site per token.** A request names its site; the bearer token must be one of that
//!   site's `read_tokens`. Tokens are compared as BLAKE3 hashes in constant time, every
//!   configured token every time, so timing says nothing about which token or how much of it
//!   matched. An unauthenticated caller learns nothing about which sites exist: the token is
//!   checked (401) before the parameters (400), and the site it belongs to after (403).
//!
//! Architecture invariant: this module knows nothing of ingestion; it shares only the
//! configuration and the ClickHouse client constructor with the rest of the collector.
//!
//! (Over 500 lines: four handlers, each with its parameter checks and answer shape; the SQL is
//! in `sql.rs`, the PNG in `image.rs`.)

mod image;
pub mod sql;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::{Config, QueryConfig};
use crate::http::{ApiError, AppState};
use sql::{Day, Param};

pub use image::{render_png, PngLayout, MAX_PNG_HEIGHT, MAX_PNG_WIDTH, MIN_PNG_WIDTH};

/// Longest range a report covers, both ends included.
pub const MAX_RANGE_DAYS: i64 = 366;
/// Rows of `pages` and `elements` when the caller gives no `limit`.
pub const DEFAULT_LIMIT: u32 = 100;
/// PNG width when the caller gives none.
pub const DEFAULT_PNG_WIDTH: u32 = 500;
/// The device classes of the rollups (`device` parameter; absent = all).
pub const DEVICES: &[&str] = &["mobile", "tablet", "desktop", "unknown"];
/// Heatmap kinds (`kind` parameter; absent = `click`).
pub const KINDS: &[&str] = &["click", "rage", "dead", "error"];

/// What the report handlers share: the read-only client and who may read what.
pub struct Reports {
    client: ::clickhouse::Client,
    database: String,
    limits: QueryConfig,
    max_path_len: usize,
    sites: Vec<SiteKeys>,
    slow: crate::slow::SlowCalls,
}

struct SiteKeys {
    key: String,
    tokens: Vec<[u8; 32]>,
}

impl Reports {
    pub fn new(config: &Config, metrics: crate::metrics::Metrics) -> Self {
        let secs = config.query.timeout.as_secs().max(1);
        let client = crate::clickhouse::client(&config.clickhouse)
            .with_setting("readonly", "1")
            .with_setting("max_execution_time", secs.to_string())
            .with_setting("output_format_json_quote_64bit_integers", "0");
        Self {
            client,
            database: config.clickhouse.database.clone(),
            limits: config.query.clone(),
            max_path_len: config.limits.max_url_len,
            slow: crate::slow::SlowCalls::new(&config.observability, metrics),
            sites: config
                .sites
                .iter()
                .map(|s| SiteKeys {
                    key: s.key.clone(),
                    tokens: s
                        .read_tokens
                        .iter()
                        .map(|t| *blake3::hash(t.expose().as_bytes()).as_bytes())
                        .collect(),
                })
                .collect(),
        }
    }

    /// The index of the site whose token `headers` carry: 401 without a valid token.
    fn authenticate(&self, headers: &HeaderMap) -> Result<usize, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::MissingToken)?;
        let presented = blake3::hash(token.as_bytes());
        let mut owner = None;
        for (i, site) in self.sites.iter().enumerate() {
            for t in &site.tokens {
                // No early exit: every token is compared on every request.
                if bool::from(presented.as_bytes().ct_eq(t)) {
                    owner = Some(i);
                }
            }
        }
        owner.ok_or(ApiError::InvalidToken)
    }

    /// Runs a bound statement and decodes its JSONEachRow lines.
    async fn run<T: DeserializeOwned>(
        &self,
        report: &'static str,
        params: &[(&str, Param)],
    ) -> Result<Vec<T>, ApiError> {
        let sql = sql::bind(sql::statement(report), &self.database, params).map_err(|e| {
            tracing::error!(report, error = %e, "report statement and parameters disagree");
            ApiError::QueryUnavailable
        })?;
        let timeout = self.limits.timeout;
        let fetch = async {
            let mut cursor = self.client.query_raw(&sql).fetch_bytes("JSONEachRow")?;
            cursor.collect().await
        };
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(timeout, fetch).await;
        let took = started.elapsed();
        if self.slow.is_slow(crate::slow::SlowKind::Query, took) {
            // The request's span carries its id.
            tracing::warn!(
                kind = "query",
                report,
                elapsed_ms = took.as_millis() as u64,
                bytes = answer
                    .as_ref()
                    .map_or(0, |r| r.as_ref().map_or(0, |b| b.len())),
                ok = matches!(answer, Ok(Ok(_))),
                "slow report query"
            );
        }
        let bytes = match answer {
            Err(_) => return Err(ApiError::QueryTimeout(timeout)),
            Ok(Err(e)) => {
                let msg = e.to_string();
                let code = crate::clickhouse::exception_code(&msg);
                if crate::clickhouse::codes::label(code) == "timeout" {
                    return Err(ApiError::QueryTimeout(timeout));
                }
                tracing::error!(report, error = %msg, "report query failed");
                return Err(ApiError::QueryUnavailable);
            }
            Ok(Ok(b)) => b,
        };
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l))
            .collect::<Result<Vec<T>, _>>()
            .map_err(|e| {
                tracing::error!(report, error = %e, "report answer not understood");
                ApiError::QueryUnavailable
            })
    }
}

/// The query string, parameter by parameter: each known at most once, unknown ones refused.
struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    fn parse(raw: Option<&str>, allowed: &[&'static str]) -> Result<Self, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let Some(&name) = allowed.iter().find(|a| **a == k) else {
                return Err(bad(
                    "query",
                    format!(
                        "unknown parameter `{}`; this report takes {}",
                        truncate(&k, 40),
                        allowed.join(", ")
                    ),
                ));
            };
            if pairs.iter().any(|(n, _)| n == name) {
                return Err(bad(name, "given twice"));
            }
            pairs.push((name.to_string(), v.into_owned()));
        }
        Ok(Self { pairs })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &'static str) -> Result<&str, ApiError> {
        self.get(name).ok_or_else(|| bad(name, "required"))
    }
}

fn bad(param: &'static str, problem: impl Into<String>) -> ApiError {
    ApiError::BadParameter {
        param,
        problem: problem.into(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// What every report is scoped by.
struct Scope {
    site: String,
    from: Day,
    to: Day,
    device: String,
}

impl Scope {
    fn params(&self) -> Vec<(&'static str, Param)> {
        vec![
            ("site", Param::String(self.site.clone())),
            ("from", Param::Date(self.from)),
            ("to", Param::Date(self.to)),
            ("device", Param::String(self.device.clone())),
        ]
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "site": self.site,
            "from": self.from.format(),
            "to": self.to.format(),
            "device": if self.device.is_empty() { None } else { Some(&self.device) },
        })
    }
}

/// The token's site (401 without a valid token) and the query string, in that order, so
/// a caller without a token learns nothing from parameter errors.
fn authorize(
    reports: &Reports,
    headers: &HeaderMap,
    raw: Option<&str>,
    allowed: &[&'static str],
) -> Result<(usize, Params), ApiError> {
    let owner = reports.authenticate(headers)?;
    Ok((owner, Params::parse(raw, allowed)?))
}

/// `GET /v1/live`'s check, the reports' rules: 401 without a valid token, then 400 for an
/// unknown parameter or site, then 403 when the site is not the token's. Returns the site.
pub(crate) fn authorize_live(
    reports: &Reports,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<String, ApiError> {
    let (owner, p) = authorize(reports, headers, raw, &["site"])?;
    let site = p.required("site")?;
    let Some(index) = reports.sites.iter().position(|s| s.key == site) else {
        return Err(bad(
            "site",
            format!("unknown site `{}`", truncate(site, 64)),
        ));
    };
    if index != owner {
        return Err(ApiError::TokenNotForSite(site.to_string()));
    }
    Ok(site.to_string())
}

/// The parameters every report has; 403 when the site is not the token's.
fn scope(reports: &Reports, owner: usize, p: &Params) -> Result<Scope, ApiError> {
    let site = p.required("site")?;
    let Some(index) = reports.sites.iter().position(|s| s.key == site) else {
        return Err(bad(
            "site",
            format!("unknown site `{}`", truncate(site, 64)),
        ));
    };
    if index != owner {
        return Err(ApiError::TokenNotForSite(site.to_string()));
    }
    let day = |name: &'static str| -> Result<Day, ApiError> {
        let v = p.required(name)?;
        Day::parse(v).ok_or_else(|| {
            bad(
                name,
                format!(
                    "`{}` is not a date: write YYYY-MM-DD, a UTC day from {}-01-01 to {}-12-31",
                    truncate(v, 20),
                    Day::MIN_YEAR,
                    Day::MAX_YEAR
                ),
            )
        })
    };
    let (from, to) = (day("from")?, day("to")?);
    if from > to {
        return Err(bad("from", format!("{from} is after to = {to}")));
    }
    if to.0 - from.0 + 1 > MAX_RANGE_DAYS {
        return Err(bad(
            "to",
            format!(
                "the range {from} .. {to} has {} days; at most {MAX_RANGE_DAYS}",
                to.0 - from.0 + 1
            ),
        ));
    }
    let device = match p.get("device") {
        None | Some("") => String::new(),
        Some(d) if DEVICES.contains(&d) => d.to_string(),
        Some(d) => {
            return Err(bad(
                "device",
                format!(
                    "`{}` is not a device class: one of {}",
                    truncate(d, 20),
                    DEVICES.join(", ")
                ),
            ))
        }
    };
    Ok(Scope {
        site: site.to_string(),
        from,
        to,
        device,
    })
}

/// A per-page report's request, checked: its query string, scope and path, and the statement's
/// parameters so far (the scope's and the path).
struct PageRequest {
    query: Params,
    scope: Scope,
    path: String,
    params: Vec<(&'static str, Param)>,
}

/// The start of every per-page report, in the order its refusals are documented: token and
/// parameters (401/400), the site (403), the path (400).
fn page_request(
    reports: &Reports,
    headers: &HeaderMap,
    raw: Option<&str>,
    allowed: &[&'static str],
) -> Result<PageRequest, ApiError> {
    let (owner, query) = authorize(reports, headers, raw, allowed)?;
    let scope = scope(reports, owner, &query)?;
    let path = path_param(reports, &query)?;
    let mut params = scope.params();
    params.push(("path", Param::String(path.clone())));
    Ok(PageRequest {
        query,
        scope,
        path,
        params,
    })
}

fn path_param(reports: &Reports, p: &Params) -> Result<String, ApiError> {
    let path = p.required("path")?;
    if !path.starts_with('/') {
        return Err(bad("path", "must start with `/` (the URL path, as stored)"));
    }
    if path.len() > reports.max_path_len {
        return Err(bad(
            "path",
            format!(
                "{} bytes long; at most {} (limits.max_url_len)",
                path.len(),
                reports.max_path_len
            ),
        ));
    }
    Ok(path.to_string())
}

fn limit_param(p: &Params, max: u32) -> Result<u32, ApiError> {
    match p.get("limit") {
        None => Ok(DEFAULT_LIMIT.min(max)),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad(
                "limit",
                format!("`{}` is not a number from 1 to {max}", truncate(v, 20)),
            )),
        },
    }
}

// ---------------------------------------------------------------- pages

#[derive(Debug, Deserialize)]
struct PageRow {
    path: String,
    views: u64,
    visitors: u64,
    bounces: u64,
    bounce_rate: Option<f64>,
    clicks: u64,
    rage_clicks: u64,
    dead_clicks: u64,
    error_clicks: u64,
    avg_max_scroll_pct: Option<f64>,
    median_engaged_s: Option<f64>,
}

/// The whole site over the range (`site_totals` in docs/queries.md).
#[derive(Debug, Deserialize, Serialize)]
struct SiteTotals {
    views: u64,
    visitors: u64,
    engaged: u64,
    bounces: u64,
    bounce_rate: Option<f64>,
    clicks: u64,
    rage_clicks: u64,
    dead_clicks: u64,
    error_clicks: u64,
}

impl SiteTotals {
    /// ClickHouse answers nan/inf as null through JSON; the API's figures are always numbers.
    fn finite(mut self) -> Self {
        self.bounce_rate = Some(self.bounce_rate.unwrap_or(0.0));
        self
    }
}

#[derive(Debug, Serialize)]
struct Page {
    path: String,
    views: u64,
    visitors: u64,
    bounces: u64,
    bounce_rate: f64,
    median_engaged_s: f64,
    avg_max_scroll_pct: f64,
    clicks: u64,
    rage_clicks: u64,
    dead_clicks: u64,
    error_clicks: u64,
}

/// `GET /v1/query/pages?site&from&to[&device][&limit]`
pub async fn pages(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let r = st.reports();
    let (owner, p) = authorize(
        r,
        &headers,
        q.as_deref(),
        &["site", "from", "to", "device", "limit"],
    )?;
    let scope = scope(r, owner, &p)?;
    let limit = limit_param(&p, r.limits.max_rows)?;
    let mut params = scope.params();
    params.push(("limit", Param::UInt32(limit)));
    let report = sql::PAGES;
    // Visitors merged across pages (the sum of the rows would count a visitor once per page),
    // asked at the same time: ClickHouse runs the two on separate cores.
    let total_params = scope.params();
    let (rows, totals): (Vec<PageRow>, Vec<SiteTotals>) = tokio::try_join!(
        r.run(report, &params),
        r.run(sql::SITE_TOTALS, &total_params)
    )?;
    let truncated = rows.len() as u64 >= u64::from(limit);
    let pages: Vec<Page> = rows
        .into_iter()
        .map(|row| Page {
            path: row.path,
            views: row.views,
            visitors: row.visitors,
            bounces: row.bounces,
            bounce_rate: row.bounce_rate.unwrap_or(0.0),
            median_engaged_s: row.median_engaged_s.unwrap_or(0.0),
            avg_max_scroll_pct: row.avg_max_scroll_pct.unwrap_or(0.0),
            clicks: row.clicks,
            rage_clicks: row.rage_clicks,
            dead_clicks: row.dead_clicks,
            error_clicks: row.error_clicks,
        })
        .collect();
    let mut body = scope.json();
    body["totals"] = json!(totals.into_iter().next().map(SiteTotals::finite));
    body["pages"] = json!(pages);
    body["truncated"] = json!(truncated);
    Ok(Json(body).into_response())
}

// ---------------------------------------------------------------- heatmap

#[derive(Debug, Deserialize)]
struct CellRow {
    cx: u32,
    cy: u32,
    n: u64,
}

/// One heatmap cell: column `x` (0..99 of the document width), band `y` (20 px of page y).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cell {
    pub x: u32,
    pub y: u32,
    pub count: u64,
}

/// `GET /v1/query/heatmap?site&path&from&to[&device][&kind][&format=png&width=W]`
pub async fn heatmap(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let r = st.reports();
    let PageRequest {
        query: p,
        scope,
        path,
        mut params,
    } = page_request(
        r,
        &headers,
        q.as_deref(),
        &[
            "site", "path", "from", "to", "device", "kind", "format", "width",
        ],
    )?;
    let kind = match p.get("kind") {
        None => "click",
        Some(k) if KINDS.contains(&k) => k,
        Some(k) => {
            return Err(bad(
                "kind",
                format!(
                    "`{}` is not a kind: one of {}",
                    truncate(k, 20),
                    KINDS.join(", ")
                ),
            ))
        }
    };
    let png = match p.get("format") {
        None | Some("json") => false,
        Some("png") => true,
        Some(f) => return Err(bad("format", format!("`{}`: json or png", truncate(f, 20)))),
    };
    let width = match p.get("width") {
        None => DEFAULT_PNG_WIDTH,
        Some(_) if !png => return Err(bad("width", "only with format=png")),
        Some(w) => match w.parse::<u32>() {
            Ok(n) if (MIN_PNG_WIDTH..=MAX_PNG_WIDTH).contains(&n) => n,
            _ => {
                return Err(bad(
                    "width",
                    format!(
                        "`{}` is not a width from {MIN_PNG_WIDTH} to {MAX_PNG_WIDTH} pixels",
                        truncate(w, 20)
                    ),
                ))
            }
        },
    };
    params.push(("kind", Param::String(kind.to_string())));
    params.push(("limit", Param::UInt32(r.limits.max_cells)));
    let rows: Vec<CellRow> = r.run(sql::HEATMAP, &params).await?;
    let truncated = rows.len() as u64 >= u64::from(r.limits.max_cells);
    let cells: Vec<Cell> = rows
        .into_iter()
        .map(|c| Cell {
            x: c.cx,
            y: c.cy,
            count: c.n,
        })
        .collect();
    if png {
        // Up to tens of megabytes of pixels: off the async workers.
        let (bytes, layout) = tokio::task::spawn_blocking(move || render_png(&cells, width))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "heatmap rendering failed");
                ApiError::QueryUnavailable
            })?;
        let mut resp = ([(header::CONTENT_TYPE, "image/png")], bytes).into_response();
        let h = resp.headers_mut();
        for (name, value) in [
            ("x-heatmap-bands", layout.bands.to_string()),
            ("x-heatmap-max", layout.max.to_string()),
            ("x-heatmap-truncated", truncated.to_string()),
        ] {
            if let Ok(v) = header::HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        return Ok(resp);
    }
    let total: u64 = cells.iter().map(|c| c.count).sum();
    let max = cells.iter().map(|c| c.count).max().unwrap_or(0);
    let mut body = scope.json();
    body["path"] = json!(path);
    body["kind"] = json!(kind);
    body["grid"] = json!({"columns": 100, "band_px": 20});
    body["cells"] = json!(cells);
    body["total"] = json!(total);
    body["max"] = json!(max);
    body["truncated"] = json!(truncated);
    Ok(Json(body).into_response())
}

// ---------------------------------------------------------------- elements

#[derive(Debug, Deserialize)]
struct ElementRow {
    selector: String,
    clicks: u64,
    rage_clicks: u64,
    dead_clicks: u64,
    error_clicks: u64,
    cells: Vec<u64>,
    unknown_position: u64,
    hot_x: Option<f64>,
    hot_y: Option<f64>,
}

/// `GET /v1/query/elements?site&path&from&to[&device][&limit]`
pub async fn elements(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let r = st.reports();
    let PageRequest {
        query: p,
        scope,
        path,
        mut params,
    } = page_request(
        r,
        &headers,
        q.as_deref(),
        &["site", "path", "from", "to", "device", "limit"],
    )?;
    let limit = limit_param(&p, r.limits.max_rows)?;
    params.push(("limit", Param::UInt32(limit)));
    let rows: Vec<ElementRow> = r.run(sql::ELEMENTS, &params).await?;
    let truncated = rows.len() as u64 >= u64::from(limit);
    let elements: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|e| {
            let positioned = e.clicks > e.unknown_position;
            json!({
                "selector": e.selector,
                "clicks": e.clicks,
                "rage_clicks": e.rage_clicks,
                "dead_clicks": e.dead_clicks,
                "error_clicks": e.error_clicks,
                "hotspot": if positioned {
                    json!({"x": e.hot_x.unwrap_or(0.0), "y": e.hot_y.unwrap_or(0.0)})
                } else {
                    serde_json::Value::Null
                },
                "cells": e.cells,
                "unknown_position": e.unknown_position,
            })
        })
        .collect();
    let mut body = scope.json();
    body["path"] = json!(path);
    body["elements"] = json!(elements);
    body["truncated"] = json!(truncated);
    Ok(Json(body).into_response())
}

// ---------------------------------------------------------------- scroll

#[derive(Debug, Deserialize)]
struct DepthRow {
    depth: u32,
    reached: u64,
    share: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct FoldRow {
    measured: u64,
    avg_fold_pct: Option<f64>,
}

/// `GET /v1/query/scroll?site&path&from&to[&device]`
pub async fn scroll(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let r = st.reports();
    let PageRequest {
        scope,
        path,
        params,
        ..
    } = page_request(
        r,
        &headers,
        q.as_deref(),
        &["site", "path", "from", "to", "device"],
    )?;
    // Both at once: ClickHouse runs the two on separate cores.
    let (rows, fold): (Vec<DepthRow>, Vec<FoldRow>) =
        tokio::try_join!(r.run(sql::SCROLL, &params), r.run(sql::FOLD, &params))?;
    let fold = fold.into_iter().next().filter(|f| f.measured > 0);
    let pageviews = rows
        .iter()
        .find(|d| d.depth == 0)
        .map(|d| d.reached)
        .unwrap_or(0);
    let depths: Vec<serde_json::Value> = rows
        .iter()
        .map(|d| json!({"depth": d.depth, "reached": d.reached, "share": d.share.unwrap_or(0.0)}))
        .collect();
    let mut body = scope.json();
    body["path"] = json!(path);
    body["pageviews"] = json!(pageviews);
    body["depths"] = json!(depths);
    // null when no page view in the range reported its heights (old snippets).
    body["avg_fold_pct"] = json!(fold.as_ref().map(|f| f.avg_fold_pct.unwrap_or(0.0)));
    body["fold_pageviews"] = json!(fold.map_or(0, |f| f.measured));
    Ok(Json(body).into_response())
}
