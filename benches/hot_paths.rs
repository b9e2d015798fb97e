//! Criterion micro-benchmarks of the hot paths: `cargo bench --bench hot_paths`.
//! Under `cargo test` each runs once as a smoke test.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::{json, value::RawValue, Value};

use clicktrail::config::{LimitsConfig, PrivacyConfig, SpoolConfig};
use clicktrail::event::{Event, ParsedBatch, RawBatch, RequestContext, Validator};

fn batch_body(n: usize) -> String {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({"type": "click", "id": format!("ev-{i:08}"), "ts": 1_764_480_000_000i64 + i as i64,
                   "url": "https://shop.example/products/42?utm=x", "session": "s-1234", "visitor": "v-5678",
                   "x": 320 + i, "y": 1800, "vw": 1440, "vh": 900, "dw": 1440, "dh": 5200,
                   "selector": "main > div.product > button.add-to-cart", "text": "Add to cart"})
        })
        .collect();
    json!({"site": "demo", "events": events}).to_string()
}

fn ctx() -> RequestContext {
    RequestContext {
        site: "demo".into(),
        received_at_ms: 1_764_480_000_500,
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36".into(),
        client_ip: Some("203.0.113.9".parse().unwrap()),
        keep_query_params: Default::default(),
        replay: None,
    }
}

fn decode_validate(c: &mut Criterion) {
    let body = batch_body(20);
    let v = Validator::new(LimitsConfig::default(), PrivacyConfig::default());
    let ctx = ctx();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(20));
    g.bench_function("parse envelope only", |b| {
        b.iter(|| {
            let batch: RawBatch<'_> = serde_json::from_str(black_box(&body)).unwrap();
            black_box(batch.events.unwrap().len())
        })
    });
    let parsed: RawBatch<'_> = serde_json::from_str(&body).unwrap();
    let raw = parsed.events.unwrap();
    g.bench_function("validate only", |b| {
        b.iter(|| black_box(v.validate_batch(&ctx, black_box(&raw))))
    });
    let (accepted, _) = v.validate_batch(&ctx, &raw);
    let one = raw[0].get().to_string();
    g.bench_function("one RawEvent via serde_path_to_error", |b| {
        b.iter(|| {
            let mut de = serde_json::Deserializer::from_str(black_box(&one));
            let e: clicktrail::event::RawEvent<'_> =
                serde_path_to_error::deserialize(&mut de).unwrap();
            black_box(e.ts.is_some())
        })
    });
    g.bench_function("one RawEvent plain", |b| {
        b.iter(|| {
            let e: clicktrail::event::RawEvent<'_> = serde_json::from_str(black_box(&one)).unwrap();
            black_box(e.ts.is_some())
        })
    });
    g.bench_function("one url parse", |b| {
        b.iter(|| {
            black_box(url::Url::parse(black_box("https://shop.example/products/42?utm=x")).unwrap())
        })
    });
    g.bench_function(
        "one url split, fast path (url::Url only for unusual URLs)",
        |b| {
            b.iter(|| {
                black_box(clicktrail::event::page_url_parts(black_box(
                    "https://shop.example/products/42?utm=x",
                )))
            })
        },
    );
    g.bench_function("user-agent parse only", |b| {
        b.iter(|| {
            black_box(clicktrail::event::parse_user_agent(black_box(
                &ctx.user_agent,
            )))
        })
    });
    // The UA parse (woothee + the isbot regex) against the LRU cache the validator uses: a hit
    // is one lock and one hash of the string.
    let agents = clicktrail::event::UserAgents::new(10_000);
    g.bench_function("user-agent parse + bot check, uncached", |b| {
        b.iter(|| black_box(agents.parse_uncached(black_box(&ctx.user_agent))))
    });
    g.bench_function("user-agent parse + bot check, cache hit", |b| {
        b.iter(|| black_box(agents.parse(black_box(&ctx.user_agent))))
    });
    g.bench_function("encode spool record only (RowBinary)", |b| {
        b.iter(|| black_box(clicktrail::spool::encode_events(black_box(&accepted))))
    });
    // Before issue 16: the envelope skips each event, the validator parses it again, and every
    // row owns copies of its strings.
    g.bench_function("decode+validate+encode 20-event batch", |b| {
        b.iter(|| {
            let batch: RawBatch<'_> = serde_json::from_str(black_box(&body)).unwrap();
            let events: Vec<&RawValue> = batch.events.unwrap();
            let (ok, _) = v.validate_batch(&ctx, &events);
            black_box(clicktrail::spool::encode_events(&ok))
        })
    });
    // The borrowed rows alone (two passes still): what not copying strings saves.
    g.bench_function(
        "two passes, borrowed rows (the path of a batch with a refused event)",
        |b| {
            b.iter(|| {
                let batch: RawBatch<'_> = serde_json::from_str(black_box(&body)).unwrap();
                let events: Vec<&RawValue> = batch.events.unwrap();
                let req = v.request(&ctx);
                let (ok, _) = req.validate_raw(&events);
                black_box(clicktrail::spool::encode_events(&ok))
            })
        },
    );
    // The intake's path now: one pass over the body, rows borrowing the body and the request.
    g.bench_function("one pass, borrowed rows (the intake path)", |b| {
        b.iter(|| {
            let batch: ParsedBatch<'_> = serde_json::from_str(black_box(&body)).unwrap();
            let req = v.request(&ctx);
            let ok = req
                .validate_parsed(batch.events.unwrap().into_iter().map(|e| e.0).collect())
                .unwrap();
            black_box(clicktrail::spool::encode_events(&ok))
        })
    });
    g.bench_function("one pass: envelope and events parse only", |b| {
        b.iter(|| {
            let batch: ParsedBatch<'_> = serde_json::from_str(black_box(&body)).unwrap();
            black_box(batch.events.unwrap().len())
        })
    });
    g.bench_function(
        "per-request enrichment only (user agent, ip, visitor)",
        |b| b.iter(|| black_box(v.request(black_box(&ctx)))),
    );
    g.finish();
}

