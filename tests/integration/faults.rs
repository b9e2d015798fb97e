//! Faults of the host, made real: a second process on the same data directory, a full disk (a
//! small tmpfs mounted for the test), too few file descriptors (`prlimit`), and the modes of
//! the files the collector leaves on disk.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_dir_is_refused_naming_the_first_and_files_are_private() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let cfg = test_config(&ch, &data.path().join("data"));
    migrate(&cfg).await;
    let first = Binary::start(&cfg);

    let started = Instant::now();
    let mut second = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
        .args(["serve", "--config"])
        .arg(Binary::config_path(&cfg))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = second.kill();
            panic!("the second serve kept running on a locked data dir");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.child.id())) && err.contains("clicktrail serve"),
        "names the holder: {err}"
    );
    // The first one is untouched and still takes events.
    let client = reqwest::Client::new();
    let (status, _) = post_json(&client, &first.base, &batch(vec![pageview("m1")])).await;
    assert_eq!(status, 200);
    let mut bad = pageview("m2");
    bad["ts"] = json!("never");
    post_json(&client, &first.base, &batch(vec![bad])).await;
    eventually("delivered", Duration::from_secs(20), || {
        ch.count("SELECT count() FROM clicktrail.events") == 1
    })
    .await;

    // Nothing the collector wrote is readable by other users.
    let spool = cfg.spool_dir();
    for dir in [
        cfg.data_dir.clone(),
        spool.clone(),
        cfg.dlq_dir().join("entries"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let mut files = files_with_ext(&spool, "seg");
    assert!(!files.is_empty());
    files.push(spool.join("checkpoint.json"));
    let entries = files_with_ext(&cfg.dlq_dir().join("entries"), "entry");
    assert_eq!(entries.len(), 1, "the invalid event's dead letter");
    files.extend(entries);
    files.push(cfg.data_dir.join("admin.json"));
    files.push(cfg.data_dir.join("clicktrail.lock"));
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

/// A tmpfs of `size` mounted at a temp dir (or a given directory) for the test (needs root),
/// unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let tmp = tempfile::tempdir().unwrap();
        let mut disk = SmallDisk::mount_at(tmp.path(), size);
        disk._tmp = Some(tmp);
        disk
    }

    /// Mounts it on the existing directory `dir`.
    fn mount_at(dir: &Path, size: &str) -> SmallDisk {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs (the test runs as root)");
        SmallDisk {
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes a file until the disk refuses with ENOSPC.
    fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let p = self.path().join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("{e}"),
            }
        }
        p
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

async fn post_one(app: &App, id: &str) -> (u16, Option<String>) {
    let r = app
        .client
        .post(format!("{}/v1/events", app.base))
        .header("content-type", "text/plain")
        .header("origin", ORIGIN)
        .body(batch(vec![pageview(id)]).to_string())
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), retry)
}

