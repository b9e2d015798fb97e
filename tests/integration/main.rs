#![allow(unreachable_pub)] // test modules share helpers with `pub`; nothing here is an API.

//! Integration tests: the real collector against a real ClickHouse 18.16 on random ports.

mod compactor;
mod compactor_safety;
mod dedupe;
mod dlq;
mod drain;
mod durability;
mod faults;
mod harness;
mod ingest;
mod limits;
mod live;
mod migrations;
mod privacy;
mod query;
mod reload;
mod slow;
