//! The blob-store conformance suite: one set of behaviours, run as one `#[test]` per behaviour per store against
//! every `BlobStore` implementation — `LocalDirStore` (a temp dir) and `S3Store` (a real S3-compatible server:
//! SeaweedFS `weed mini` from `aidos_testkit::weed`, on loopback ports with credentials, shared by the tests of this
//! binary and killed when the last of them ends).
//!
//! The S3 side needs SeaweedFS's `weed` binary (see `aidos_testkit::weed` for where it is looked for). Without it
//! the S3 tests fail and say how to install it; they never skip silently.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use aidos_blob::{BlobError, BlobId, BlobStore, Bytes, LocalDirStore, S3Config, S3Store};
use aidos_testkit::weed::{ACCESS_KEY, SECRET_KEY, Weed, WeedOptions};
use object_store::{ObjectStoreExt, PutPayload};

/// Replaces the stored bytes of a blob, bypassing the store.
type Corrupter = Box<dyn Fn(&BlobId, &[u8])>;

/// A store under test, and how to corrupt one of its blobs behind its back.
struct Fixture {
    store: Arc<dyn BlobStore>,
    /// Replaces the stored bytes of `id` with `bytes`, bypassing the store.
    corrupt: Corrupter,
    _keep: Box<dyn std::any::Any>,
}

// ---------------------------------------------------------------------------------------------------------------
// The behaviours (every store).

mod behaviours {
    use super::*;

    pub fn roundtrip(f: &Fixture) {
        let s = &*f.store;
        let id = s.put(b"hello").unwrap();
        assert_eq!(id, BlobId::of(b"hello"));
        assert_eq!(&*s.get(&id).unwrap(), b"hello");
    }

    pub fn idempotent_put(f: &Fixture) {
        let s = &*f.store;
        let a = s.put(b"same bytes").unwrap();
        let b = s.put(b"same bytes").unwrap();
        assert_eq!(a, b);
        assert_eq!(&*s.get(&a).unwrap(), b"same bytes");
        let c = s.put(b"other bytes").unwrap();
        assert_ne!(a, c);
        assert_eq!(&*s.get(&c).unwrap(), b"other bytes");
    }

    pub fn empty_blob(f: &Fixture) {
        let s = &*f.store;
        let id = s.put(b"").unwrap();
        assert_eq!(id, BlobId::of(b""));
        assert!(s.contains(&id).unwrap());
        assert!(s.get(&id).unwrap().is_empty());
        assert_eq!(s.read_range(&id, 0, 10).unwrap(), (vec![], 0));
        assert_eq!(s.read_range(&id, 5, 10).unwrap(), (vec![], 0));
    }

    /// 40 MiB: over the S3 store's multipart threshold (16 MiB parts: 16 + 16 + 8).
    pub fn large_blob(f: &Fixture) {
        let s = &*f.store;
        let data = pseudo_random(40 * 1024 * 1024, 7);
        let id = s.put(&data).unwrap();
        assert_eq!(id, BlobId::of(&data));
        assert!(s.contains(&id).unwrap());
        let back = s.get(&id).unwrap();
        assert_eq!(back.len(), data.len());
        assert!(*back == data[..], "40 MiB blob read back differs");
        let part = 16 * 1024 * 1024;
        let (r, total) = s.read_range(&id, part as u64 - 3, 10).unwrap();
        assert_eq!(total, data.len() as u64);
        assert_eq!(r, &data[part - 3..part + 7]);
        assert_eq!(s.put(&data).unwrap(), id, "re-putting a large blob is a no-op");
    }