/// Rows ClickHouse refuses for their value, with nowhere to keep them: the dead-letter store
/// sits on a tiny disk that fills up. The sink must hold the rest in the spool (held
/// `dead_letters`), evict nothing, and once the refusal is fixed deliver every held row once,
/// without a replay; the dead letters stored before the disk filled replay after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_that_cannot_be_dead_lettered_stay_in_the_spool_and_land_after_the_fix() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, &data.path().join("data"));
    cfg.sink.permanent_error_attempts = 2;
    cfg.sink.batch_age = Duration::from_secs(2);
    let dlq_dir = cfg.dlq_dir();
    std::fs::create_dir_all(&dlq_dir).unwrap();
    let _disk = SmallDisk::mount_at(&dlq_dir, "64k");
    migrate(&cfg).await;
    ch.query("SYSTEM STOP MERGES clicktrail.events");
    let config_path = data.path().join("cli.toml");
    std::fs::write(&config_path, toml_of(&cfg)).unwrap();
    let app = App::spawn(cfg).await;

    ch.query(
        "ALTER TABLE clicktrail.events ADD COLUMN chk UInt8 MATERIALIZED throwIf(title = 'poison')",
    );
    let pad = "x".repeat(1900);
    let mut ids = Vec::new();
    for post in 0..4 {
        let evs: Vec<serde_json::Value> = (0..10)
            .map(|i| {
                let id = format!("d{post}-{i}");
                ids.push(id.clone());
                let mut e = pageview(&id);
                if i % 4 != 3 {
                    e["title"] = serde_json::json!("poison");
                    e["props"] = serde_json::json!({ "pad": pad });
                }
                e
            })
            .collect();
        let (status, body) = app.post(&batch(evs)).await;
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (200, Some(10)),
            "{body}"
        );
    }

    // 30 refused rows of ~2 KB each, 64 KB for dead letters: the store fills and the sink holds.
    eventually_some(
        "the sink holds: refused rows cannot be dead-lettered",
        Duration::from_secs(60),
        || async { (sink_held(&app.metrics().await, "dead_letters") == Some(1)).then_some(()) },
    )
    .await;
    let stored = std::fs::read_dir(dlq_dir.join("entries")).unwrap().count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = app.metrics().await;
    assert_eq!(sink_held(&m, "dead_letters"), Some(1), "still held");
    assert!(
        !m.lines()
            .any(|l| l.starts_with("clicktrail_dlq_evictions_total") && !l.ends_with(" 0")),
        "nothing evicted: {m}"
    );
    assert_eq!(
        std::fs::read_dir(dlq_dir.join("entries")).unwrap().count(),
        stored,
        "no entry evicted or replaced while held"
    );
    assert!(
        stored < 30,
        "the disk took all {stored} entries: the test proves nothing"
    );

    // The fix: the check goes. Every held row lands once, without a replay.
    ch.query("ALTER TABLE clicktrail.events DROP COLUMN chk");
    eventually_some("the held rows land", Duration::from_secs(60), || async {
        (sink_held(&app.metrics().await, "dead_letters") == Some(0)).then_some(())
    })
    .await;
    eventually(
        "every row not dead-lettered is in ClickHouse",
        Duration::from_secs(30),
        || {
            ch.query("SELECT count(), uniqExact(event_id) FROM clicktrail.events FORMAT TSV")
                .trim()
                == format!("{0}\t{0}", 40 - stored_events(&config_path))
        },
    )
    .await;

    // The dead letters stored before the disk filled replay; then all 40 are there once.
    let out = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
        .args(["dlq", "replay", "--stage", "insert", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ch.query("SELECT count(), uniqExact(event_id) FROM clicktrail.events FORMAT TSV")
            .trim(),
        "40\t40"
    );
    let got: std::collections::HashSet<String> = ch
        .query("SELECT event_id FROM clicktrail.events FORMAT TSV")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(got, ids.into_iter().collect());
    app.shutdown().await;
}

