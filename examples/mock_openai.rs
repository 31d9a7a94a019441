//! A small OpenAI-compatible backend for trying switchyard's gateway without GPUs.
//!
//!   cargo run --example mock_openai -- 127.0.0.1:8001 gpu-a llama-3.1-8b
//!
//! Arguments: listen address, a name (shown in answers), then the models it serves.
//! It answers `/v1/models`, `/v1/chat/completions` (JSON and `"stream": true` SSE),
//! `/v1/completions` and `/v1/embeddings`, with `usage`.

// The same mock the tests use; its `pub` items are for them.
#[allow(unreachable_pub)]
#[path = "../tests/common/mock_openai.rs"]
mod mock_openai;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = args.first().map(String::as_str).unwrap_or("127.0.0.1:8001");
    let name = args.get(1).map(String::as_str).unwrap_or("mock");
    let models: Vec<&str> = if args.len() > 2 {
        args[2..].iter().map(String::as_str).collect()
    } else {
        vec!["llama-3.1-8b"]
    };
    let Ok(at) = listen.parse() else {
        eprintln!("usage: mock_openai ADDR:PORT [NAME] [MODEL...]");
        std::process::exit(2);
    };
    let server = mock_openai::MockOpenAi::start_on(name, &models, at).await;
    println!(
        "mock OpenAI server {name} on http://{} serving {models:?}",
        server.addr
    );
    let _ = tokio::signal::ctrl_c().await;
}
