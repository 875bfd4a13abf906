//! A hostile peer: a trusted device whose messages try to escape the folder, crash the
//! daemon, exhaust its memory or feed it wrong bytes. It speaks real QUIC with its real
//! identity (through tandem's own transport), then sends what no honest peer would.
//!
//! For every attack the victim must refuse with a logged reason, write nothing outside its
//! root, keep serving an honest peer, and keep its memory bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tandem::home::Home;
use tandem::identity::Identity;
use tandem::net::Endpoint;
use tandem::net::tls::TrustedPeers;
use tandem_proto::model::{
    ChunkRef, EntryKind, FileRecord, FolderId, Hash, RelPath, ShortId, VersionVector,
};
use tandem_proto::wire::{
    ChunkEdit, ChunkOp, ClusterConfig, DeltaOp, DeltaRequest, EditBatch, EditedRecord, ErrorCode,
    FolderShare, Hello, IndexBatch, MAX_EDITED_CHUNKS, MAX_FRAME, MAX_HAVE, MAX_IN_FLIGHT, Message,
    NewChunk, Request, Resend, Response, ResponseBody, decode_frame, encode_frame,
};

use crate::support::{Device, Rng, proc_status_kib, random_bytes, wait_until};

/// Mallory's end of a session with the victim.
struct Mallory {
    _endpoint: Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    _recv: quinn::RecvStream,
}

/// Connects to `target` as `me` and sends the handshake messages: Hello, then a
/// ClusterConfig claiming `folders`.
async fn open_session_sharing(me: &Device, target: &Device, folders: &[&str]) -> Mallory {
    open_session_speaking(me, target, folders, 1).await
}

/// As [`open_session_sharing`], saying Hello with protocol `version`.
async fn open_session_speaking(
    me: &Device,
    target: &Device,
    folders: &[&str],
    version: u32,
) -> Mallory {
    let home = Home::new(&me.home()).unwrap();
    let identity = Identity::load(&home).unwrap();
    let target_id = target.id().parse().unwrap();
    let endpoint = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        identity.cert_der().unwrap(),
        identity.key_der(),
        TrustedPeers::new([target_id]),
    )
    .unwrap();
    let addr: SocketAddr = target.listen().parse().unwrap();
    let conn = endpoint.connect(addr, target_id).await.unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let hello = Message::Hello(Hello {
        protocol_version: version,
        device_name: "mallory".into(),
        client_version: "evil 1.0".into(),
    });
    let shares = folders
        .iter()
        .map(|f| FolderShare {
            id: FolderId::new(*f).unwrap(),
            index_id: 77,
            seen_index_id: 0,
            seen_sequence: 0,
        })
        .collect();
    let config = Message::ClusterConfig(ClusterConfig { folders: shares });
    for message in [hello, config] {
        send.write_all(&encode_frame(&message).unwrap()).await.unwrap();
    }
    Mallory { _endpoint: endpoint, conn, send, _recv: recv }
}

async fn open_session(me: &Device, target: &Device) -> Mallory {
    open_session_sharing(me, target, &["docs"]).await
}

/// A live file record in `docs` with `content`'s hash and one chunk per `chunk` bytes.
fn record_of(path: &str, content: &[u8], chunk: usize) -> FileRecord {
    let chunks = content
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| ChunkRef {
            offset: (i * chunk) as u64,
            len: c.len() as u32,
            hash: Hash::of(c),
        })
        .collect();
    FileRecord {
        path: RelPath::new(path).unwrap(),
        kind: EntryKind::File,
        size: content.len() as u64,
        mtime_ns: 1_700_000_000_000_000_000,
        mode: 0o644,
        symlink_target: None,
        hash: Hash::of(content),
        chunks,
        version: VersionVector::new().bumped(ShortId::new(9), 4_000_000_000),
        sequence: 1,
        deleted: false,
        modified_by: ShortId::new(9),
    }
}

fn index_frame(folder: &str, records: Vec<FileRecord>) -> Vec<u8> {
    let batch = IndexBatch { folder: FolderId::new(folder).unwrap(), records, first: true };
    encode_frame(&Message::Index(batch)).unwrap()
}

/// An index frame whose single record is named `name` (any bytes, same length as the
/// placeholder), built by encoding a valid record and patching its name.
fn index_frame_naming(name: &str) -> Vec<u8> {
    index_frame_patched(&"p".repeat(name.len()), name)
}

/// An index frame whose single record, encoded with the valid name `placeholder`, is then
/// renamed to `name` (the same length) in the encoded bytes.
pub(crate) fn index_frame_patched(placeholder: &str, name: &str) -> Vec<u8> {
    assert_eq!(placeholder.len(), name.len());
    let mut frame = index_frame("docs", vec![record_of(placeholder, b"pwned", 5)]);
    let at = frame.windows(placeholder.len()).position(|w| w == placeholder.as_bytes()).unwrap();
    frame[at..at + name.len()].copy_from_slice(name.as_bytes());
    frame
}

/// Connects to `target` as `me` sharing `docs` and returns the connection and its control
/// stream after the handshake messages (the endpoint lives as long as the test process).
pub(crate) async fn open_raw_session(
    me: &Device,
    target: &Device,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let Mallory { _endpoint, conn, send, _recv } =
        open_session_sharing(me, target, &["docs"]).await;
    std::mem::forget(_endpoint);
    (conn, send, _recv)
}

