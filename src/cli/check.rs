//! `clicktrail check`: the config, the data directory and ClickHouse, each reported on its own
//! line with what to fix.

use std::process::ExitCode;

use anyhow::bail;
use clicktrail::config::Config;

pub(crate) async fn run(config: Config) -> anyhow::Result<ExitCode> {
    println!(
        "configuration: ok ({} site(s), listen {})",
        config.sites.len(),
        config.listen
    );
    let mut failed = false;

    let spool = config.spool_dir();
    match std::fs::create_dir_all(&spool).and_then(|_| {
        let probe = spool.join(".check");
        std::fs::write(&probe, b"ok")?;
        std::fs::remove_file(probe)
    }) {
        Ok(()) => println!("data_dir: ok ({} is writable)", config.data_dir.display()),
        Err(e) => {
            failed = true;
            println!(
                "data_dir: FAILED: cannot write to {}: {e} (key `data_dir`)",
                spool.display()
            );
        }
    }

    // The database may not exist yet: ask the server about it from `default`.
    let client = clicktrail::clickhouse::client(&config.clickhouse).with_database("default");
    match clicktrail::clickhouse::server_version(&client).await {
        Ok((_, v)) => {
            println!(
                "clickhouse: ok ({} answers, version {v})",
                config.clickhouse.url
            );
            let db = &config.clickhouse.database;
            let exists: Result<u8, _> = client
                .query(&format!("EXISTS TABLE {db}.events"))
                .fetch_one()
                .await;
            match exists {
                Ok(1) => println!("schema: ok ({db}.events exists)"),
                Ok(_) => {
                    failed = true;
                    println!(
                        "schema: FAILED: {db}.events does not exist; run `clicktrail migrate`"
                    );
                }
                Err(e) => {
                    failed = true;
                    println!("schema: FAILED: {e}; run `clicktrail migrate`");
                }
            }
        }
        Err(e) => {
            failed = true;
            println!(
                "clickhouse: FAILED: {} did not answer: {e} (key `clickhouse.url`, env CLICKTRAIL_CLICKHOUSE_URL)",
                config.clickhouse.url
            );
        }
    }
    if failed {
        bail!("check failed; fix the items marked FAILED above");
    }
    Ok(ExitCode::SUCCESS)
}