    /// `put_stream`: pieces of any size (an empty one too) make the blob, over and under the S3 multipart
    /// threshold and empty; a stream that ends in an error publishes nothing.
    pub fn streamed_put(f: &Fixture) {
        let s = &*f.store;
        let pieces = |data: &[u8], cut: usize| -> Vec<Result<Bytes, BlobError>> {
            let mut v: Vec<_> = data.chunks(cut).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            v.insert(v.len() / 2, Ok(Bytes::new()));
            v
        };
        for (len, cut) in [(40 * 1024 * 1024 + 5, 700 * 1024), (3000, 512), (0, 1)] {
            let data = pseudo_random(len, len as u64);
            let id = BlobId::of(&data);
            s.put_stream(&id, len as u64, &mut pieces(&data, cut).into_iter()).unwrap();
            assert!(s.contains(&id).unwrap(), "{len} bytes streamed: stored");
            assert!(*s.get(&id).unwrap() == data[..], "{len} bytes streamed: read back the same");
        }
        for len in [40 * 1024 * 1024, 3000] {
            let data = pseudo_random(len, 99 + len as u64);
            let id = BlobId::of(&data);
            let mut failing = pieces(&data, 1 << 20);
            failing.push(Err(BlobError::Remote { store: "test".into(), message: "the bytes were wrong".into() }));
            let e = s.put_stream(&id, len as u64, &mut failing.into_iter()).unwrap_err();
            assert!(e.to_string().contains("the bytes were wrong"), "the stream's own error comes back: {e}");
            assert!(!s.contains(&id).unwrap(), "a failed stream of {len} bytes published nothing");
            assert!(s.list().unwrap().iter().all(|b| b.id != id), "nor lists it");
        }
    }

    pub fn contains(f: &Fixture) {
        let s = &*f.store;
        let missing = BlobId::of(b"contains: never stored");
        assert!(!s.contains(&missing).unwrap());
        let id = s.put(b"contains: stored").unwrap();
        assert!(s.contains(&id).unwrap());
    }

    pub fn read_range_edges(f: &Fixture) {
        let s = &*f.store;
        let id = s.put(b"hello").unwrap();
        assert_eq!(s.read_range(&id, 0, 5).unwrap(), (b"hello".to_vec(), 5));
        assert_eq!(s.read_range(&id, 0, 100).unwrap(), (b"hello".to_vec(), 5));
        assert_eq!(s.read_range(&id, 1, 3).unwrap(), (b"ell".to_vec(), 5));
        assert_eq!(s.read_range(&id, 4, 10).unwrap(), (b"o".to_vec(), 5));
        assert_eq!(s.read_range(&id, 5, 10).unwrap(), (vec![], 5));
        assert_eq!(s.read_range(&id, 9, 10).unwrap(), (vec![], 5));
        assert_eq!(s.read_range(&id, 2, 0).unwrap(), (vec![], 5));
        assert_eq!(s.read_range(&id, u64::MAX, u64::MAX).unwrap(), (vec![], 5));
        assert_eq!(s.read_range(&id, 3, u64::MAX).unwrap(), (b"lo".to_vec(), 5));
    }

    /// `read_stream`: from any offset to the end in pieces of the size asked (the last shorter), the blob's total
    /// size with them; nothing from the end, past it or of an empty blob; a missing blob fails the call itself.
    pub fn read_stream(f: &Fixture) {
        let s = &*f.store;
        let data = pseudo_random(5 * 1024 * 1024 + 123, 5);
        let id = s.put(&data).unwrap();
        for (offset, piece) in [(0, 1 << 20), (1, 1 << 20), (3 << 20, 1000), (data.len() - 5, 1 << 20), (0, 7 << 20)] {
            let st = s.read_stream(&id, offset as u64, piece).unwrap();
            assert_eq!(st.total, data.len() as u64);
            let pieces: Vec<Bytes> = st.pieces.map(Result::unwrap).collect();
            let (last, whole) = pieces.split_last().unwrap();
            assert!(whole.iter().all(|p| p.len() == piece), "from {offset}: every piece but the last is {piece} bytes");
            assert!(!last.is_empty() && last.len() <= piece, "from {offset}: the last piece is {}", last.len());
            assert!(pieces.concat() == data[offset..], "from {offset} by {piece}: the bytes, in order");
        }
        for offset in [data.len() as u64, data.len() as u64 + 10, u64::MAX] {
            let st = s.read_stream(&id, offset, 1 << 20).unwrap();
            assert_eq!(st.total, data.len() as u64);
            assert_eq!(st.pieces.count(), 0, "nothing from {offset}");
        }
        let empty = s.put(b"").unwrap();
        let st = s.read_stream(&empty, 0, 1 << 20).unwrap();
        assert_eq!((st.total, st.pieces.count()), (0, 0));
        let missing = BlobId::of(b"read_stream: never stored");
        assert!(matches!(s.read_stream(&missing, 0, 1 << 20), Err(BlobError::NotFound(_))));
        // A reader that stops early just drops the stream.
        let mut st = s.read_stream(&id, 0, 1 << 16).unwrap();
        assert_eq!(st.pieces.next().unwrap().unwrap()[..], data[..1 << 16]);
        drop(st);
        assert!(*s.get(&id).unwrap() == data[..], "the store still answers");
    }