/// An index frame whose record's chunk count claims `count` (a varint) while one chunk
/// follows.
fn index_frame_claiming_chunks(count: &[u8]) -> Vec<u8> {
    let frame = index_frame("docs", vec![record_of("claims.bin", b"12345", 5)]);
    let hash = Hash::of(b"12345");
    // the chunk list: count 01, offset 00, len 05, then the chunk's hash
    let mut needle = vec![0x01, 0x00, 0x05];
    needle.extend_from_slice(hash.as_bytes());
    let at = frame.windows(needle.len()).position(|w| w == needle.as_slice()).unwrap();
    let mut body = frame[4..at].to_vec();
    body.extend_from_slice(count);
    body.extend_from_slice(&frame[at + 1..]);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Sends `attack` on the control stream and waits for the victim to close the connection.
async fn send_and_expect_close(mallory: Mallory, attack: &[u8], finish: bool) {
    let Mallory { conn, mut send, .. } = mallory;
    let _ = send.write_all(attack).await;
    if finish {
        let _ = send.finish();
    }
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed()).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open after {:?}",
        &attack[..attack.len().min(64)]
    );
}

/// Everything is refused with a reason in the log; nothing escapes; the honest peer syncs.
fn assert_survived(victim: &Device, honest: &Device, log: &str) {
    let parent = victim.dir.path();
    assert!(!parent.join("escape").exists() && !parent.parent().unwrap().join("escape").exists());
    assert!(!std::path::Path::new("/etc/passwd0").exists());
    assert!(!victim.path("a").exists(), "{log}");
    honest.sync_ok();
    assert_eq!(std::fs::read(honest.path("real.txt")).unwrap(), b"for the honest peer");
}

fn victim_mallory_honest() -> (Device, Device, Device) {
    let (victim, mallory, honest) = (Device::peer(), Device::peer(), Device::peer());
    victim.trust(&mallory);
    victim.trust(&honest);
    honest.trust(&victim);
    victim.write("real.txt", b"for the honest peer");
    (victim, mallory, honest)
}

#[test]
fn traversal_names_and_garbage_from_a_trusted_peer_are_refused_and_others_still_served() {
    let (victim, mallory, honest) = victim_mallory_honest();
    let serve = victim.serve();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut rng = Rng::new(7);
    let mut garbage = random_bytes(99, 4096);
    garbage.splice(0..0, [0u8, 0, 16, 1, 2]); // a 4,097-byte Index frame of noise
    let attacks: Vec<(Vec<u8>, bool)> = vec![
        (index_frame_naming("../../escape"), true),
        (index_frame_naming("/etc/passwd0"), true),
        (index_frame_naming("a\0b"), true),
        (vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3], false), // absurd length
        (((MAX_FRAME + 1) as u32).to_be_bytes().to_vec(), false), // one byte over the limit
        (vec![0, 0, 0, 5, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE], true), // unknown message type
        (vec![0, 0, 0, 0], false),                      // empty frame
        (vec![0, 0, 0, 100, 2, 4], true),               // truncated body
        (vec![0, 0], true),                             // truncated prefix
        (garbage, true),
        ((0..64).map(|_| rng.below(256) as u8).collect(), true), // raw noise
        (index_frame_claiming_chunks(&[0xFC, 0x40, 0x42, 0x0F, 0x00]), true), // 1,000,000
        (index_frame_claiming_chunks(&[0xFD, 0, 0, 0, 0, 0, 1, 0, 0]), true), // 2^40
    ];
    for (attack, finish) in &attacks {
        runtime.block_on(async {
            let mallory = open_session(&mallory, &victim).await;
            send_and_expect_close(mallory, attack, *finish).await;
        });
    }
    let log_has = |needle: &str| wait_until(10, || serve.log_text().contains(needle));
    for needle in [
        "malformed message",
        "exceeds the",
        "empty frame",
        "stream ended inside a frame (6 bytes pending)",
        "stream ended inside a frame (2 bytes pending)",
    ] {
        assert!(log_has(needle), "no {needle:?} in the log: {}", serve.log_text());
    }
    let closes = serve.log_text().matches("session with").count();
    assert!(closes >= attacks.len(), "{closes} closes logged for {} attacks", attacks.len());
    assert_survived(&victim, &honest, &serve.log_text());
}

