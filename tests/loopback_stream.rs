//! Streams over real sockets on 127.0.0.1: order and bytes through a relay, flow control with a
//! consumer that stops reading, cancel reaching the server across two hops, a relay lost
//! mid-stream, the inactivity deadline, and many concurrent streams.

mod loopback_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::error::{Error, ErrorCode, Result};
use clawmatrix::proto::STREAM_WINDOW_CHUNKS;
use clawmatrix::rpc::{
    BoxFuture, CallCtx, CallOptions, Service, StreamItem, METHOD_ECHO, METHOD_STREAM,
};
use loopback_common::*;
use serde_json::json;

const TEST_BOUND: Duration = Duration::from_secs(40);

/// A test producer: `count` chunks of 16 bytes (index first), or endless with `count = 0`;
/// counts what it sent, records when it saw the cancel, and whether its call is over (returned
/// or dropped: nothing can be sent after that).
#[derive(Default)]
struct Producer {
    sent: AtomicU64,
    cancelled_at: Mutex<Option<Instant>>,
    over: AtomicBool,
}

/// Sets `Producer::over` when the call's future ends, however it ends.
struct Over(Arc<Producer>);

impl Drop for Over {
    fn drop(&mut self) {
        self.0.over.store(true, Ordering::SeqCst);
    }
}

struct ProducerService {
    p: Arc<Producer>,
    count: u64,
}

