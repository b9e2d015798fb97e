//! `GET /v1/live?site=S`: the site's acknowledged events as Server-Sent Events.
//!
//! Auth is the reports' (a read token of the site, `Authorization: Bearer`). The stream opens
//! with `event: ready`, then carries one `event: event` per acknowledged event (data: the JSON
//! of [`crate::live::message`]); a client that fell `query.live_buffer` events behind gets
//! what was buffered, then `event: dropped`, and the stream ends. Comments keep idle
//! connections open through proxies. Wire format: docs/api.md ("Live view").

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};
use crate::live::Subscription;

/// Seconds between keep-alive comments on an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

enum Step {
    Ready(Subscription, String),
    Open(Subscription),
    Done,
}

pub(super) async fn live(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let site = crate::query::authorize_live(st.reports(), &headers, q.as_deref())?;
    let sub = st.inner.ingest.live().subscribe(&site)?;
    let stream = futures_util::stream::unfold(Step::Ready(sub, site), |step| async move {
        match step {
            Step::Ready(sub, site) => {
                let ev = Event::default()
                    .event("ready")
                    .data(json!({"site": site}).to_string());
                Some((Ok::<_, Infallible>(ev), Step::Open(sub)))
            }
            Step::Open(mut sub) => match sub.next().await {
                Some(m) => Some((
                    Ok(Event::default().event("event").data(&*m)),
                    Step::Open(sub),
                )),
                None if sub.was_dropped() => {
                    let ev = Event::default().event("dropped").data(
                        json!({"reason": "the client did not keep up; reconnect"}).to_string(),
                    );
                    Some((Ok(ev), Step::Done))
                }
                None => None,
            },
            Step::Done => None,
        }
    });
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Proxies that buffer answers (nginx) would hold the events back.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