#[test]
fn records_claiming_absurd_sizes_are_refused_without_allocating_or_reading_them() {
    let (victim, mallory, honest) = victim_mallory_honest();
    let serve = victim.serve();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut huge = record_of("huge.bin", b"12345", 5);
    huge.size = 1 << 62; // one 5-byte chunk for 4 EiB
    let mut sparse = record_of("sparse.bin", b"", 1);
    sparse.size = 1 << 40; // a terabyte of nothing to hash, and no chunk at all
    let mut fat_chunk = record_of("fat.bin", b"12345", 5);
    fat_chunk.size = u64::from(u32::MAX);
    fat_chunk.chunks[0].len = u32::MAX; // a 4 GiB read buffer
    let mut gap = record_of("gap.bin", &random_bytes(5, 200_000), 65_536);
    gap.chunks[1].offset += 1;
    for (record, why) in [
        (huge, "chunks cover 5 of 4611686018427387904 bytes"),
        (sparse, "chunks cover 0 of 1099511627776 bytes"),
        (fat_chunk, "chunk 0 is 4294967295 bytes"),
        (gap, "chunk 1 starts at 65537, expected 65536"),
    ] {
        let frame = index_frame("docs", vec![record]);
        runtime.block_on(async {
            let mallory = open_session(&mallory, &victim).await;
            send_and_expect_close(mallory, &frame, false).await;
        });
        assert!(wait_until(10, || serve.log_text().contains(why)), "{why}: {}", serve.log_text());
    }
    for name in ["huge.bin", "sparse.bin", "fat.bin", "gap.bin"] {
        assert!(!victim.path(name).exists(), "{name} was written");
    }
    // the folder runner is free: a change from the honest peer still arrives
    honest.write("from-honest.txt", b"still syncing");
    let (ok, stderr) = honest.sync(60);
    assert!(ok, "{stderr}");
    assert!(
        wait_until(30, || victim.path("from-honest.txt").exists()),
        "the victim stopped syncing: {}",
        serve.log_text()
    );
    assert_survived(&victim, &honest, &serve.log_text());
}

/// Answers the victim's requests on `conn` with `answer(request)`.
fn serve_requests_with(
    conn: quinn::Connection,
    answer: impl Fn(&Request) -> ResponseBody + Send + Sync + 'static,
) {
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(bytes) = recv.read_to_end(1 << 20).await else { return };
                let Ok(Message::Request(request)) = decode_frame(&bytes) else { return };
                let response = Response { id: request.id, body: answer(&request) };
                let _ = send.write_all(&encode_frame(&Message::Response(response)).unwrap()).await;
                let _ = send.finish();
            });
        }
    });
}

#[test]
fn chunks_with_wrong_bytes_from_a_crafted_peer_are_discarded_and_fetched_again() {
    let (victim, mallory, honest) = victim_mallory_honest();
    let serve = victim.serve();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let evil = random_bytes(1, 300_000);
    let fixed = random_bytes(2, 300_000);
    let records =
        vec![record_of("evil.bin", &evil, 100_000), record_of("fixed.bin", &fixed, 100_000)];
    let asked = Arc::new(AtomicU64::new(0));
    let session = runtime.block_on(async {
        let mut m = open_session(&mallory, &victim).await;
        m.send.write_all(&index_frame("docs", records)).await.unwrap();
        m.send.write_all(&encode_frame(&Message::Ping).unwrap()).await.unwrap();
        let (evil, fixed, asked) = (evil.clone(), fixed.clone(), asked.clone());
        // evil.bin: always the wrong bytes; fixed.bin: wrong the first time each chunk is
        // asked for, right afterwards
        let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        serve_requests_with(m.conn.clone(), move |r| {
            asked.fetch_add(1, Ordering::Relaxed);
            let source = if r.path.as_str() == "evil.bin" { &evil } else { &fixed };
            let (at, len) = (r.offset as usize, r.size as usize);
            let mut data = source[at..at + len].to_vec();
            let first_time = seen.lock().unwrap().insert((r.path.to_string(), r.offset));
            if r.path.as_str() == "evil.bin" || first_time {
                data[len / 2] ^= 0x01;
            }
            ResponseBody::Data(data)
        });
        m
    });
    let arrived =
        wait_until(60, || std::fs::read(victim.path("fixed.bin")).is_ok_and(|d| d == fixed));
    assert!(arrived, "fixed.bin never arrived: {}", serve.log_text());
    assert!(serve.log_text().contains("failed verification"), "{}", serve.log_text());
    // evil.bin never shows up under its name, whole or partial
    assert!(wait_until(30, || serve.log_text().contains("evil.bin: no connected peer")));
    assert!(!victim.path("evil.bin").exists(), "bytes that failed verification were installed");
    // each file fits one request and none of it is here, so each is asked for whole: fixed.bin
    // twice (bad, then good), evil.bin at least three times (every attempt, then a retry)
    assert!(asked.load(Ordering::Relaxed) >= 5, "{} requests", asked.load(Ordering::Relaxed));
    drop(session);
    assert_survived(&victim, &honest, &serve.log_text());
}