/// The intake filter per request: 20 ids hashed, looked up, reserved and settled after the
/// append (new ids, the common case), and a retry of ids it holds. The filter is kept near its
/// steady state (500,000 ids held, evicting) so that lookups miss the CPU caches as in
/// production.
fn intake_filter(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let cfg = clicktrail::config::DedupeConfig {
        window: std::time::Duration::from_secs(600),
        max_ids: 500_000,
    };
    let f = clicktrail::dedupe::RecentIds::new(&cfg, clicktrail::metrics::Metrics::new()).unwrap();
    let mut n = 0u64;
    let mut next_ids = || {
        n += 1;
        (0..20)
            .map(|i| format!("{n:016x}-{i:04}-4f1c9a0e7b3d"))
            .collect::<Vec<_>>()
    };
    for _ in 0..25_000 {
        let keys: Vec<_> = next_ids().iter().map(|id| f.key(id)).collect();
        rt.block_on(f.admit("demo", &keys, 1_000))
            .reservation
            .resolve(true);
    }
    let mut g = c.benchmark_group("dedupe");
    g.throughput(Throughput::Elements(20));
    g.bench_function("intake filter: 20 new ids (hash, admit, settle)", |b| {
        b.iter_batched(
            &mut next_ids,
            |ids| {
                let keys: Vec<_> = ids.iter().map(|id| f.key(id)).collect();
                let a = rt.block_on(f.admit("demo", black_box(&keys), 1_000));
                a.reservation.resolve(true);
            },
            BatchSize::SmallInput,
        )
    });
    let retry: Vec<_> = next_ids();
    let keys: Vec<_> = retry.iter().map(|id| f.key(id)).collect();
    rt.block_on(f.admit("demo", &keys, 1_000))
        .reservation
        .resolve(true);
    g.bench_function("intake filter: a retry of 20 ids it holds", |b| {
        b.iter(|| {
            let keys: Vec<_> = retry.iter().map(|id| f.key(id)).collect();
            black_box(rt.block_on(f.admit("demo", &keys, 1_000)).recent)
        })
    });
    g.finish();
}

fn events(n: usize) -> Vec<Event> {
    let body = batch_body(n);
    let batch: RawBatch<'_> = serde_json::from_str(&body).unwrap();
    let v = Validator::new(LimitsConfig::default(), PrivacyConfig::default());
    v.validate_batch(&ctx(), &batch.events.unwrap()).0
}

fn spool_append(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let payload = clicktrail::spool::encode_events(&events(20));
    let mut g = c.benchmark_group("spool");
    g.throughput(Throughput::Elements(20));
    for fsync in [
        clicktrail::config::FsyncMode::Never,
        clicktrail::config::FsyncMode::Batch,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            fsync,
            max_bytes: 1 << 40,
            ..SpoolConfig::default()
        };
        let metrics = clicktrail::metrics::Metrics::new();
        let spool = rt.block_on(async {
            clicktrail::spool::Spool::open(dir.path(), &cfg, &metrics).unwrap()
        });
        let handle = spool.handle.clone();
        g.bench_function(
            format!("append+commit one 20-event record, fsync={fsync:?}"),
            |b| {
                b.iter(|| {
                    rt.block_on(handle.append(black_box(payload.clone())))
                        .unwrap()
                })
            },
        );
    }
    g.finish();
}

fn sink_decode(c: &mut Criterion) {
    let payload = clicktrail::spool::encode_events(&events(20));
    let mut g = c.benchmark_group("sink");
    g.throughput(Throughput::Elements(20));
    // What the sink does per record on the hot path: find the row boundaries, then copy.
    g.bench_function("row boundaries of one 20-event spool record", |b| {
        let rows = match clicktrail::spool::payload_parts(&payload) {
            Some((_, clicktrail::spool::StoredRows::RowBinary(r))) => r.to_vec(),
            _ => unreachable!(),
        };
        b.iter(|| black_box(clicktrail::row::row_ends(black_box(&rows), 20).unwrap()))
    });
    // Off the hot path: only refused rows (dead letters) are decoded.
    g.bench_function(
        "decode one 20-event spool record (refused rows only)",
        |b| b.iter(|| black_box(clicktrail::spool::decode_events(black_box(&payload)).unwrap())),
    );
    g.finish();
}

fn parquet_write(c: &mut Criterion) {
    let rows: Vec<Event> = (0..16).flat_map(|_| events(4096)).collect();
    let mut g = c.benchmark_group("compactor");
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.sample_size(10);
    let batches = clicktrail::compactor::record_batches(&rows);
    g.bench_function("Parquet (zstd) write of Arrow batches, 65536 rows", |b| {
        b.iter_batched(
            || tempfile::NamedTempFile::new().unwrap(),
            |f| {
                let mut w =
                    clicktrail::compactor::parquet_io::FileWriter::create(f.path(), 262_144)
                        .unwrap();
                for batch in &batches {
                    w.write(batch).unwrap();
                }
                black_box(w.finish().unwrap())
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    decode_validate,
    intake_filter,
    spool_append,
    sink_decode,
    parquet_write
);
criterion_main!(benches);
