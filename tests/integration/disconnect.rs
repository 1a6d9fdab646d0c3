//! A client that goes away must cancel the upstream generation: the upstream sees its
//! connection closed within a second.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::fake_upstream::Flavor;

/// Sends a streaming chat request on a raw socket and returns the socket.
async fn open_stream(warden: &Warden) -> tokio::net::TcpStream {
    let body = chat_body(true).to_string();
    let mut socket = tokio::net::TcpStream::connect(warden.addr).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: warden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

/// Reads the start of the answer: the response head of a stream that began.
async fn assert_answered_200(socket: &mut tokio::net::TcpStream) {
    let mut buffer = vec![0u8; 4096];
    let n = socket.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn disconnect_mid_stream_cancels_the_upstream() {
    for flavor in [Flavor::OpenAi, Flavor::Ollama] {
        let (upstream, warden) = single(flavor).await;
        upstream.script(|s| s.frame_delay = Duration::from_millis(200));
        let mut socket = open_stream(&warden).await;
        assert_answered_200(&mut socket).await;
        drop(socket);
        assert!(
            upstream.wait_abandoned(Duration::from_secs(1)).await,
            "{flavor:?}: the upstream stream was not closed within a second"
        );
    }
}

#[tokio::test]
async fn disconnect_while_waiting_for_the_first_token_cancels_the_upstream() {
    for flavor in [Flavor::OpenAi, Flavor::Ollama] {
        let (upstream, warden) = single(flavor).await;
        // The model is slow to start: nothing comes back for a while.
        upstream.script(|s| s.first_byte_delay = Duration::from_millis(1500));
        let socket = open_stream(&warden).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(upstream.calls(), 1, "the request reached the upstream");
        drop(socket);
        assert!(
            upstream.wait_abandoned(Duration::from_secs(1)).await,
            "{flavor:?}: the upstream request was not cancelled within a second"
        );
    }
}

#[tokio::test]
async fn disconnect_during_a_non_streaming_request_cancels_the_upstream() {
    let (upstream, warden) = single(Flavor::Ollama).await;
    upstream.script(|s| s.first_byte_delay = Duration::from_millis(1500));
    let body = chat_body(false).to_string();
    let mut socket = tokio::net::TcpStream::connect(warden.addr).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: warden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.calls(), 1);
    drop(socket);
    assert!(upstream.wait_abandoned(Duration::from_secs(1)).await);
}

#[tokio::test]
async fn disconnect_while_output_is_held_for_the_guard_cancels_the_upstream() {
    for flavor in [Flavor::OpenAi, Flavor::Ollama] {
        // A window larger than the answer: in buffered mode nothing is released until the end.
        let policy = test_policy("", 100_000, "buffered");
        let (upstream, warden) = guarded(flavor, "held", &policy).await;
        upstream.script(|s| s.frame_delay = Duration::from_millis(300));
        let mut socket = open_stream(&warden).await;
        // The start of a pipelined next request: the server cannot learn from reading that the
        // client left (the bytes are there to read), only from a write that fails.
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_answered_200(&mut socket).await;
        drop(socket);
        assert!(
            upstream.wait_abandoned(Duration::from_secs(1)).await,
            "{flavor:?}: the upstream kept generating for a client that left"
        );
    }
}