    pub fn missing_is_not_found(f: &Fixture) {
        let s = &*f.store;
        let missing = BlobId::of(b"nope");
        match s.get(&missing) {
            Err(BlobError::NotFound(id)) => assert_eq!(id, missing),
            other => panic!("get of a missing blob: expected NotFound, got {:?}", other.map(|b| b.len())),
        }
        assert!(matches!(s.read_range(&missing, 0, 10), Err(BlobError::NotFound(_))));
        assert!(!s.contains(&missing).unwrap());
    }

    pub fn corruption_is_reported(f: &Fixture) {
        let s = &*f.store;
        let id = s.put(b"hello corruption").unwrap();
        (f.corrupt)(&id, b"jello corruption");
        match s.get(&id) {
            Err(BlobError::Corrupt { id: got, actual }) => {
                assert_eq!(got, id);
                assert_eq!(actual, BlobId::of(b"jello corruption"));
            }
            other => panic!("get of a corrupted blob: expected Corrupt, got {:?}", other.map(|b| b.len())),
        }
        let msg = s.get(&id).err().unwrap().to_string();
        assert!(msg.contains("corrupt"), "{msg}");
    }

    pub fn bad_ids_refused(f: &Fixture) {
        let s = &*f.store;
        let id = s.put(b"ids").unwrap();
        for bad in ["../etc/passwd", "", "ABCDEF", &id.as_str().to_uppercase(), &id.as_str()[..63], &format!("{id}0")] {
            assert!(matches!(BlobId::parse(bad), Err(BlobError::BadId(_))), "{bad:?} accepted");
        }
        assert!(BlobId::parse(&format!("../{}", &id.as_str()[3..])).is_err());
        let parsed = BlobId::parse(id.as_str()).unwrap();
        assert_eq!(&*s.get(&parsed).unwrap(), b"ids");
    }

    /// What the garbage collector uses: `list` (ids, sizes, modified times), `delete` (idempotent), `touch` and
    /// `delete_if_older` (only blobs older than the cutoff).
    pub fn list_and_delete(f: &Fixture) {
        let s = &*f.store;
        assert!(s.list().unwrap().is_empty(), "a new store lists nothing");
        let a = s.put(b"list a").unwrap();
        let b = s.put(b"list bb").unwrap();
        let listed = s.list().unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        let hour = Duration::from_secs(3600);
        for (id, size) in [(&a, 6), (&b, 7)] {
            let info = listed.iter().find(|i| &i.id == id).unwrap_or_else(|| panic!("{id} not listed: {listed:?}"));
            assert_eq!(info.size, size);
            let now = SystemTime::now();
            assert!(info.modified > now - hour && info.modified < now + hour, "{info:?}");
        }
        s.delete(&a).unwrap();
        assert!(!s.contains(&a).unwrap());
        assert!(matches!(s.get(&a), Err(BlobError::NotFound(_))));
        assert_eq!(s.list().unwrap().into_iter().map(|i| i.id).collect::<Vec<_>>(), vec![b.clone()]);
        s.delete(&a).unwrap();
        s.delete(&BlobId::of(b"list: never stored")).unwrap();
        assert!(!s.touch(&a).unwrap(), "touch of a missing blob");
        assert!(s.touch(&b).unwrap());
        assert!(!s.delete_if_older(&a, SystemTime::now() + hour).unwrap(), "a missing blob is not deleted");
        assert!(!s.delete_if_older(&b, SystemTime::now() - hour).unwrap(), "a young blob stays");
        assert_eq!(&*s.get(&b).unwrap(), b"list bb");
        assert!(s.delete_if_older(&b, SystemTime::now() + hour).unwrap());
        assert!(!s.contains(&b).unwrap());
        assert!(s.list().unwrap().is_empty());
        // Deleted blobs can be put again.
        assert_eq!(s.put(b"list a").unwrap(), a);
        assert_eq!(&*s.get(&a).unwrap(), b"list a");
    }

