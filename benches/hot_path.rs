//! Criterion benchmarks of the per-request and per-reload work: config parse + validate,
//! snapshot build (10 routes, and 2,000 routes over 1,000 pools of 10 backends), a whole
//! reload of that large file, route matching among 10, 200 and 2,000 routes, the header
//! filters of a proxied request, and the `model` of a 1 KiB and a 500 KiB JSON body.

/// The allocator the binary uses (src/main.rs), so the numbers are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use switchyard::config;
use switchyard::proxy::filters::headers::{self, Forwarded};
use switchyard::proxy::openai;
use switchyard::runtime::router::{HeaderEdits, RequestView};
use switchyard::runtime::Snapshot;

/// `routes` routes over `pools` pools of `backends` backends each.
fn config_text(routes: usize, pools: usize, backends: usize) -> String {
    let mut s = String::from("version: 1\npools:\n");
    for p in 0..pools {
        s.push_str(&format!(
            "  p{p}:\n    health_check: {{kind: none}}\n    backends:\n"
        ));
        for b in 0..backends {
            s.push_str(&format!(
                "      - {{address: \"127.0.{}.{}:{}\"}}\n",
                p / 250,
                b + 1,
                10000 + p
            ));
        }
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

/// The two sizes: (label, text). The large one is issue #7's reload target.
fn sizes() -> [(&'static str, String); 2] {
    [
        ("10_routes", config_text(10, 5, 1)),
        ("2000_routes_1000x10_backends", config_text(2000, 1000, 10)),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_parse_validate");
    g.sample_size(20);
    for (label, text) in sizes() {
        g.bench_with_input(BenchmarkId::from_parameter(label), &text, |b, t| {
            b.iter(|| config::parse(black_box(t), &no_env, None).expect("valid"));
        });
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("snapshot_build");
    g.sample_size(10);
    for (label, text) in sizes() {
        let loaded = config::parse(&text, &no_env, None).expect("valid");
        g.bench_with_input(BenchmarkId::from_parameter(label), &loaded, |b, l| {
            b.iter(|| rt.block_on(Snapshot::build(l.clone(), None)));
        });
    }
    g.finish();
}

/// What a reload does between reading the file and serving from the new snapshot: parse,
/// validate, build on top of the running snapshot (kept pools reuse their balancers), swap.
fn reload(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("reload_parse_build_swap");
    g.sample_size(10);
    for (label, text) in sizes() {
        let first = config::parse(&text, &no_env, None).expect("valid");
        let current = arc_swap::ArcSwap::from_pointee(rt.block_on(Snapshot::build(first, None)));
        g.bench_with_input(BenchmarkId::from_parameter(label), &text, |b, t| {
            b.iter(|| {
                let loaded = config::parse(black_box(t), &no_env, None).expect("valid");
                let previous = current.load_full();
                let next = rt.block_on(Snapshot::build(loaded, Some(&previous)));
                current.store(std::sync::Arc::new(next));
            });
        });
    }
    g.finish();
}

fn route_match(c: &mut Criterion) {
    let rt = runtime();
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_match_last");
    for routes in [10usize, 200, 2000] {
        let loaded = config::parse(&config_text(routes, 10, 1), &no_env, None).expect("valid");
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
            });
        });
    }
    g.finish();
}

/// The headers every proxied request gets: `X-Forwarded-*`, `X-Real-IP`, the route's edits,
/// and the security headers of the answer.
fn header_filters(c: &mut Criterion) {
    let edits = HeaderEdits {
        set: vec![(
            HeaderName::from_static("x-env"),
            HeaderValue::from_static("prod"),
        )],
        remove: vec![HeaderName::from_static("x-debug")],
    };
    let peer: IpAddr = "10.1.2.3".parse().expect("ip");
    c.bench_function("header_filters", |b| {
        b.iter(|| {
            let mut req = RequestHeader::build("GET", b"/api/items?page=2", None).expect("req");
            req.insert_header("host", "api.example.com").expect("host");
            req.insert_header("x-forwarded-for", "203.0.113.9")
                .expect("xff");
            let f = Forwarded {
                client_ip: Some(peer),
                peer_trusted: true,
                peer_ip: Some(peer),
                host: "api.example.com",
                tls: true,
            };
            headers::forwarded(&mut req, &f).expect("forwarded");
            headers::edit_request(&mut req, &edits).expect("edits");
            let mut resp = ResponseHeader::build(200, None).expect("resp");
            headers::security(&mut resp, true).expect("security");
            black_box((req, resp))
        });
    });
}

/// A chat request of about `size` bytes whose `model` comes first, as the SDKs send it.
fn chat_body(size: usize) -> Vec<u8> {
    let filler = "x".repeat(size.saturating_sub(120));
    format!(
        r#"{{"model":"llama-3-70b","messages":[{{"role":"user","content":"{filler}"}}],"stream":true}}"#
    )
    .into_bytes()
}

fn model_extraction(c: &mut Criterion) {
    let mut g = c.benchmark_group("model_of_body");
    for (label, size) in [("1KiB", 1024usize), ("500KiB", 500 * 1024)] {
        let body = chat_body(size);
        g.throughput(criterion::Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
            b.iter(|| openai::model_of(black_box(body)).expect("model"));
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    parse,
    build,
    reload,
    route_match,
    header_filters,
    model_extraction
);
criterion_main!(benches);