#[test]
fn a_puller_keeps_at_most_max_in_flight_requests_outstanding_per_peer() {
    // PROTOCOL §10.4: a requester SHOULD keep at most MAX_IN_FLIGHT requests outstanding per
    // peer. Eight 8 MiB files (too big for a whole-file request) of 64 KiB chunks are pulled
    // at once by parallel transfers; Mallory answers each request after 30 ms and counts how
    // many wait at the same time.
    let (victim, mallory, honest) = victim_mallory_honest();
    let serve = victim.serve();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let files: Vec<(String, Vec<u8>)> =
        (0..8).map(|i| (format!("many-{i}.bin"), random_bytes(40 + i, 8 << 20))).collect();
    let records = files.iter().map(|(name, data)| record_of(name, data, 64 << 10)).collect();
    let (waiting, most) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let session = runtime.block_on(async {
        let mut m = open_session(&mallory, &victim).await;
        m.send.write_all(&index_frame("docs", records)).await.unwrap();
        m.send.write_all(&encode_frame(&Message::Ping).unwrap()).await.unwrap();
        let (conn, files) = (m.conn.clone(), Arc::new(files.clone()));
        let (waiting, most) = (waiting.clone(), most.clone());
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let (files, waiting, most) = (files.clone(), waiting.clone(), most.clone());
                tokio::spawn(async move {
                    let Ok(bytes) = recv.read_to_end(1 << 20).await else { return };
                    let Ok(Message::Request(r)) = decode_frame(&bytes) else { return };
                    let now = waiting.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    let data = files.iter().find(|(n, _)| n == r.path.as_str()).unwrap();
                    let (at, len) = (r.offset as usize, r.size as usize);
                    let body = ResponseBody::Data(data.1[at..at + len].to_vec());
                    waiting.fetch_sub(1, Ordering::SeqCst);
                    let response = Response { id: r.id, body };
                    let _ =
                        send.write_all(&encode_frame(&Message::Response(response)).unwrap()).await;
                    let _ = send.finish();
                });
            }
        });
        m
    });
    let arrived = wait_until(120, || {
        files.iter().all(|(name, data)| std::fs::read(victim.path(name)).is_ok_and(|d| &d == data))
    });
    assert!(arrived, "the files never arrived: {}", serve.log_text());
    let most = most.load(Ordering::SeqCst);
    assert!(most <= MAX_IN_FLIGHT as u64, "{most} requests were outstanding at once");
    assert!(most > 8, "the transfers never overlapped ({most}), so this proved nothing");
    assert!(!serve.log_text().contains("Busy"), "{}", serve.log_text());
    drop(session);
    assert_survived(&victim, &honest, &serve.log_text());
}

#[test]
fn index_for_a_folder_not_shared_with_the_peer_is_refused_and_its_files_are_not_served() {
    let (victim, mallory, honest) = victim_mallory_honest();
    std::fs::create_dir(victim.dir.path().join("private")).unwrap();
    let private = victim.dir.path().join("private");
    victim.ok(&["folder", "add", "private", private.to_str().unwrap()]);
    std::fs::write(private.join("secret.txt"), b"not for mallory").unwrap();
    let serve = victim.serve();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for folder in ["private", "nosuch"] {
        let frame = index_frame(folder, vec![record_of("planted.txt", b"planted", 7)]);
        runtime.block_on(async {
            let mallory = open_session_sharing(&mallory, &victim, &["docs", "private"]).await;
            send_and_expect_close(mallory, &frame, false).await;
        });
        let why = format!("index for folder {folder} which is not shared with it");
        assert!(wait_until(10, || serve.log_text().contains(&why)), "{}", serve.log_text());
    }
    // IndexUpdate too
    let update = Message::IndexUpdate(IndexBatch {
        folder: FolderId::new("private").unwrap(),
        records: vec![record_of("planted.txt", b"planted", 7)],
        first: false,
    });
    runtime.block_on(async {
        let mallory = open_session_sharing(&mallory, &victim, &["docs", "private"]).await;
        send_and_expect_close(mallory, &encode_frame(&update).unwrap(), false).await;
    });
    assert!(!private.join("planted.txt").exists());
    let secret = b"not for mallory";
    let answers = runtime.block_on(async {
        let m = open_session_sharing(&mallory, &victim, &["docs", "private"]).await;
        let mut out = Vec::new();
        for folder in ["private", "nosuch"] {
            let request = Request {
                id: 1,
                folder: FolderId::new(folder).unwrap(),
                path: RelPath::new("secret.txt").unwrap(),
                offset: 0,
                size: secret.len() as u32,
                hash: Hash::of(secret),
            };
            out.push(ask(&m.conn, request).await);
        }
        out
    });
    for body in answers {
        assert_eq!(body, ResponseBody::Error(ErrorCode::NotShared));
    }
    assert_survived(&victim, &honest, &serve.log_text());
}

/// Sends one request on a new stream and returns the response body.
async fn ask(conn: &quinn::Connection, request: Request) -> ResponseBody {
    let id = request.id;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(&Message::Request(request)).unwrap()).await.unwrap();
    send.finish().unwrap();
    let bytes = recv.read_to_end(MAX_FRAME + 4).await.unwrap();
    match decode_frame(&bytes).unwrap() {
        Message::Response(r) if r.id == id => r.body,
        other => panic!("unexpected answer {other:?}"),
    }
}