/// Events held as dead letters, as `clicktrail dlq list --json` counts them.
fn stored_events(config_path: &Path) -> usize {
    let out = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
        .args(["dlq", "list", "--json", "--config"])
        .arg(config_path)
        .output()
        .unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    entries
        .iter()
        .map(|e| e["events"].as_u64().unwrap() as usize)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_with_retry_after_and_recovers_without_a_restart() {
    let ch = ClickHouse::start();
    let disk = SmallDisk::mount("2m");
    let cfg = test_config(&ch, &disk.path().join("data"));
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;
    let mut acked = Vec::new();
    let (status, _) = post_one(&app, "before").await;
    assert_eq!(status, 200);
    acked.push("before".to_string());

    let ballast = disk.fill("ballast");
    let mut refused = None;
    for i in 0..200 {
        let id = format!("full-{i}");
        match post_one(&app, &id).await {
            (200, _) => acked.push(id),
            (503, retry) => {
                refused = Some(retry);
                break;
            }
            (s, _) => panic!("unexpected status {s}"),
        }
    }
    let retry = refused.expect("a full disk refuses events");
    assert!(retry.is_some(), "503 carries Retry-After");
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        200,
        "a full disk is transient, not a restart"
    );
    let ready = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["accepting_events"], false, "{ready}");
    assert!(app
        .metrics()
        .await
        .contains("clicktrail_spool_write_errors_total "));

    // Free the space: the same process takes events again.
    std::fs::remove_file(ballast).unwrap();
    let mut n = 0;
    let id = eventually_some("posts succeed again", Duration::from_secs(20), || {
        n += 1;
        let id = format!("after-{n}");
        let app = &app;
        async move { (post_one(app, &id).await.0 == 200).then_some(id) }
    })
    .await;
    acked.push(id);
    eventually(
        "every acknowledged event lands",
        Duration::from_secs(30),
        || ch.count("SELECT uniqExact(event_id) FROM clicktrail.events") >= acked.len() as u64,
    )
    .await;
    let have: HashSet<String> = ch
        .query("SELECT event_id FROM clicktrail.events FORMAT TSV")
        .lines()
        .map(str::to_string)
        .collect();
    for id in &acked {
        assert!(have.contains(id), "acknowledged {id} is lost");
    }
    app.shutdown().await;
    drop(disk);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_at_a_rotation_recovers_when_connections_close() {
    const NOFILE: usize = 64;
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    // A rotation every few requests: each needs a new file and the directory's.
    cfg.spool.segment_bytes = 4096;
    migrate(&cfg).await;
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let bin = Binary::start_with(&cfg, &["prlimit", &limit]);
    let pid = bin.child.id();
    // One keep-alive connection for every request below, opened while descriptors are free.
    // Bounded waits: a request that needed a new connection would sit in the backlog.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post = |id: String| {
        let (client, base) = (client.clone(), bin.base.clone());
        async move {
            let r = client
                .post(format!("{base}/v1/events"))
                .header("content-type", "text/plain")
                .header("origin", ORIGIN)
                .body(batch(vec![pageview(&id)]).to_string())
                .send()
                .await
                .expect("answered on the kept-alive connection");
            let answer = (r.status().as_u16(), r.headers().contains_key("retry-after"));
            // Read to the end, so the connection goes back to the pool for the next request.
            r.bytes().await.unwrap();
            answer
        }
    };
    let mut acked = Vec::new();
    assert_eq!(post("first".into()).await.0, 200);
    acked.push("first".to_string());

    // Idle connections until the collector has no descriptor left.
    let addr = bin.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    // Topped up before every post: the collector may close a descriptor of its own meanwhile
    // (an idle ClickHouse connection).
    let exhaust = |held: &mut Vec<std::net::TcpStream>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while open_fds(pid) < NOFILE {
            assert!(Instant::now() < deadline, "fds: {}", open_fds(pid));
            held.push(std::net::TcpStream::connect(&addr).unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut refused = false;
    for i in 0..60 {
        exhaust(&mut held);
        let id = format!("emfile-{i}");
        match post(id.clone()).await {
            (200, _) => acked.push(id),
            (503, retry_after) => {
                assert!(retry_after, "503 carries Retry-After");
                refused = true;
                break;
            }
            (s, _) => panic!("unexpected status {s}"),
        }
    }
    assert!(refused, "a rotation without descriptors refuses events");
    let health = client
        .get(format!("{}/healthz", bin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "EMFILE is transient: no restart");

    drop(held);
    let mut n = 0;
    let id = eventually_some("posts succeed again", Duration::from_secs(20), || {
        n += 1;
        let id = format!("after-{n}");
        let post = &post;
        async move { (post(id.clone()).await.0 == 200).then_some(id) }
    })
    .await;
    acked.push(id);
    eventually(
        "every acknowledged event lands",
        Duration::from_secs(30),
        || ch.count("SELECT uniqExact(event_id) FROM clicktrail.events") >= acked.len() as u64,
    )
    .await;
    let have: HashSet<String> = ch
        .query("SELECT event_id FROM clicktrail.events FORMAT TSV")
        .lines()
        .map(str::to_string)
        .collect();
    for id in &acked {
        assert!(have.contains(id), "acknowledged {id} is lost");
    }
}
