//! The compactor's safety rules against a real ClickHouse, on local paths and on a real S3 API
//! (moto's server, started here): a stuck mutation of another day does not hold it, a verified
//! part whose rows changed is neither deleted nor archived again, another deployment's entries
//! in a shared archive are left alone, and big files go up in multipart uploads.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clicktrail::compactor::manifest::{self, PartState};
use clicktrail::compactor::{day_string, parquet_io, Compactor, NoProgress};
use clicktrail::metrics::Metrics;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::compactor::*;
use crate::harness::*;

fn rewrite_config(s: &mut Setup, f: impl FnOnce(&mut clicktrail::config::Config)) {
    f(&mut s.cfg);
    std::fs::write(&s.config_path, toml_of(&s.cfg)).unwrap();
}

fn day_cond(offset: i64) -> String {
    format!("toDate(ts) = toDate('{}')", day_string(today() + offset))
}

fn parquet_files_of(s: &Setup, offset: i64) -> usize {
    let d = s.data.path().join(format!(
        "archive/events/date={}",
        day_string(today() + offset)
    ));
    std::fs::read_dir(d).map_or(0, |r| r.count())
}

/// A mutation that can never finish on the hot day (its `throwIf` fires on that day's part
/// only) must not hold the compactor's deletes of cold days: it waits for its own mutation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_mutation_of_another_day_does_not_hold_the_compactor() {
    let total = 20_000;
    let mut s = setup(total).await;
    rewrite_config(&mut s, |c| {
        c.compactor.mutation_timeout = Duration::from_secs(20)
    });
    s.ch.query(&format!(
        "ALTER TABLE clicktrail.events DELETE WHERE throwIf({})",
        day_cond(DAYS[3])
    ));
    let stuck = || {
        s.ch.count(
            "SELECT count() FROM system.mutations WHERE database = 'clicktrail' AND is_done = 0",
        )
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stuck(), 1, "the unrelated mutation is stuck");

    let started = std::time::Instant::now();
    let (code, out, err) = compact(&s, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(" archived ").count(), 3, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "not held until the mutation timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(count(&s.ch, &cold_cond()), 0);
    assert_eq!(count(&s.ch, "1"), total / 4, "hot day untouched");
    assert_eq!(archive_rows(&s).len() as u64, total * 3 / 4);
    assert!(stuck() >= 1, "the stuck mutation is still there");
}

/// Killed after verifying the first cold day; meanwhile a row of that day appears in
/// ClickHouse with an old `inserted_at` (restored from a backup, say). The rerun must not
/// delete the day (the file does not hold that row), must say so, and must not export the day
/// again as a second part while the first is unfinished; the other days are archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_part_whose_rows_changed_is_neither_deleted_nor_archived_again() {
    let total = 20_000;
    let s = setup(total).await;
    kill_at(&s, "after_verify");
    let (store, _) = clicktrail::compactor::open_store("", s.data.path()).unwrap();
    let verified: Vec<_> = manifest::all(store.as_ref())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.state == PartState::Verified)
        .collect();
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].partition, day_string(today() + DAYS[0]));
    let before = count(&s.ch, &day_cond(DAYS[0]));
    // One more row of that day (n % 4 = 0), inserted "an hour ago": inside the part's cutoff.
    seed_where(&s.ch, total, 4, 3600, "number % 4 = 0");
    assert_eq!(count(&s.ch, &day_cond(DAYS[0])), before + 1);

    let (code, out, err) = compact(&s, &[]);
    assert_ne!(code, 0, "the run reports the changed part: {out}{err}");
    assert!(err.contains("no longer matches ClickHouse"), "{err}");
    assert!(err.contains(&verified[0].file), "{err}");
    assert_eq!(
        count(&s.ch, &day_cond(DAYS[0])),
        before + 1,
        "nothing of the changed day was deleted"
    );
    assert_eq!(
        parquet_files_of(&s, DAYS[0]),
        1,
        "the unfinished day was not exported again as a new part"
    );
    for d in [DAYS[1], DAYS[2]] {
        assert_eq!(count(&s.ch, &day_cond(d)), 0, "day {d} archived");
        assert_eq!(parquet_files_of(&s, d), 1);
    }
    let entry = manifest::all(store.as_ref())
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.file == verified[0].file)
        .unwrap();
    assert_eq!(entry.state, PartState::Verified, "left for an operator");
}