    /// A put of bytes the store holds, and a touch, refresh the modified time (so the collector's cutoff spares
    /// them); the bytes stay the same.
    pub fn puts_and_touches_refresh(f: &Fixture) {
        let s = &*f.store;
        let id = s.put(b"refresh me").unwrap();
        let m1 = modified_of(s, &id);
        assert!(!s.delete_if_older(&id, m1).unwrap(), "not older than its own modified time");
        wait_past(m1 + Duration::from_secs(2));
        assert_eq!(s.put(b"refresh me").unwrap(), id);
        let m2 = modified_of(s, &id);
        assert!(m2 >= m1 + Duration::from_secs(1), "a re-put refreshes: {m1:?} -> {m2:?}");
        assert!(!s.delete_if_older(&id, m1 + Duration::from_secs(1)).unwrap(), "refreshed past the cutoff");
        wait_past(m2 + Duration::from_secs(2));
        assert!(s.touch(&id).unwrap());
        let m3 = modified_of(s, &id);
        assert!(m3 >= m2 + Duration::from_secs(1), "a touch refreshes: {m2:?} -> {m3:?}");
        assert_eq!(&*s.get(&id).unwrap(), b"refresh me");
        assert_eq!(s.list().unwrap().len(), 1, "a touch leaves nothing else behind");
    }

