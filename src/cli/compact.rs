//! `clicktrail compact --once [--hot-days N] [--dry-run]`: one compactor run in the foreground
//! with a progress bar and a summary; without `--once`, the same loop `serve` runs.

use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use clicktrail::compactor::{Compactor, Progress};
use clicktrail::config::Config;
use clicktrail::metrics::Metrics;

struct Bar {
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl Progress for Bar {
    fn partition(&self, day: &str, rows: u64) {
        let b = indicatif::ProgressBar::new(rows);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} rows ({per_sec}, {eta})",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b.set_message(day.to_string());
        if let Some(old) = self
            .bar
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(b)
        {
            old.finish_and_clear();
        }
    }
    fn rows(&self, n: u64) {
        if let Some(b) = &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
            b.inc(n);
        }
    }
}

pub(crate) async fn run(
    config: &Config,
    once: bool,
    hot_days: Option<u32>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    // One compactor per data directory: `serve` (which may run its own) holds the same lock.
    let _lock = clicktrail::datadir::lock(&config.data_dir)?;
    let mut cfg = config.compactor.clone();
    if let Some(h) = hot_days {
        cfg.hot_days = h;
    }
    let hot = cfg.hot_days;
    let metrics = Metrics::new();
    let compactor = Compactor::new(&config.clickhouse, cfg, &config.data_dir, metrics.clone())
        .context("cannot start the compactor (key `compactor.archive_url`)")?
        .with_slow_calls(clicktrail::slow::SlowCalls::new(
            &config.observability,
            metrics,
        ));
    if !once {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        compactor.run(rx).await;
        return Ok(ExitCode::SUCCESS);
    }
    let bar = Bar {
        bar: Mutex::new(None),
    };
    let result = compactor.run_once(hot, dry_run, &bar).await;
    if let Some(b) = bar.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
        b.finish_and_clear();
    }
    let outcomes =
        result.context("compaction failed (nothing unverified was deleted; rerun to resume)")?;
    println!("archive: {}", compactor.archive_url());
    if outcomes.is_empty() {
        println!("no cold partitions (older than {hot} days)");
    }
    let (mut rows, mut bytes) = (0u64, 0u64);
    for o in &outcomes {
        rows += o.rows;
        bytes += o.bytes;
        println!(
            "{:<10}  {:<14}  {:>10} rows  {:>12} bytes  {}",
            o.day, o.action, o.rows, o.bytes, o.file
        );
        if let Some((read, took)) = o.export {
            println!(
                "{:<10}  exported in {:.2} s ({:.0} rows/s), read: {read}",
                "",
                took.as_secs_f64(),
                o.rows as f64 / took.as_secs_f64().max(1e-9)
            );
        }
    }
    if !dry_run && rows > 0 {
        println!(
            "archived {rows} rows into {bytes} bytes of Parquet ({:.1} bytes/row)",
            bytes as f64 / rows as f64
        );
    }
    Ok(ExitCode::SUCCESS)
}