/// Two deployments (databases `clicktrail` and `clicktrail_b`, the same rows) share one
/// archive. A is killed after verifying a part; B's run must refuse A's entry (an error naming
/// both tables, counted), archive its own days, and leave A's rows and entry alone; A then
/// finishes its part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_sharing_an_archive_leave_each_others_entries_alone() {
    let total = 20_000;
    let a = setup(total).await;
    let mut b_cfg = a.cfg.clone();
    b_cfg.clickhouse.database = "clicktrail_b".into();
    b_cfg.compactor.archive_url = a.data.path().join("archive").display().to_string();
    let b_data = tempfile::tempdir().unwrap();
    b_cfg.data_dir = b_data.path().to_path_buf();
    migrate(&b_cfg).await;
    seed_into(&a.ch, "clicktrail_b", 0, total, 3600, "1");

    kill_at(&a, "after_verify");
    let metrics = Metrics::new();
    let b = Compactor::new(
        &b_cfg.clickhouse,
        b_cfg.compactor.clone(),
        &b_cfg.data_dir,
        metrics.clone(),
    )
    .unwrap();
    let err = b
        .run_once(2, false, &NoProgress)
        .await
        .expect_err("B refuses A's pending entry")
        .to_string();
    assert!(
        err.contains("clicktrail.events (no uuid)")
            && err.contains("clicktrail_b.events (no uuid)"),
        "{err}"
    );
    let refused = metrics
        .compactor_refused
        .get_or_create(&clicktrail::metrics::ReasonLabel { reason: "foreign" })
        .get();
    assert_eq!(refused, 1);

    let b_count = |cond: &str| {
        a.ch.count(&format!(
            "SELECT count() FROM clicktrail_b.events WHERE {cond}"
        ))
    };
    assert_eq!(b_count(&cold_cond()), 0, "B archived its own cold days");
    assert_eq!(b_count("1"), total / 4);
    assert_eq!(
        count(&a.ch, &cold_cond()),
        total * 3 / 4,
        "none of A's rows was deleted by B"
    );
    let (store, _) = clicktrail::compactor::open_store("", a.data.path()).unwrap();
    let entries = manifest::all(store.as_ref()).await.unwrap();
    let of = |db: &str| {
        entries
            .iter()
            .filter(|e| e.source.as_ref().is_some_and(|s| s.database == db))
            .map(|e| e.state)
            .collect::<Vec<_>>()
    };
    assert_eq!(of("clicktrail"), vec![PartState::Verified]);
    assert_eq!(of("clicktrail_b"), vec![PartState::Dropped; 3]);

    // A resumes its part (B's entries are all dropped: nothing to refuse) and the rest.
    let (code, out, err) = compact(&a, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(count(&a.ch, &cold_cond()), 0);
    assert_eq!(count(&a.ch, "1"), total / 4);
}

/// moto's S3 server on a free loopback port, or `None` (with a loud message) when moto is not
/// installed; `make test` sets REQUIRE_MOTO, which turns that into a failure.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start() -> Option<Moto> {
        let local = concat!(env!("CARGO_MANIFEST_DIR"), "/var/venv/bin/moto_server");
        let path = std::env::var("PATH").unwrap_or_default();
        let candidates = std::env::var("MOTO_SERVER")
            .into_iter()
            .chain(path.split(':').map(|d| format!("{d}/moto_server")))
            .chain([local.to_string()]);
        let Some(bin) = candidates
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
        else {
            let msg =
                "moto_server not found (pip install 'moto[server]', or scripts/deps.sh --test)";
            if std::env::var_os("REQUIRE_MOTO").is_some() {
                panic!("{msg}");
            }
            eprintln!("\n!!!!!!!! SKIPPED: {msg}: the S3 test did not run !!!!!!!!\n");
            return None;
        };
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let endpoint = format!("http://127.0.0.1:{port}");
        let moto = Moto { child, endpoint };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while http_get(&format!("{}/", moto.endpoint)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
        ]
    }

    /// The bucket's store under `prefix`, as the test reads it.
    async fn store(&self, bucket: &str, prefix: &str) -> Arc<dyn ObjectStore> {
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
            .build()
            .unwrap();
        Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
    }

    async fn create_bucket(&self, bucket: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }
}