#[test]
fn absurd_requests_are_refused_and_nothing_outside_the_root_is_served() {
    let (victim, mallory, honest) = victim_mallory_honest();
    let outside = victim.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(&outside, victim.path("dirlink")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), victim.path("filelink")).unwrap();
    let serve = victim.serve();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let real = b"for the honest peer";
    let secret = b"outside the root";
    let request = |path: &str, offset: u64, size: u32, hash: Hash| Request {
        id: 5,
        folder: FolderId::new("docs").unwrap(),
        path: RelPath::new(path).unwrap(),
        offset,
        size,
        hash,
    };
    let cases = [
        (request("real.txt", 0, u32::MAX, Hash::of(real)), ErrorCode::Invalid),
        (request("real.txt", 0, (4 << 20) + 1, Hash::of(real)), ErrorCode::Invalid),
        (request("real.txt", u64::MAX - 3, 19, Hash::of(real)), ErrorCode::Changed),
        (request("real.txt", 1 << 62, 4 << 20, Hash::of(real)), ErrorCode::Changed),
        (request("real.txt", 0, 4 << 20, Hash::of(real)), ErrorCode::Changed),
        (request("dirlink/secret.txt", 0, 16, Hash::of(secret)), ErrorCode::NoSuchFile),
        (request("filelink", 0, 16, Hash::of(secret)), ErrorCode::NoSuchFile),
        (request("missing.txt", 0, 16, Hash::of(secret)), ErrorCode::NoSuchFile),
    ];
    let answers = runtime.block_on(async {
        let m = open_session(&mallory, &victim).await;
        let mut out = Vec::new();
        for (r, _) in &cases {
            out.push(ask(&m.conn, r.clone()).await);
        }
        // the session survives refused requests: a valid one is still answered
        out.push(ask(&m.conn, request("real.txt", 0, real.len() as u32, Hash::of(real))).await);
        out
    });
    for ((r, want), got) in cases.iter().zip(&answers) {
        assert_eq!(got, &ResponseBody::Error(*want), "{r:?}");
    }
    assert_eq!(answers.last().unwrap(), &ResponseBody::Data(real.to_vec()));
    assert!(
        wait_until(10, || serve.log_text().contains("for 4294967295 bytes (the limit is 4194304)")),
        "{}",
        serve.log_text()
    );
    assert_survived(&victim, &honest, &serve.log_text());
}

/// Counts of a flood's answers: data, busy, anything else.
type Answers = (u64, u64, u64);

/// Sends `n` requests for `chunk`-byte pieces of `data` (the victim's `big.bin`), 200 at
/// a time, and counts the answers.
async fn flood(conn: &quinn::Connection, data: &[u8], chunk: usize, n: u64) -> Answers {
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..n {
        let at = (id as usize * chunk) % data.len();
        let request = Request {
            id,
            folder: FolderId::new("docs").unwrap(),
            path: RelPath::new("big.bin").unwrap(),
            offset: at as u64,
            size: chunk as u32,
            hash: Hash::of(&data[at..at + chunk]),
        };
        while tasks.len() >= 200 {
            tasks.join_next().await;
        }
        let (conn, counts) = (conn.clone(), counts.clone());
        tasks.spawn(async move {
            let slot = match ask(&conn, request).await {
                ResponseBody::Data(d) if d.len() == chunk => 0,
                ResponseBody::Error(ErrorCode::Busy) => 1,
                _ => 2,
            };
            counts[slot].fetch_add(1, Ordering::Relaxed);
        });
    }
    while tasks.join_next().await.is_some() {}
    let get = |i: usize| counts[i].load(Ordering::Relaxed);
    (get(0), get(1), get(2))
}

/// Holds `MAX_IN_FLIGHT` request streams open with half a frame each, then asks for a piece
/// of `big.bin` (`data`): (refused as Busy while they are held, answered once they are reset).
///
/// The victim takes a request's slot when it accepts the stream, in whatever order its
/// tasks run: an ask that races the held streams may take a slot one of them then misses.
/// So each round gives them a moment first, and a round that loses the race is retried.
async fn hold_every_slot(conn: &quinn::Connection, data: &[u8]) -> (bool, bool) {
    let piece = Request {
        id: 1,
        folder: FolderId::new("docs").unwrap(),
        path: RelPath::new("big.bin").unwrap(),
        offset: 0,
        size: 1000,
        hash: Hash::of(&data[..1000]),
    };
    let mut refused = false;
    for round in 1..=20u64 {
        let mut held = Vec::new();
        for _ in 0..MAX_IN_FLIGHT {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&[0, 0, 1, 0]).await.unwrap(); // a length, and no body yet
            held.push((send, recv));
        }
        tokio::time::sleep(Duration::from_millis(50 * round)).await;
        refused = ask(conn, piece.clone()).await == ResponseBody::Error(ErrorCode::Busy);
        for (mut send, _) in held {
            let _ = send.reset(0u32.into());
        }
        if refused {
            break;
        }
    }
    let mut answered = false;
    for _ in 0..100 {
        if ask(conn, piece.clone()).await == ResponseBody::Data(data[..1000].to_vec()) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (refused, answered)
}

