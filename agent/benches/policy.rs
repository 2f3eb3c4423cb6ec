//! Per-statement cost of the policy path: SQL classification, rule evaluation of a classified
//! statement, and both together as the proxy runs them for each request.
//!
//! Run with `cargo bench -p snowtrail --bench policy` (or `cargo xtask bench`, which folds the
//! results into its table as nanoseconds per statement). Each iteration goes over the whole
//! corpus; the throughput is declared in statements, so the per-statement figure is the mean time
//! divided by the corpus size.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use snowtrail::policy::{NameContext, Policy, Subject, classify::classify};

/// Statements of the shapes a Snowflake workload sends, short and long, parsed and not.
const CORPUS: &[&str] = &[
    "select 1",
    "select * from orders where id = 42",
    "WITH x AS (SELECT * FROM raw.events) SELECT * FROM x JOIN \"Sales\".\"eu\".\"Q1\" ON true",
    "insert into prod.core.orders select * from staging.orders",
    "update t set a = 1 where b in (select b from u)",
    "delete from t where a = 2",
    "MERGE INTO target t USING src s ON t.id = s.id WHEN MATCHED THEN UPDATE SET t.v = s.v \
     WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)",
    "create or replace table analytics.public.daily as select date_trunc('day', ts) d, count(*) n \
     from events group by 1",
    "drop table prod.core.customers",
    "copy into @stage/out from (select * from customers) file_format = (type = parquet)",
    "alter session set query_tag = 'nightly-etl'",
    "select c.id, c.email, sum(o.amount) from customers c join orders o on o.customer_id = c.id \
     where o.ts > dateadd(day, -7, current_timestamp()) group by 1, 2 order by 3 desc limit 100",
    "show tables in schema analytics.public",
    "use warehouse compute_wh",
    "put file:///tmp/data.csv @%orders",
    "frobnicate the widgets",
];

/// A policy of the size a team writes: the one the policy unit tests use.
const POLICY: &str = include_str!("../tests/fixtures/policy/team.toml");

fn ctx() -> NameContext {
    NameContext {
        database: Some("ANALYTICS".into()),
        schema: Some("PUBLIC".into()),
    }
}

fn subject() -> Subject {
    Subject {
        identity: Some("etl-nightly".into()),
        labels: BTreeMap::from([("env".into(), "prod".into())]),
        user: Some("ETL_USER".into()),
        role: Some("TRANSFORMER".into()),
        ..Subject::default()
    }
}

fn benches(c: &mut Criterion) {
    let policy = Policy::parse(POLICY).expect("the benchmark policy parses");
    let names = ctx();
    let who = subject();
    let classified: Vec<_> = CORPUS.iter().map(|s| classify(s, &names)).collect();
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(CORPUS.len() as u64));
    g.bench_function("classify", |b| {
        b.iter(|| {
            for s in CORPUS {
                black_box(classify(black_box(s), &names));
            }
        })
    });
    g.bench_function("decide", |b| {
        b.iter(|| {
            for s in &classified {
                black_box(policy.decide(&who, black_box(s), 1_767_225_600));
            }
        })
    });
    g.bench_function("judge", |b| {
        b.iter(|| {
            for s in CORPUS {
                black_box(policy.judge(&who, black_box(s), &names, 1_767_225_600));
            }
        })
    });
    g.finish();
}

criterion_group!(policy, benches);
criterion_main!(policy);
