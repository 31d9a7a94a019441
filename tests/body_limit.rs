//! `max_body`: 413 by Content-Length before anything goes upstream, 413 while counting a
//! chunked body, readable by a client that is still sending; bodies within the limit arrive
//! whole.

mod common;

use bytes::Bytes;
use common::{client, free_port, Proxy, Upstream};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn proxy(up: &Upstream) -> (Proxy, u16) {
    let port = free_port();
    let p = Proxy::start(&common::one_pool(port, up.addr, ", max_body: 1MiB")).await;
    (p, port)
}

fn chunked(total: usize) -> reqwest::Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..total / 16384)
        .map(|_| Ok(Bytes::from(vec![b'x'; 16384])))
        .collect();
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_within_the_limit_arrive_whole() {
    let up = Upstream::start("up").await;
    let (_p, port) = proxy(&up).await;
    let url = format!("http://127.0.0.1:{port}/upload");
    for size in [1024usize, 60 * 1024, 100 * 1024, 1 << 20] {
        let r = client()
            .post(&url)
            .body(vec![b'a'; size])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "length {size}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["body_len"], size, "length {size}");
        let r = client()
            .post(&url)
            .body(chunked(size.max(16384)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "chunked {size}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            v["body_len"],
            size.max(16384) / 16384 * 16384,
            "chunked {size}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_and_never_reach_the_backend() {
    let up = Upstream::start("up").await;
    let (p, port) = proxy(&up).await;
    let url = format!("http://127.0.0.1:{port}/upload");

    let r = client()
        .post(&url)
        .body(vec![b'a'; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.headers().contains_key("x-request-id"));

    let r = client()
        .post(&url)
        .body(chunked(2 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("too large"));

    assert_eq!(up.hits(), 0, "the backend never received an oversized body");
    // The connection is still good for the next request.
    let r = client().post(&url).body("small").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(p.stdout_shows("\"status\":413").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_still_sending_reads_the_413() {
    let up = Upstream::start("up").await;
    let (_p, port) = proxy(&up).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let len = 3 << 19; // 1.5 MiB
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'z'; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "got {head:?}");
    let _ = writer.await;
    assert_eq!(up.hits(), 0);
}