#[test]
fn a_flood_of_requests_is_answered_or_refused_with_bounded_memory() {
    let (victim, mallory, honest) = victim_mallory_honest();
    let data = random_bytes(3, 16 << 20);
    victim.write("big.bin", &data);
    // glibc gives busy threads their own malloc arenas, and a flood keeps many blocking
    // threads busy: their fragmentation makes RSS creep towards a plateau that says nothing
    // about tandem. With two arenas what tandem itself keeps shows, so a leak does too.
    let serve = victim.serve_with(&[("MALLOC_ARENA_MAX", "2")]);
    let pid = serve.pid();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    const CHUNK: usize = 256 << 10;
    const FLOOD: u64 = 4000;
    let rss_before = proc_status_kib(pid, "VmRSS");
    let m = runtime.block_on(open_session(&mallory, &victim));
    let mut peaks = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(runtime.block_on(flood(&m.conn, &data, CHUNK, FLOOD)));
        peaks.push(proc_status_kib(pid, "VmHWM") >> 10);
    }
    eprintln!(
        "request flood: 3 × {FLOOD} requests × {} KiB, answers (data, busy, other) {answers:?}; \
         victim RSS {} MiB before, peak after each flood {peaks:?} MiB, {} MiB at the end",
        CHUNK >> 10,
        rss_before >> 10,
        proc_status_kib(pid, "VmRSS") >> 10,
    );
    for &(answered, busy, other) in &answers {
        assert_eq!(answered + busy, FLOOD, "{other} requests got something else");
        assert!(answered > 0);
    }
    // each flood moves 1 GiB: keeping answers around, or answering without a bound on the
    // requests in flight, would blow far past these
    let growth = peaks[2].saturating_sub(rss_before >> 10);
    assert!(growth < 200, "victim memory grew by {growth} MiB during the floods");
    let last = peaks[2] - peaks[1];
    assert!(last < 32, "the third flood grew the peak by {last} MiB: something leaks");
    // MAX_IN_FLIGHT requests that never finish arriving hold every slot: the next one is
    // refused as Busy (and logged), and answered again once they are gone
    let (refused, answered_again) = runtime.block_on(hold_every_slot(&m.conn, &data));
    assert!(refused, "{MAX_IN_FLIGHT} requests in flight and the next one was not refused");
    assert!(answered_again, "requests were not answered after the held ones went away");
    let log = serve.log_text();
    assert!(log.contains("requests in flight; answering Busy"), "{log}");
    drop(m);
    assert_survived(&victim, &honest, &serve.log_text());
}

#[test]
fn a_name_under_a_parent_that_is_a_symlink_here_is_not_written_through_it() {
    let (victim, mallory, honest) = victim_mallory_honest();
    let outside = victim.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, victim.path("link")).unwrap();
    let serve = victim.serve();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let content = b"through the link".to_vec();
    let mut session = runtime.block_on(async {
        let mut m = open_session(&mallory, &victim).await;
        let records = vec![record_of("link/pwned.txt", &content, 1 << 20)];
        m.send.write_all(&index_frame("docs", records)).await.unwrap();
        m.send.write_all(&encode_frame(&Message::Ping).unwrap()).await.unwrap();
        let content = content.clone();
        serve_requests_with(m.conn.clone(), move |r| {
            let (at, len) = (r.offset as usize, r.size as usize);
            ResponseBody::Data(content[at..at + len].to_vec())
        });
        m
    });
    let why = "link/pwned.txt not synced: parent-not-directory";
    assert!(wait_until(30, || serve.log_text().contains(why)), "{}", serve.log_text());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "written through the symlink");
    assert!(std::fs::symlink_metadata(victim.path("link")).unwrap().file_type().is_symlink());
    // Mallory now claims `link` is a directory: a directory beats the victim's concurrent
    // symlink, which is renamed aside (never followed), and the file lands in a real
    // directory inside the root
    let mut dir = record_of("link", b"", 1);
    dir.kind = EntryKind::Dir;
    dir.mode = 0o755;
    dir.hash = Hash::ZERO;
    dir.sequence = 2;
    let update = Message::IndexUpdate(IndexBatch {
        folder: FolderId::new("docs").unwrap(),
        records: vec![dir],
        first: false,
    });
    runtime.block_on(session.send.write_all(&encode_frame(&update).unwrap())).unwrap();
    let landed = wait_until(30, || {
        std::fs::symlink_metadata(victim.path("link")).is_ok_and(|m| m.is_dir())
            && std::fs::read(victim.path("link/pwned.txt")).is_ok_and(|d| d == content)
    });
    assert!(landed, "{}", serve.log_text());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "written through the symlink");
    let copies: Vec<_> = std::fs::read_dir(victim.folder())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("link.sync-conflict-"))
        .collect();
    assert_eq!(copies.len(), 1, "the symlink was not kept aside");
    assert!(copies[0].file_type().unwrap().is_symlink());
    assert_survived(&victim, &honest, &serve.log_text());
}

#[test]
fn a_peer_that_accepts_requests_and_never_answers_is_dropped_and_the_file_fails_cleanly() {
    let (victim, mallory, honest) = victim_mallory_honest();
    // the fault hook shortens the stall limit from 30 s to 2 s
    let serve = victim.serve_with(&[("TANDEM_TEST_STALL_SECS", "2")]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let content = random_bytes(3, 300_000);
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let session = runtime.block_on(async {
        let mut m = open_session(&mallory, &victim).await;
        let records = vec![record_of("stuck.bin", &content, 100_000)];
        m.send.write_all(&index_frame("docs", records)).await.unwrap();
        m.send.write_all(&encode_frame(&Message::Ping).unwrap()).await.unwrap();
        // take every request stream and hold it open without a word
        let (conn, held) = (m.conn.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok(streams) = conn.accept_bi().await {
                held.lock().unwrap().push(streams);
            }
        });
        m
    });
    let log_has = |needle: &str| wait_until(60, || serve.log_text().contains(needle));
    assert!(log_has("sent no data for 2 s"), "{}", serve.log_text());
    assert!(!held.lock().unwrap().is_empty(), "the victim never asked");
    assert!(log_has("stuck.bin"), "{}", serve.log_text());
    assert!(!victim.path("stuck.bin").exists(), "a file with unanswered chunks was installed");
    drop(session);
    assert_survived(&victim, &honest, &serve.log_text());
}

