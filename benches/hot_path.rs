//! Criterion benchmarks of the per-request and per-reload work: config parse + validate,
//! snapshot build, and route matching among 10, 200 and 2,000 routes.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use switchyard::config;
use switchyard::runtime::router::RequestView;
use switchyard::runtime::Snapshot;

fn config_text(routes: usize, pools: usize) -> String {
    let mut s = String::from("version: 1\npools:\n");
    for p in 0..pools {
        s.push_str(&format!(
            "  p{p}:\n    health_check: {{kind: none}}\n    backends: [{{address: \"127.0.0.1:{}\"}}]\n",
            10000 + p
        ));
    }
    s.push_str("routes:\n");
    for r in 0..routes {
        s.push_str(&format!(
            "  - {{name: r{r}, match: {{host: [h{r}.example.com], path_prefix: /api/{r}/, methods: [GET, POST]}}, pool: p{}}}\n",
            r % pools
        ));
    }
    s
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_parse_validate");
    for routes in [10usize, 2000] {
        let text = config_text(routes, routes.div_ceil(2));
        g.bench_with_input(BenchmarkId::from_parameter(routes), &text, |b, t| {
            b.iter(|| config::parse(black_box(t), &no_env, None).expect("valid"))
        });
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("snapshot_build");
    g.sample_size(10);
    for routes in [10usize, 2000] {
        let loaded =
            config::parse(&config_text(routes, routes.div_ceil(2)), &no_env, None).expect("valid");
        g.bench_with_input(BenchmarkId::from_parameter(routes), &loaded, |b, l| {
            b.iter(|| rt.block_on(Snapshot::build(l.clone(), None)))
        });
    }
    g.finish();
}

fn route_match(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_match_last");
    for routes in [10usize, 200, 2000] {
        let loaded = config::parse(&config_text(routes, 10), &no_env, None).expect("valid");
        let snap = rt.block_on(Snapshot::build(loaded, None));
        let last = routes - 1;
        let host = format!("h{last}.example.com");
        let path = format!("/api/{last}/items");
        g.bench_function(BenchmarkId::from_parameter(routes), |b| {
            b.iter(|| {
                let view = RequestView {
                    method: &Method::GET,
                    host: &host,
                    path: &path,
                    query: None,
                    headers: &headers,
                };
                black_box(snap.router.find(&view).map(|r| r.name.len()))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parse, build, route_match);
criterion_main!(benches);