impl Service for ProducerService {
    fn call(&self, mut ctx: CallCtx, _payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        let p = Arc::clone(&self.p);
        let count = self.count;
        Box::pin(async move {
            let _over = Over(Arc::clone(&p));
            let watcher = {
                let p = Arc::clone(&p);
                let mut cancel = ctx.cancel.clone();
                tokio::spawn(async move {
                    if cancel.wait_for(|c| *c).await.is_ok() {
                        *p.cancelled_at.lock().unwrap() = Some(Instant::now());
                    }
                })
            };
            let mut i = 0u64;
            while count == 0 || i < count {
                let mut chunk = i.to_be_bytes().to_vec();
                chunk.extend_from_slice(&[7u8; 8]);
                ctx.sink.send(chunk).await?;
                p.sent.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            watcher.abort();
            Ok(b"done".to_vec())
        })
    }
}

/// A service that never answers (until cancelled).
struct Silent;

impl Service for Silent {
    fn call(&self, mut ctx: CallCtx, _payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        Box::pin(async move {
            let _ = ctx.cancel.wait_for(|c| *c).await;
            Err(Error::new(ErrorCode::Cancelled, "cancelled"))
        })
    }
}

/// A service that sends one chunk and then panics.
struct Panics;

impl Service for Panics {
    fn call(&self, mut ctx: CallCtx, _payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        Box::pin(async move {
            ctx.sink.send(b"first".to_vec()).await?;
            panic!("boom in the service");
        })
    }
}

fn opts(ms: u64) -> CallOptions {
    CallOptions {
        deadline: Duration::from_millis(ms),
    }
}

/// cloud listens; office (with `services`) and home dial it. Returns once each of home and
/// office sees the other relayed via cloud (office answers along its own route to home).
async fn mesh(services: Vec<(&str, Arc<dyn Service>)>) -> (Node, Node, Node) {
    let cp = reserve_port();
    let cloud = start(config("cloud", Some(cp), &[], json!({})));
    let office = Node::new(config("office", None, &[("cloud", cp)], json!({})));
    for (m, s) in services {
        office.register_service(m, s);
    }
    office
        .start(&handover(office.config(), StartOptions::default()))
        .expect("start office");
    let home = start(config("home", None, &[("cloud", cp)], json!({})));
    wait_for(
        "office and home relayed via cloud",
        Duration::from_secs(10),
        || is_relayed_via(&home, "office", "cloud") && is_relayed_via(&office, "home", "cloud"),
    )
    .await;
    (cloud, office, home)
}

fn index(chunk: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&chunk[..8]);
    u64::from_be_bytes(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_arrives_in_order_and_intact_through_a_relay() {
    tokio::time::timeout(TEST_BOUND, async {
        let (_cloud, _office, home) = mesh(vec![]).await;
        let t0 = Instant::now();
        let req = json!({"count": 500, "bytes": 4096})
            .to_string()
            .into_bytes();
        let mut s = home
            .call_stream("office", METHOD_STREAM, req, opts(5000))
            .await
            .expect("open");
        let mut n = 0u64;
        let end = loop {
            match s.next().await.expect("item").expect("ok") {
                StreamItem::Chunk(c) => {
                    assert_eq!(c.len(), 4096);
                    assert_eq!(index(&c), n, "chunk order");
                    assert!(c[8..].iter().all(|b| *b == (n % 251) as u8));
                    n += 1;
                }
                StreamItem::End(p) => break p,
            }
        };
        assert_eq!(n, 500);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&end).unwrap()["count"],
            500
        );
        assert!(s.next().await.is_none());
        eprintln!("500 × 4 KiB over 2 hops: {:?}", t0.elapsed());

        // A unary reply is the stream's End.
        let mut s = home
            .call_stream("office", METHOD_ECHO, b"hi".to_vec(), opts(5000))
            .await
            .expect("open echo");
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            StreamItem::End(b"hi".to_vec())
        );

        // A server error is Remote with its code and message.
        let mut s = home
            .call_stream("office", METHOD_STREAM, b"{bad".to_vec(), opts(5000))
            .await
            .expect("open");
        let e = s.next().await.unwrap().expect_err("remote error");
        assert_eq!(e.code, ErrorCode::Remote);
        assert!(
            e.message.contains("CLAWMATRIX_INVALID_ARGUMENT"),
            "{}",
            e.message
        );

        let e = home
            .call_stream("nobody", METHOD_STREAM, vec![], opts(5000))
            .await
            .err()
            .expect("no route");
        assert_eq!(e.code, ErrorCode::Unreachable);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_blocks_only_its_producer_at_the_window() {
    tokio::time::timeout(TEST_BOUND, async {
        let p = Arc::new(Producer::default());
        let svc = ProducerService {
            p: Arc::clone(&p),
            count: 1000,
        };
        let (_cloud, _office, home) = mesh(vec![("test.produce", Arc::new(svc))]).await;
        let mut slow = home
            .call_stream("office", "test.produce", vec![], opts(10_000))
            .await
            .expect("open");
        wait_for("the window is sent", Duration::from_secs(5), || {
            p.sent.load(Ordering::SeqCst) >= STREAM_WINDOW_CHUNKS
        })
        .await;
        // The producer is parked at the window while nobody reads...
        assert_eq!(p.sent.load(Ordering::SeqCst), STREAM_WINDOW_CHUNKS);

        // ... and another stream on the same links flows meanwhile (the window of the check
        // below: 300 chunks crossing the same links and nodes, while an unparked producer
        // would send its next chunk within microseconds).
        let t0 = Instant::now();
        let req = json!({"count": 300, "bytes": 1024})
            .to_string()
            .into_bytes();
        let mut fast = home
            .call_stream("office", METHOD_STREAM, req, opts(5000))
            .await
            .expect("open fast");
        let mut n = 0;
        while let Some(item) = fast.next().await {
            match item.expect("fast ok") {
                StreamItem::Chunk(_) => n += 1,
                StreamItem::End(_) => break,
            }
        }
        assert_eq!(n, 300);
        eprintln!(
            "other stream done in {:?} while one is stalled",
            t0.elapsed()
        );
        assert_eq!(p.sent.load(Ordering::SeqCst), STREAM_WINDOW_CHUNKS);

        // Reading again resumes the producer through to the end, in order.
        let mut i = 0u64;
        loop {
            match slow.next().await.expect("item").expect("slow ok") {
                StreamItem::Chunk(c) => {
                    assert_eq!(index(&c), i);
                    i += 1;
                }
                StreamItem::End(e) => {
                    assert_eq!(e, b"done");
                    break;
                }
            }
        }
        assert_eq!(i, 1000);
        assert_eq!(p.sent.load(Ordering::SeqCst), 1000);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_cancels_the_server_across_two_hops_within_500_ms() {
    tokio::time::timeout(TEST_BOUND, async {
        let p = Arc::new(Producer::default());
        let svc = ProducerService {
            p: Arc::clone(&p),
            count: 0,
        };
        let (_cloud, _office, home) = mesh(vec![("test.endless", Arc::new(svc))]).await;
        let mut s = home
            .call_stream("office", "test.endless", vec![], opts(10_000))
            .await
            .expect("open");
        for _ in 0..10 {
            assert!(matches!(s.next().await, Some(Ok(StreamItem::Chunk(_)))));
        }
        let t0 = Instant::now();
        drop(s);
        let took = wait_for("the server sees the cancel", Duration::from_secs(2), || {
            p.cancelled_at.lock().unwrap().is_some()
        })
        .await;
        let at = p.cancelled_at.lock().unwrap().expect("cancelled");
        eprintln!("cancel reached the server in {:?}", at - t0);
        assert!(at - t0 < Duration::from_millis(500), "{took:?}");
        // The producer stopped: its call ends, and nothing more was sent after the cancel.
        let sent = p.sent.load(Ordering::SeqCst);
        wait_for(
            "the producer's call is over",
            Duration::from_secs(2),
            || p.over.load(Ordering::SeqCst),
        )
        .await;
        assert_eq!(p.sent.load(Ordering::SeqCst), sent);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_relay_mid_stream_fails_the_stream_as_unreachable() {
    tokio::time::timeout(TEST_BOUND, async {
        let p = Arc::new(Producer::default());
        let svc = ProducerService {
            p: Arc::clone(&p),
            count: 0,
        };
        let (cloud, _office, home) = mesh(vec![("test.endless", Arc::new(svc))]).await;
        let mut s = home
            .call_stream("office", "test.endless", vec![], opts(10_000))
            .await
            .expect("open");
        for _ in 0..100 {
            assert!(matches!(s.next().await, Some(Ok(StreamItem::Chunk(_)))));
        }
        cloud.stop();
        let err = loop {
            match s.next().await {
                Some(Ok(StreamItem::Chunk(_))) => continue,
                Some(Ok(StreamItem::End(_))) => panic!("a cut stream must not end normally"),
                Some(Err(e)) => break e,
                None => panic!("a cut stream must report an error"),
            }
        };
        assert_eq!(err.code, ErrorCode::Unreachable, "{}", err.message);
        // The server learns its caller is gone and stops producing.
        wait_for(
            "office cancels the orphaned call",
            Duration::from_secs(5),
            || p.cancelled_at.lock().unwrap().is_some(),
        )
        .await;
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_panics_ends_its_stream_with_an_internal_error_and_the_node_keeps_serving() {
    tokio::time::timeout(TEST_BOUND, async {
        let (_cloud, office, home) = mesh(vec![("test.panics", Arc::new(Panics))]).await;
        for _ in 0..2 {
            let mut s = home
                .call_stream("office", "test.panics", vec![], opts(5_000))
                .await
                .expect("open");
            let first = s.next().await.unwrap().expect("first chunk");
            assert_eq!(first, StreamItem::Chunk(b"first".to_vec()));
            let e = s.next().await.unwrap().expect_err("the panic is the end");
            assert_eq!(e.code, ErrorCode::Remote, "{}", e.message);
            assert!(
                e.message.contains(ErrorCode::Internal.as_str())
                    && e.message.contains("boom in the service"),
                "{}",
                e.message
            );
        }
        // The node still serves (the panic was caught in the call's task).
        assert!(office.status().running);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_fails_the_stream_at_the_inactivity_deadline() {
    tokio::time::timeout(TEST_BOUND, async {
        let (_cloud, _office, home) = mesh(vec![("test.silent", Arc::new(Silent))]).await;
        let t0 = Instant::now();
        let mut s = home
            .call_stream("office", "test.silent", vec![], opts(300))
            .await
            .expect("open");
        let e = s.next().await.unwrap().expect_err("timeout");
        assert_eq!(e.code, ErrorCode::Timeout, "{}", e.message);
        assert!(t0.elapsed() < Duration::from_secs(3));
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_consumer_is_not_failed_by_the_inactivity_deadline() {
    tokio::time::timeout(TEST_BOUND, async {
        let (_cloud, _office, home) = mesh(vec![]).await;
        // 300 ms deadline; the consumer takes a chunk every 30 ms, so draining the full window
        // (64 chunks, server parked on credit) takes ~2 s with no chunk arriving meanwhile.
        let req = json!({"count": 130, "bytes": 16}).to_string().into_bytes();
        let mut s = home
            .call_stream("office", METHOD_STREAM, req, opts(300))
            .await
            .expect("open");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut n = 0;
        while let StreamItem::Chunk(_) = s.next().await.expect("item").expect("no timeout") {
            n += 1;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_eq!(n, 130);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_each_get_their_own_bytes_in_order() {
    tokio::time::timeout(TEST_BOUND, async {
        let (_cloud, _office, home) = mesh(vec![]).await;
        let t0 = Instant::now();
        let streams = (0..32u64).map(|k| {
            let home = &home;
            async move {
                let count = 50 + k * 5;
                let size = 64 + k * 100;
                let req = json!({"count": count, "bytes": size})
                    .to_string()
                    .into_bytes();
                let mut s = home
                    .call_stream("office", METHOD_STREAM, req, opts(10_000))
                    .await
                    .expect("open");
                let mut n = 0u64;
                while let StreamItem::Chunk(c) = s.next().await.expect("item").expect("ok") {
                    assert_eq!(c.len() as u64, size, "stream {k}");
                    assert_eq!(index(&c), n, "stream {k}");
                    n += 1;
                }
                assert_eq!(n, count, "stream {k}");
            }
        });
        futures_util::future::join_all(streams).await;
        eprintln!("32 concurrent streams over 2 hops: {:?}", t0.elapsed());
    })
    .await
    .expect("bounded");
}