    /// The blocking contract holds from plain threads and from `spawn_blocking` threads of another runtime.
    pub fn blocking_from_threads_and_runtimes(f: &Fixture) {
        std::thread::scope(|sc| {
            for t in 0..4u8 {
                let s = f.store.clone();
                sc.spawn(move || {
                    let data = vec![t; 1000 + t as usize];
                    let id = s.put(&data).unwrap();
                    assert_eq!(&*s.get(&id).unwrap(), &data[..]);
                });
            }
        });
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let mut hs = Vec::new();
            for t in 0..4u8 {
                let s = f.store.clone();
                hs.push(tokio::task::spawn_blocking(move || {
                    let data = vec![100 + t; 2000];
                    let id = s.put(&data).unwrap();
                    assert!(s.contains(&id).unwrap());
                    assert_eq!(s.read_range(&id, 10, 5).unwrap(), (vec![100 + t; 5], 2000));
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
        });
    }
}

/// The modified time `list` reports for `id`.
fn modified_of(s: &dyn BlobStore, id: &BlobId) -> SystemTime {
    s.list().unwrap().into_iter().find(|b| &b.id == id).unwrap_or_else(|| panic!("{id} not listed")).modified
}

/// Waits until the clock is past `t` (modified times are compared across seconds: S3 keeps whole seconds).
fn wait_past(t: SystemTime) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while SystemTime::now() <= t {
        assert!(Instant::now() < deadline, "the clock did not pass {t:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// One `#[test]` per behaviour for a store fixture.
macro_rules! conformance {
    ($store:ident, $fixture:path; $($behaviour:ident),* $(,)?) => {
        mod $store {
            $(
                #[test]
                fn $behaviour() {
                    let f = $fixture();
                    super::behaviours::$behaviour(&f);
                }
            )*
        }
    };
}

macro_rules! conformance_all {
    ($store:ident, $fixture:path) => {
        conformance!($store, $fixture;
            roundtrip, idempotent_put, empty_blob, large_blob, streamed_put, contains, read_range_edges, read_stream,
            missing_is_not_found,
            corruption_is_reported, bad_ids_refused, blocking_from_threads_and_runtimes, list_and_delete,
            puts_and_touches_refresh);
    };
}

conformance_all!(local_dir, crate::local_fixture);
conformance_all!(s3, crate::s3_fixture);

// ---------------------------------------------------------------------------------------------------------------
// LocalDirStore.

fn local_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirStore::open(dir.path()).unwrap();
    let root = dir.path().to_path_buf();
    Fixture {
        store: Arc::new(store),
        corrupt: Box::new(move |id, bytes| {
            std::fs::write(root.join(&id.as_str()[..2]).join(id.as_str()), bytes).unwrap();
        }),
        _keep: Box::new(dir),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// S3Store on SeaweedFS.

const BUCKET: &str = "aidos-conformance";

fn s3_fixture() -> Fixture {
    let server = weed_server();
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut config = server.config();
    config.prefix = format!("conformance/{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    // Every put of an existing blob refreshes it (the behaviours check that a re-put moves the modified time).
    config.refresh_after = Duration::ZERO;
    let store = S3Store::open(config.clone()).unwrap();
    let key_of = {
        let probe = S3Store::open(config.clone()).unwrap();
        move |id: &BlobId| probe.key(id)
    };
    Fixture {
        store: Arc::new(store),
        corrupt: Box::new(move |id, bytes| {
            // Straight through object_store, on a runtime of our own: overwrite the object's bytes.
            let raw = config.build_object_store().unwrap();
            let key = key_of(id);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(raw.put(&key, PutPayload::from(bytes.to_vec()))).unwrap();
        }),
        _keep: Box::new(server),
    }
}

/// The server shared by this binary's S3 tests: started by the first, killed when the last one drops it.
fn weed_server() -> Arc<Weed> {
    static SERVER: Mutex<Weak<Weed>> = Mutex::new(Weak::new());
    let mut slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = slot.upgrade() {
        return w;
    }
    let w = Arc::new(Weed::start(WeedOptions { bucket: BUCKET.into(), ..Default::default() }));
    *slot = Arc::downgrade(&w);
    w
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------------------------
// S3 faults: each error names its problem.

fn remote_message(r: Result<impl Sized, BlobError>) -> String {
    match r {
        Err(e @ BlobError::Remote { .. }) => {
            eprintln!("{e}");
            e.to_string()
        }
        Err(other) => panic!("expected a Remote error, got {other:?}"),
        Ok(_) => panic!("expected a Remote error, got Ok"),
    }
}

#[test]
fn s3_wrong_credentials_are_named() {
    let server = weed_server();
    let mut c = server.config();
    c.secret_access_key = Some("not-the-secret".into());
    c.max_retries = 0;
    let s = S3Store::open(c).unwrap();
    let put = remote_message(s.put(b"with wrong credentials"));
    assert!(put.contains("wrong credentials") && put.contains("403"), "{put}");
    let get = remote_message(s.get(&BlobId::of(b"anything")));
    assert!(get.contains("wrong credentials"), "{get}");

    let mut c = server.config();
    c.access_key_id = Some("no-such-access-key".into());
    c.max_retries = 0;
    let s = S3Store::open(c).unwrap();
    let put = remote_message(s.put(b"with an unknown access key"));
    assert!(put.contains("wrong credentials") && put.contains("no-such-access-key"), "{put}");
}

#[test]
fn s3_unreachable_endpoint_is_named() {
    let port = free_port(); // nothing listens here
    let mut c = S3Config::new(BUCKET);
    c.endpoint = Some(format!("http://127.0.0.1:{port}"));
    c.access_key_id = Some(ACCESS_KEY.into());
    c.secret_access_key = Some(SECRET_KEY.into());
    c.allow_http = true;
    c.max_retries = 1;
    c.connect_timeout = Duration::from_secs(2);
    let s = S3Store::open(c).unwrap();
    let t = Instant::now();
    let put = remote_message(s.put(b"to nowhere"));
    assert!(put.contains("unreachable") && put.contains(&port.to_string()), "{put}");
    let get = remote_message(s.get(&BlobId::of(b"from nowhere")));
    assert!(get.contains("unreachable"), "{get}");
    assert!(t.elapsed() < Duration::from_secs(30), "unreachable endpoint took {:?} to report", t.elapsed());
}

#[test]
fn s3_missing_bucket_is_named() {
    let server = weed_server();
    let mut c = server.config();
    c.bucket = "aidos-no-such-bucket".into();
    c.max_retries = 0;
    let s = S3Store::open(c).unwrap();
    let put = remote_message(s.put(b"into no bucket"));
    assert!(put.contains("does not exist") && put.contains("aidos-no-such-bucket"), "{put}");
    let get = remote_message(s.get(&BlobId::of(b"from no bucket")));
    assert!(get.contains("does not exist"), "{get}");
}

/// Within `refresh_after` of its last write, a re-put or touch of an S3 blob uploads nothing (its modified time
/// stays); older, it is refreshed (the behaviours above, with `refresh_after` 0).
#[test]
fn s3_refreshes_only_after_refresh_after() {
    let server = weed_server();
    let mut c = server.config();
    c.prefix = format!("conformance/{}-refresh-after", std::process::id());
    c.refresh_after = Duration::from_secs(3600);
    let s = S3Store::open(c).unwrap();
    let id = s.put(b"refreshed at most hourly").unwrap();
    let m1 = modified_of(&s, &id);
    wait_past(m1 + Duration::from_secs(2));
    assert_eq!(s.put(b"refreshed at most hourly").unwrap(), id);
    assert!(s.touch(&id).unwrap());
    assert_eq!(modified_of(&s, &id), m1, "no re-upload within refresh_after");
}

#[test]
fn s3_config_describe_and_debug() {
    let mut c = S3Config::new("b");
    c.prefix = "/p/q/".into();
    c.endpoint = Some("http://127.0.0.1:1".into());
    assert_eq!(c.describe(), "s3://b/p/q at http://127.0.0.1:1");
    assert!(!format!("{c:?}").contains("secret-value"));
    c.secret_access_key = Some("secret-value".into());
    assert!(!format!("{c:?}").contains("secret-value"), "Debug must not print the secret");
}

/// A `put_stream` whose pieces panic after parts went up (a bug in the caller) leaves no multipart upload behind:
/// the store aborts it while the panic unwinds, and nothing is published. Its own server, so that no other test's
/// uploads are counted.
#[test]
fn s3_a_panicking_stream_leaves_no_upload_behind() {
    let server = Weed::start(WeedOptions { bucket: BUCKET.into(), ..Default::default() });
    let s = S3Store::open(server.config()).unwrap();
    assert_eq!(server.unfinished_uploads(), Ok(0));
    let data = pseudo_random(40 << 20, 41);
    let id = BlobId::of(&data);
    let in_progress = std::cell::Cell::new(None);
    let put = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut pieces = data.chunks(1 << 20).enumerate().map(|(i, c)| {
            if i == 36 {
                // Two 16 MiB parts have gone up by now: the upload is there to be left behind.
                in_progress.set(Some(server.unfinished_uploads()));
                panic!("the pieces broke");
            }
            Ok(Bytes::copy_from_slice(c))
        });
        s.put_stream(&id, data.len() as u64, &mut pieces)
    }));
    let panic = put.expect_err("the pieces' panic goes on to the caller");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the pieces broke"), "the caller sees the pieces' own panic");
    assert_eq!(in_progress.take(), Some(Ok(1)), "the upload in progress was visible before the panic");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.unfinished_uploads() != Ok(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the unfinished upload was not aborted: {:?}",
            server.unfinished_uploads()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!s.contains(&id).unwrap(), "nothing was published");
    // The store still works, and the same blob goes up whole.
    s.put_stream(&id, data.len() as u64, &mut data.chunks(1 << 20).map(|c| Ok(Bytes::copy_from_slice(c)))).unwrap();
    assert!(*s.get(&id).unwrap() == data[..]);
    assert_eq!(server.unfinished_uploads(), Ok(0));
}
