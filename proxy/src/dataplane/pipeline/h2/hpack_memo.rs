//! Tests of the vendored h2's patch 4 (third_party/README.md): an HPACK encoder and
//! decoder that remember the header blocks that left their table as it was, and write
//! or read such a block again from the memo. Header blocks go through two of h2's
//! codecs (the frame layer both of vigil's HTTP/2 connections use) over an in-memory
//! pipe, and each block read must be the one written, whatever the memo did.

use bytes::Bytes;
use futures_util::StreamExt;
use h2::frame::{Frame, Headers, Pseudo, StreamId};
use h2::Codec;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use std::future::poll_fn;
use tokio::io::DuplexStream;

/// One header block to send: a request's or an answer's, with its fields.
#[derive(Clone)]
struct Block {
    request: bool,
    /// The `x-request-id`.
    value: &'static str,
    /// Its `authorization` is sensitive.
    sensitive: bool,
}

impl Block {
    fn headers(&self, id: u32) -> Headers {
        let pseudo = match self.request {
            true => Pseudo::request(
                Method::POST,
                Uri::from_static("https://api.test/echo.Echo/Say"),
                None,
            ),
            false => Pseudo::response(StatusCode::OK),
        };
        let mut fields = HeaderMap::new();
        fields.insert("content-type", HeaderValue::from_static("application/grpc"));
        fields.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        // Two values of one name: the second is encoded without its name.
        fields.append("x-forwarded-for", HeaderValue::from_static("127.0.0.1"));
        fields.insert("x-request-id", HeaderValue::from_static(self.value));
        // A field never added to the table: written as a literal, marked "never
        // indexed" when sensitive.
        let mut secret = HeaderValue::from_static("Bearer t");
        secret.set_sensitive(self.sensitive);
        fields.insert("authorization", secret);
        fields.insert("content-length", HeaderValue::from_static("105"));
        Headers::new(StreamId::from(id), pseudo, fields)
    }
}