/// The victim's own record of `big.bin`, which an honest edit would name as its base:
/// sequence, content hash and chunk count.
fn indexed_base(victim: &Device) -> (u64, Hash, u32) {
    let base = victim.entry("big.bin").unwrap();
    let hash = base["hash"].as_str().unwrap().parse().unwrap();
    (base["sequence"].as_u64().unwrap(), hash, base["chunks"].as_u64().unwrap() as u32)
}

/// An `IndexEdits` frame for `docs` with one record of `path` whose chunk list is `edit`.
fn edits_frame(path: &str, size: u64, chunks: Vec<ChunkRef>, edit: ChunkEdit) -> Vec<u8> {
    let mut record = record_of(path, b"", 1);
    record.size = size;
    record.chunks = chunks;
    let batch = EditBatch {
        folder: FolderId::new("docs").unwrap(),
        records: vec![EditedRecord { record, edit: Some(edit) }],
    };
    encode_frame(&Message::IndexEdits(batch)).unwrap()
}

#[test]
fn chunk_list_edits_that_break_the_protocol_are_refused_and_nothing_is_written() {
    let (victim, mallory, honest) = victim_mallory_honest();
    let base_data = random_bytes(31, 3 << 20);
    victim.write("big.bin", &base_data);
    victim.scan();
    let (base_sequence, base_hash, chunks) = indexed_base(&victim);
    assert!(chunks >= 16, "the base should have a long chunk list: {chunks} chunks");
    let serve = victim.serve();
    let edit = |ops| ChunkEdit { base_sequence, base_hash, ops };
    let added = |n: usize| ChunkOp::Add(vec![NewChunk { len: 1, hash: Hash::ZERO }; n]);
    let one = vec![ChunkRef { offset: 0, len: 1, hash: Hash::ZERO }];
    let cases: Vec<(Vec<u8>, u32, &str)> = vec![
        // edits are version 2: on a version-1 connection the message itself is refused
        (edits_frame("v1.bin", 1, Vec::new(), edit(vec![added(1)])), 1, "unexpected IndexEdits"),
        // the others name the victim's own record of big.bin as their base, as an honest edit
        // would; a kept run past the end of that base
        (
            edits_frame(
                "big.bin",
                1,
                Vec::new(),
                edit(vec![ChunkOp::Keep { start: 0, count: 9999 }]),
            ),
            2,
            "kept run 0+9999 is outside a base of",
        ),
        // a list longer than the limit, by repeating the base
        (
            edits_frame(
                "big.bin",
                1,
                Vec::new(),
                edit(vec![ChunkOp::Keep { start: 0, count: 16 }; MAX_EDITED_CHUNKS / 16 + 1]),
            ),
            2,
            "build more than",
        ),
        // chunks and an edit at once
        (edits_frame("big.bin", 1, one, edit(vec![added(1)])), 2, "has both chunks and an edit"),
        // a rebuilt list that does not cover the record's size
        (edits_frame("big.bin", 1 << 40, Vec::new(), edit(vec![added(3)])), 2, "chunks cover 3 of"),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (frame, version, why) in cases {
        runtime.block_on(async {
            let mallory = open_session_speaking(&mallory, &victim, &["docs"], version).await;
            send_and_expect_close(mallory, &frame, false).await;
        });
        assert!(wait_until(10, || serve.log_text().contains(why)), "{why}: {}", serve.log_text());
    }
    assert!(!victim.path("v1.bin").exists(), "v1.bin was written");
    assert_eq!(std::fs::read(victim.path("big.bin")).unwrap(), base_data);
    assert_survived(&victim, &honest, &serve.log_text());
}

/// Sends one delta request on a new stream; the response body, or `None` when the stream
/// ends without one.
async fn ask_delta(conn: &quinn::Connection, request: DeltaRequest) -> Option<ResponseBody> {
    let id = request.request.id;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(&Message::DeltaRequest(request)).unwrap()).await.unwrap();
    send.finish().unwrap();
    let bytes = recv.read_to_end(MAX_FRAME + 4).await.ok()?;
    match decode_frame(&bytes).ok()? {
        Message::Response(r) if r.id == id => Some(r.body),
        other => panic!("unexpected answer {other:?}"),
    }
}

