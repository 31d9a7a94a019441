//! WebSockets pass through: the upgrade reaches the backend and frames flow both ways, also
//! after a silence longer than Pingora's default 60 s read timeout would allow (here scaled
//! down: the route's `websocket_idle` is what bounds it).

mod common;

use common::{free_port, Proxy, Upstream};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_pass_through_and_idle_is_bounded_by_the_route() {
    let up = Upstream::start("ws").await;
    let port = free_port();
    let _p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  ws: {{health_check: {{kind: none}}, backends: [{{address: "{up}"}}]}}
routes:
  - {{name: short, match: {{path_prefix: /ws, headers: {{x-idle: short}}}}, pool: ws, timeouts: {{websocket_idle: 1s}}}}
  - {{name: ws, match: {{path_prefix: /ws}}, pool: ws}}
"#,
        up = up.addr
    ))
    .await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .expect("upgrade through the proxy");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    ws.send(Message::text("hello")).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "ws: hello");
    // Silent for longer than the short route allows: the long (default 1 h) route keeps it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ws.send(Message::text("still there")).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "ws: still there");

    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://127.0.0.1:{port}/ws"),
    )
    .unwrap();
    req.headers_mut().insert("x-idle", "short".parse().unwrap());
    let (mut short, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    short.send(Message::text("a")).await.unwrap();
    let echoed = short.next().await.expect("an answer on the short route");
    assert!(echoed.is_ok(), "{echoed:?}");
    // After 1 s of silence the proxy closes the connection.
    let end = tokio::time::timeout(Duration::from_secs(5), short.next()).await;
    match end {
        Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {}
        other => panic!("the idle WebSocket was not closed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_removes_the_backend_never_leaves_a_websocket_hanging() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let config = |backends: &str| {
        format!(
            r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  ws: {{health_check: {{kind: none}}, backends: [{backends}]}}
routes:
  - {{name: ws, match: {{path_prefix: /ws}}, pool: ws}}
"#
        )
    };
    let both = format!("{{address: \"{}\"}}, {{address: \"{}\"}}", a.addr, b.addr);
    let p = Proxy::start(&config(&both)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let (home, other) = if reply.as_str() == "a: x" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    p.reload_to(&config(&format!("{{address: \"{}\"}}", other.addr)))
        .await;
    // The open connection either keeps working until it ends, or is closed; it never hangs.
    ws.send(Message::text("after")).await.ok();
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no answer and no close: the WebSocket hangs");
    match next {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("{}: after", home.name)),
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {}
        other => panic!("unexpected {other:?}"),
    }
    // New connections go to the remaining backend.
    let (mut fresh, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    fresh.send(Message::text("y")).await.unwrap();
    let reply = fresh.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(reply.as_str(), format!("{}: y", other.name));
}