/// What a block read back says: its pseudo-fields and fields, in order. (Whether a
/// value was sent as sensitive does not survive decoding: h2's decoder does not say.)
fn seen(pseudo: &Pseudo, fields: &HeaderMap) -> Vec<(String, String)> {
    let mut out = vec![
        ("method".into(), format!("{:?}", pseudo.method)),
        ("path".into(), format!("{:?}", pseudo.path)),
        ("authority".into(), format!("{:?}", pseudo.authority)),
        ("status".into(), format!("{:?}", pseudo.status)),
    ];
    for (name, value) in fields {
        out.push((
            name.to_string(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    out
}

/// Sends `blocks` from one codec to another, each as its own stream's HEADERS, and
/// checks each block read is the one sent. The memos' hits: (written, read).
async fn through_codecs(blocks: &[Block]) -> (u64, u64) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let mut writer: Codec<DuplexStream, Bytes> = Codec::new(a);
    let mut reader: Codec<DuplexStream, Bytes> = Codec::new(b);
    for (i, block) in blocks.iter().enumerate() {
        let id = 2 * i as u32 + 1;
        let sent = block.headers(id);
        let expected = {
            let (pseudo, fields) = block.headers(id).into_parts();
            seen(&pseudo, &fields)
        };
        poll_fn(|cx| writer.poll_ready(cx)).await.unwrap();
        writer.buffer(Frame::from(sent)).unwrap();
        poll_fn(|cx| writer.flush(cx)).await.unwrap();
        let got = match reader.next().await {
            Some(Ok(Frame::Headers(h))) => h,
            other => panic!("block {i}: not a HEADERS frame: {other:?}"),
        };
        assert_eq!(got.stream_id(), StreamId::from(id));
        let (pseudo, fields) = got.into_parts();
        assert_eq!(seen(&pseudo, &fields), expected, "block {i}");
    }
    let written = writer.hpack_blocks_remembered().0;
    (written, reader.hpack_blocks_remembered().1)
}

fn block(request: bool, value: &'static str) -> Block {
    Block {
        request,
        value,
        sensitive: false,
    }
}

#[tokio::test]
async fn a_header_block_sent_again_is_copied_from_the_memo_and_reads_the_same() {
    // The same two blocks, alternating, as on a gRPC connection: once the connection
    // is busy (4 blocks) and each block has been seen with the table as it is, every
    // one is written and read from the memos, and reads back as sent.
    let calls: Vec<Block> = (0..20).map(|i| block(i % 2 == 0, "abc")).collect();
    let (written, read) = through_codecs(&calls).await;
    // Blocks 0-3 are not remembered, 4 and 5 are remembered, 6-19 are copies.
    assert_eq!((written, read), (14, 14));
}

#[tokio::test]
async fn a_block_that_changes_the_table_is_not_copied_and_later_ones_read_right() {
    // A new value is added to the table (and may push others out): every block
    // remembered before then is stale; the blocks after it must read back as sent,
    // which they would not if a stale block were copied (its indices point elsewhere).
    let mut calls: Vec<Block> = (0..8).map(|_| block(true, "abc")).collect();
    calls.push(block(true, "a-new-value-for-the-table"));
    calls.extend((0..6).map(|_| block(true, "abc")));
    let values = [
        "1", "22", "333", "4444", "55555", "666666", "7777777", "88888888",
    ];
    for v in values {
        calls.push(block(true, v));
        calls.push(block(true, "abc"));
    }
    let (written, read) = through_codecs(&calls).await;
    // Block 4 is remembered and 5-7 copied; the first "abc" after the new value is
    // encoded afresh (the table changed), then remembered, and the next five copied;
    // each new value after that makes the next "abc" fresh again.
    assert_eq!((written, read), (3 + 5, 3 + 5));
}

/// The header block payloads `blocks` are written as, and the writer's memo hits.
async fn written(blocks: &[Block]) -> (Vec<Vec<u8>>, u64) {
    use tokio::io::AsyncReadExt;
    let (a, mut b) = tokio::io::duplex(1 << 20);
    let mut writer: Codec<DuplexStream, Bytes> = Codec::new(a);
    let mut payloads = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        poll_fn(|cx| writer.poll_ready(cx)).await.unwrap();
        writer
            .buffer(Frame::from(block.headers(2 * i as u32 + 1)))
            .unwrap();
        poll_fn(|cx| writer.flush(cx)).await.unwrap();
        let mut head = [0u8; 9];
        b.read_exact(&mut head).await.unwrap();
        assert_eq!(head[3], 1, "a HEADERS frame");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        b.read_exact(&mut payload).await.unwrap();
        payloads.push(payload);
    }
    (payloads, writer.hpack_blocks_remembered().0)
}

#[tokio::test]
async fn a_sensitive_value_is_never_copied_from_a_block_where_it_was_not() {
    // `authorization` is never added to the table; sent as sensitive, it is written
    // as a literal "never indexed", else as a literal "without indexing": two blocks
    // with the same names and values but other bytes, neither changing the table,
    // which the memo must keep apart.
    let calls: Vec<Block> = (0..12)
        .map(|i| Block {
            request: true,
            value: "abc",
            sensitive: i % 2 == 0,
        })
        .collect();
    let (payloads, hits) = written(&calls).await;
    assert!(hits > 0, "the memo was not used");
    // From block 2 the table holds all it will (block 1 added the value): each block
    // is written as the one two before it.
    for (i, p) in payloads.iter().enumerate().skip(4) {
        assert_eq!(*p, payloads[i - 2], "block {i}");
    }
    assert_ne!(payloads[10], payloads[11]);
}

#[tokio::test]
async fn the_same_bytes_read_after_the_table_changed_are_decoded_afresh() {
    // Index 62 is the table's newest entry: the same block (one byte, 0xbe) means
    // `x-a: 1` until `x-a: 2` is added, then `x-a: 2`. A decoder copying a block
    // remembered before the change would still read `x-a: 1`.
    use tokio::io::AsyncWriteExt;
    let (mut a, b) = tokio::io::duplex(1 << 20);
    let mut reader: Codec<DuplexStream, Bytes> = Codec::new(b);
    let literal = |v: u8| vec![0x40, 3, b'x', b'-', b'a', 1, v];
    let mut blocks = vec![(literal(b'1'), "1")];
    blocks.extend((0..6).map(|_| (vec![0xbe], "1")));
    blocks.push((literal(b'2'), "2"));
    blocks.extend((0..6).map(|_| (vec![0xbe], "2")));
    for (i, (block, value)) in blocks.iter().enumerate() {
        let id = 2 * i as u32 + 1;
        let mut frame = (block.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([1, 0x4]); // HEADERS, END_HEADERS
        frame.extend(id.to_be_bytes());
        frame.extend(block);
        a.write_all(&frame).await.unwrap();
        let got = match reader.next().await {
            Some(Ok(Frame::Headers(h))) => h,
            other => panic!("block {i}: not a HEADERS frame: {other:?}"),
        };
        let fields = got.into_parts().1;
        assert_eq!(fields.get("x-a").unwrap(), *value, "block {i}");
    }
    // Block 4 is remembered and 5-6 copied; after the change, 8 is decoded afresh and
    // remembered, 9-13 copied.
    assert_eq!(reader.hpack_blocks_remembered().1, 2 + 5);
}