#[test]
fn delta_requests_are_answered_only_on_v2_and_only_within_their_limits() {
    let (victim, mallory, honest) = victim_mallory_honest();
    let data = random_bytes(41, 200_000);
    victim.write("big.bin", &data);
    let serve = victim.serve();
    let chunk = &data[..65_536];
    let request = Request {
        id: 5,
        folder: FolderId::new("docs").unwrap(),
        path: RelPath::new("big.bin").unwrap(),
        offset: 0,
        size: chunk.len() as u32,
        hash: Hash::of(chunk),
    };
    // mallory offers the pieces (PROTOCOL.md §10.1) of the chunk's first half, as if it held
    // an old version that shares them: the answer must refer to them and send the rest
    let (min, avg, max) = tandem_proto::wire::PIECE_SIZES;
    let have: Vec<NewChunk> =
        fastcdc::v2020::FastCDC::new(chunk, min as usize, avg as usize, max as usize)
            .take_while(|cut| cut.offset + cut.length <= chunk.len() / 2)
            .map(|cut| NewChunk {
                len: cut.length as u32,
                hash: Hash::of(&chunk[cut.offset..cut.offset + cut.length]),
            })
            .collect();
    assert!(have.len() >= 2, "the first half has pieces");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (v1, within, over) = runtime.block_on(async {
        let old = open_session_speaking(&mallory, &victim, &["docs"], 1).await;
        let v1 =
            ask_delta(&old.conn, DeltaRequest { request: request.clone(), have: have.clone() })
                .await;
        let new = open_session_speaking(&mallory, &victim, &["docs"], 2).await;
        let within =
            ask_delta(&new.conn, DeltaRequest { request: request.clone(), have: have.clone() })
                .await;
        let flood = vec![have[0]; MAX_HAVE + 1];
        let over =
            ask_delta(&new.conn, DeltaRequest { request: request.clone(), have: flood }).await;
        (v1, within, over)
    });
    assert_eq!(v1, None, "a v1 connection answered a delta request");
    assert_eq!(over, Some(ResponseBody::Error(ErrorCode::Invalid)));
    let Some(ResponseBody::Delta(ops)) = within else { panic!("no delta: {within:?}") };
    let (mut rebuilt, mut referred) = (Vec::new(), 0);
    for op in ops {
        match op {
            DeltaOp::Have(n) => {
                let at: usize = have[..n as usize].iter().map(|p| p.len as usize).sum();
                rebuilt.extend_from_slice(&chunk[at..at + have[n as usize].len as usize]);
                referred += 1;
            }
            DeltaOp::Bytes(bytes) => rebuilt.extend_from_slice(&bytes),
        }
    }
    assert_eq!(rebuilt, chunk);
    assert_eq!(referred, have.len(), "every offered piece is the chunk's: all referred to");
    assert_survived(&victim, &honest, &serve.log_text());
}

#[test]
fn resend_and_edit_floods_are_refused_with_bounded_memory() {
    let (victim, mallory, honest) = victim_mallory_honest();
    let base_data = random_bytes(51, 3 << 20);
    victim.write("big.bin", &base_data);
    victim.scan();
    let (base_sequence, base_hash, chunks) = indexed_base(&victim);
    let serve = victim.serve();
    let folder = || FolderId::new("docs").unwrap();
    let resend = |folder: &str, n: usize| {
        let paths = (0..n).map(|i| RelPath::new(format!("p{i}")).unwrap()).collect();
        let message = Message::Resend(Resend { folder: FolderId::new(folder).unwrap(), paths });
        encode_frame(&message).unwrap()
    };
    // edits for paths the victim never had: each is asked for again, up to a limit
    let invented: Vec<u8> = (0..17)
        .flat_map(|b| {
            let records = (0..1000)
                .map(|i| {
                    let mut record = record_of(&format!("x{b}/{i}"), b"", 1);
                    record.size = 1;
                    let edit = ChunkEdit {
                        base_sequence: 1,
                        base_hash: Hash::ZERO,
                        ops: vec![ChunkOp::Add(vec![NewChunk { len: 1, hash: Hash::ZERO }])],
                    };
                    EditedRecord { record, edit: Some(edit) }
                })
                .collect();
            let batch = EditBatch { folder: folder(), records };
            encode_frame(&Message::IndexEdits(batch)).unwrap()
        })
        .collect();
    // records of one batch that each stay under the per-list limit, but not together
    let repeat = ChunkEdit {
        base_sequence,
        base_hash,
        ops: vec![
            ChunkOp::Keep { start: 0, count: chunks };
            (MAX_EDITED_CHUNKS / 2) / chunks as usize
        ],
    };
    let heavy = EditBatch {
        folder: folder(),
        records: (0..4)
            .map(|_| {
                let mut record = record_of("big.bin", b"", 1);
                record.chunks = Vec::new();
                EditedRecord { record, edit: Some(repeat.clone()) }
            })
            .collect(),
    };
    let heavy = encode_frame(&Message::IndexEdits(heavy)).unwrap();
    let flood: Vec<u8> = (0..2000).flat_map(|_| resend("docs", 1000)).collect();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (resend("private", 1), "Resend of 1 paths in folder private"),
        (resend("docs", 1001), "Resend of 1001 paths"),
        (flood, "Resend requests waiting"),
        (invented, "edits whose base this device does not hold"),
        (heavy, "the edits build more than"),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (attack, why) in cases {
        runtime.block_on(async {
            let mallory = open_session_speaking(&mallory, &victim, &["docs"], 2).await;
            send_and_expect_close(mallory, &attack, false).await;
        });
        assert!(wait_until(20, || serve.log_text().contains(why)), "{why}: {}", serve.log_text());
    }
    assert!(proc_status_kib(serve.pid(), "VmHWM") < 512 * 1024, "memory grew past 512 MiB");
    assert_survived(&victim, &honest, &serve.log_text());
}
