//! `clicktrail dlq list | show | replay`.
//!
//! `list` and `show` read the store directly (read-only, safe while `serve` runs). `replay`
//! asks the running collector to re-validate and re-enqueue entries (the spool has a single
//! writer), then waits until ClickHouse confirmed them and prints what still fails and why.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context};
use clicktrail::config::Config;
use clicktrail::dlq::{self, Entry, Stage};
use clicktrail::http::admin::{
    admin_file_path, AdminFile, ReplayAnswer, ReplayRequest, StatusAnswer,
};
use clicktrail::http::ErrorBody;
use serde_json::Value;

/// Exit code of `replay` when some entries still fail (everything else replayed).
pub(crate) const STILL_FAILING: u8 = 3;

fn load_entries(config: &Config) -> anyhow::Result<Vec<Entry>> {
    let root = config.dlq_dir();
    let mut out = Vec::new();
    for (id, _) in dlq::scan(&root).with_context(|| format!("reading {}", root.display()))? {
        match dlq::read(&root, id) {
            Ok(e) => out.push(e),
            // Removed by a concurrent replay between scan and read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    Ok(out)
}

fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.replace(['\n', '\r'], " ");
    if s.chars().count() <= max {
        s
    } else {
        s.chars().take(max - 1).collect::<String>() + "…"
    }
}

fn print_table(entries: &[Entry]) {
    println!(
        "{:>6}  {:<10}  {:>6}  {:<20}  {:<20}  {:>4}  REASON",
        "ENTRY", "STAGE", "EVENTS", "FIRST FAILED (UTC)", "LAST FAILED (UTC)", "TRY"
    );
    for e in entries {
        println!(
            "{:>6}  {:<10}  {:>6}  {:<20}  {:<20}  {:>4}  {}",
            e.id,
            e.stage.as_str(),
            e.event_count(),
            when(e.first_failed_ms),
            when(e.last_failed_ms),
            e.attempts,
            one_line(&e.reason, 100)
        );
    }
}

pub(crate) fn list(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let entries = load_entries(config)?;
    if json {
        let rows: Vec<Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.id, "stage": e.stage, "reason_class": e.reason_class, "reason": e.reason,
                    "code": e.code, "events": e.event_count(), "site": e.origin.site,
                    "first_failed_ms": e.first_failed_ms, "last_failed_ms": e.last_failed_ms,
                    "attempts": e.attempts,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if entries.is_empty() {
        println!("no dead letters in {}", config.dlq_dir().display());
    } else {
        print_table(&entries);
        let events: usize = entries.iter().map(Entry::event_count).sum();
        println!("\n{} entries, {events} events", entries.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn show(config: &Config, id: u64) -> anyhow::Result<ExitCode> {
    let e = dlq::read(&config.dlq_dir(), id).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "no dead-letter entry {id} in {} (see `clicktrail dlq list`)",
            config.dlq_dir().display()
        ),
        _ => e.into(),
    })?;
    println!("entry:        {}", e.id);
    println!("stage:        {}", e.stage.as_str());
    println!("site:         {}", e.origin.site);
    println!("reason:       {}", e.reason);
    if let Some(code) = e.code {
        println!("clickhouse code: {code}");
    }
    println!("first failed: {}", when(e.first_failed_ms));
    println!("last failed:  {}", when(e.last_failed_ms));
    println!("attempts:     {}", e.attempts);
    if !e.events.is_empty() {
        println!("\nevents as received ({}):", e.events.len());
        for (i, ev) in e.events.iter().enumerate() {
            let why = e.errors.get(i).map(String::as_str).unwrap_or("");
            println!("  [{i}] {}\n      error: {why}", ev.get());
        }
    }
    if !e.rows.is_empty() {
        println!("\nrows refused by ClickHouse ({}):", e.rows.len());
        for r in &e.rows {
            println!("  {}", serde_json::to_string(r)?);
        }
    }
    if let Some(raw) = &e.raw {
        println!("\nraw body ({} bytes kept):\n{raw}", raw.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) struct ReplayOptions {
    pub(crate) stage: Option<Stage>,
    pub(crate) reason_contains: Option<String>,
    pub(crate) dry_run: bool,
    pub(crate) wait: Duration,
}

fn matches(e: &Entry, o: &ReplayOptions) -> bool {
    if o.stage.is_some_and(|s| s != e.stage) {
        return false;
    }
    match &o.reason_contains {
        None => true,
        Some(t) => {
            let t = t.to_lowercase();
            e.reason.to_lowercase().contains(&t)
                || e.errors.iter().any(|x| x.to_lowercase().contains(&t))
        }
    }
}

pub(crate) async fn replay(config: &Config, o: ReplayOptions) -> anyhow::Result<ExitCode> {
    let all = load_entries(config)?;
    let max_id_before = all.iter().map(|e| e.id).max().unwrap_or(0);
    let selected: Vec<Entry> = all.into_iter().filter(|e| matches(e, &o)).collect();
    if selected.is_empty() {
        println!("nothing to replay");
        return Ok(ExitCode::SUCCESS);
    }
    let total_events: usize = selected.iter().map(Entry::event_count).sum();
    if o.dry_run {
        print_table(&selected);
        println!(
            "\ndry run: would replay {total_events} events from {} entries",
            selected.len()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let admin_path = admin_file_path(&config.data_dir);
    let admin: AdminFile = serde_json::from_slice(&std::fs::read(&admin_path).with_context(|| {
        format!(
            "no running collector found ({} is missing): start `clicktrail serve` with this config; \
             replay goes through it so events take the normal path",
            admin_path.display()
        )
    })?)
    .with_context(|| format!("{} is not valid", admin_path.display()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let auth = format!("Bearer {}", admin.token);

    let bar = indicatif::ProgressBar::new(selected.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {pos}/{len} entries ({eta})",
        )?
        .progress_chars("=> "),
    );
    bar.set_message("replaying");
    let mut replayed = 0u64;
    let mut removed = 0u64;
    let mut max_lsn: Option<u64> = None;
    let mut still: BTreeMap<String, (u64, Vec<u64>)> = BTreeMap::new();
    for chunk in selected.chunks(16) {
        let ids: Vec<u64> = chunk.iter().map(|e| e.id).collect();
        let resp = http
            .post(format!("{}/v1/admin/replay", admin.url))
            .header("authorization", &auth)
            .json(&ReplayRequest { ids })
            .send()
            .await
            .with_context(|| {
                format!(
                    "the collector at {} did not answer; is `clicktrail serve` running?",
                    admin.url
                )
            })?;
        let status = resp.status();
        if !status.is_success() {
            bar.abandon();
            let why = resp
                .json::<ErrorBody>()
                .await
                .map_or_else(|_| "no reason given".to_string(), |b| b.error);
            bail!(
                "the collector refused the replay ({status}): {why}; {replayed} events were replayed so far; rerun to continue"
            );
        }
        let answer: ReplayAnswer = resp
            .json()
            .await
            .context("the collector's replay answer is not what this version expects")?;
        for r in answer.results {
            replayed += r.replayed as u64;
            removed += u64::from(r.removed);
            if let Some(l) = r.lsn {
                max_lsn = Some(max_lsn.map_or(l, |m: u64| m.max(l)));
            }
            if r.still_failing > 0 {
                let why = r
                    .errors
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "unknown".to_string());
                let slot = still.entry(why).or_default();
                slot.0 += r.still_failing as u64;
                slot.1.push(r.id);
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_with_message("replayed");

    // Wait until ClickHouse confirmed what was re-enqueued, so the summary means "delivered".
    let mut delivered_ok = max_lsn.is_none();
    if let Some(lsn) = max_lsn {
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_message("waiting for ClickHouse to confirm the replayed events");
        let started = Instant::now();
        let mut last_error = None;
        while started.elapsed() < o.wait {
            spinner.tick();
            if let Ok(r) = http
                .get(format!("{}/v1/admin/status", admin.url))
                .header("authorization", &auth)
                .send()
                .await
            {
                if let Ok(s) = r.json::<StatusAnswer>().await {
                    if s.delivered > lsn {
                        delivered_ok = true;
                        break;
                    }
                    last_error = s.last_insert_error;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        spinner.finish_and_clear();
        if !delivered_ok {
            println!(
                "the replayed events are safe in the spool, but ClickHouse has not confirmed them within {:?}{}",
                o.wait,
                last_error.map(|e| format!(" (last insert error: {e})")).unwrap_or_default()
            );
        }
    }
    // Rows ClickHouse refused again come back as new insert entries.
    let refused_again: Vec<Entry> = load_entries(config)?
        .into_iter()
        .filter(|e| e.id > max_id_before && e.stage == Stage::Insert)
        .collect();

    println!(
        "replayed {replayed} events ({removed} of {} entries fully replayed and removed){}",
        selected.len(),
        if delivered_ok && max_lsn.is_some() {
            "; ClickHouse confirmed them"
        } else {
            ""
        }
    );
    let mut failing = false;
    for (why, (n, ids)) in &still {
        failing = true;
        println!("still failing: {n} events in entries {ids:?}: {why}");
    }
    for e in &refused_again {
        failing = true;
        println!(
            "refused again by ClickHouse: {} rows (new entry {}): {}",
            e.rows.len(),
            e.id,
            one_line(&e.reason, 200)
        );
    }
    Ok(if failing {
        ExitCode::from(STILL_FAILING)
    } else {
        ExitCode::SUCCESS
    })
}