/// The archive on S3 (moto): `s3://bucket/prefix` with the AWS_* environment. One cold day is
/// big enough (high-entropy ids) for a multipart upload of several 5 MiB parts, which the
/// object's ETag (`<md5>-<parts>`) shows; every row comes back from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_on_s3_takes_big_days_in_multipart_uploads() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("bucket").await;
    let total = 8_000;
    let mut s = setup(total).await;
    let part = clicktrail::compactor::MIN_PART_BYTES;
    rewrite_config(&mut s, |c| {
        c.compactor.archive_url = "s3://bucket/prefix".into();
        c.compactor.upload_part_bytes = part;
    });
    // 300k more rows on the oldest cold day, with ids and URLs that hardly compress.
    let big = 300_000u64;
    s.ch.query(&format!(
        "INSERT INTO clicktrail.events (event_id, site, type, ts, received_at, url, host, path, inserted_at) \
         SELECT hex(SHA256(toString(number))), 'test', 'pageview', toDateTime({day} * 86400 + number % 86400), \
         toDateTime({day} * 86400 + number % 86400), concat('https://shop.test/', hex(SHA256(toString(number + 1)))), \
         'shop.test', '/', toDateTime(toUInt32(now()) - 3600) FROM system.numbers LIMIT {big}",
        day = today() + DAYS[0]
    ));
    // The compactor under a parent that reports its peak RSS (the kernel's, from getrusage).
    let out = Command::new("python3")
        .args([
            "-c",
            "import resource, subprocess, sys\n\
             r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n\
             sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)\n\
             print('peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
             sys.exit(r.returncode)",
            env!("CARGO_BIN_EXE_clicktrail"),
            "compact",
            "--once",
            "--config",
        ])
        .arg(&s.config_path)
        .env("RUST_LOG", "warn")
        .envs(moto.env())
        .output()
        .expect("python3");
    let ok = out.status.success();
    let (out, err) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(ok, "{out}{err}");
    assert_eq!(out.matches(" archived ").count(), 3, "{out}");
    assert_eq!(count(&s.ch, &cold_cond()), 0);

    let store = moto.store("bucket", "prefix").await;
    let entries = manifest::all(store.as_ref()).await.unwrap();
    assert_eq!(entries.len(), 3);
    let mut rows = 0u64;
    let mut multipart = 0;
    let d = tempfile::tempdir().unwrap();
    for e in &entries {
        assert_eq!(e.state, PartState::Dropped);
        let head = store.head(&e.file_path()).await.unwrap();
        assert_eq!(head.size, e.bytes);
        let etag = head.e_tag.unwrap_or_default();
        if e.bytes > part as u64 {
            let parts = e.bytes.div_ceil(part as u64);
            assert!(
                etag.trim_matches('"').ends_with(&format!("-{parts}")),
                "{} ({} bytes) went up in {parts} parts of {part}: ETag {etag}",
                e.file,
                e.bytes
            );
            multipart += 1;
        } else {
            assert!(!etag.contains('-'), "a small file is one put: {etag}");
        }
        let local = d.path().join("f.parquet");
        let bytes = store
            .get(&e.file_path())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(format!("{:08x}", crc32c::crc32c(&bytes)), e.crc32c);
        std::fs::write(&local, &bytes).unwrap();
        parquet_io::for_each_row(&local, |_| rows += 1).unwrap();
    }
    assert!(multipart >= 1, "the big day needs several parts");
    assert_eq!(rows, total * 3 / 4 + big);
    let peak_kib: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib "))
        .and_then(|v| v.trim().parse().ok())
        .expect("peak RSS");
    let biggest = entries.iter().map(|e| e.bytes).max().unwrap_or(0);
    eprintln!(
        "archive on S3: biggest file {} KiB, compactor peak RSS {peak_kib} KiB",
        biggest / 1024
    );
}
