//! Tests of the vendored h2's patch 2 (third_party/README.md) as to the room a
//! connection keeps for its streams: a connection that carried many streams at once
//! keeps it between them (growing it again for each batch of a client's requests was
//! a gRPC call's largest copy), until it is quiet (`release_room`, which vigil's
//! HTTP/2 server calls after `QUIET` without a stream); one that carried a stream or
//! two gives it back at once.

use bytes::Bytes;
use h2::client::SendRequest;
use h2::server::{Connection, SendResponse};
use std::future::poll_fn;
use tokio::io::DuplexStream;

type Server = Connection<DuplexStream, Bytes>;

/// Sends `n` requests at once from a client on a pipe to `server`, answers each once
/// all have arrived, and drives the server until the client has every answer.
async fn carry(n: usize) -> (Server, SendRequest<Bytes>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (client, server) = tokio::join!(h2::client::handshake(a), h2::server::handshake(b));
    let (mut send, connection) = client.unwrap();
    let mut server: Server = server.unwrap();
    tokio::spawn(connection);
    let client = tokio::spawn(async move {
        let mut answers = Vec::new();
        for _ in 0..n {
            send = send.ready().await.unwrap();
            let request = http::Request::post("http://room.test/").body(()).unwrap();
            answers.push(send.send_request(request, true).unwrap().0);
        }
        for answer in answers {
            assert_eq!(answer.await.unwrap().status(), 200);
        }
        // (Kept open: the connection closes once its last handle is dropped.)
        send
    });
    let mut respond: Vec<SendResponse<Bytes>> = Vec::new();
    while respond.len() < n {
        let (_request, r) = server.accept().await.expect("a stream").unwrap();
        respond.push(r);
    }
    for mut r in respond {
        r.send_response(http::Response::new(()), true).unwrap();
    }
    // The server's part of the exchange is done by its connection, polled until the
    // client has every answer.
    let send = tokio::select! {
        biased;
        done = client => done.unwrap(),
        end = poll_fn(|cx| server.poll_closed(cx)) => panic!("the connection ended: {end:?}"),
    };
    // Once more, for the client's last frames.
    let _ = futures_util::poll!(poll_fn(|cx| server.poll_closed(cx)));
    (server, send)
}

#[tokio::test]
async fn a_connection_that_carried_many_streams_keeps_their_room_until_it_is_quiet() {
    let (mut server, _client) = carry(20).await;
    assert_eq!(server.num_wired_streams(), 0, "every stream ended");
    assert!(
        server.stream_room() >= 20,
        "room kept for the next streams: {}",
        server.stream_room()
    );
    server.release_room();
    assert_eq!(server.stream_room(), 0);
}

#[tokio::test]
async fn a_connection_that_carried_one_stream_gives_its_room_back_at_once() {
    let (server, _client) = carry(1).await;
    assert_eq!(server.num_wired_streams(), 0, "the stream ended");
    assert_eq!(server.stream_room(), 0);
}
