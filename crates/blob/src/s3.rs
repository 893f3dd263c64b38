//! An S3-compatible blob store on the `object_store` crate: AWS S3, or a self-hosted store (SeaweedFS, MinIO, Ceph
//! RGW, ...) over path-style requests and plain HTTP.
//!
//! Layout: `<prefix>/<id[0..2]>/<id>` in one bucket, like [`crate::LocalDirStore`]'s directories.
//!
//! Visibility: a blob appears under its id only once complete. Small blobs are one `PUT` (atomic in S3); blobs of
//! [`S3Config::multipart_threshold`] bytes or more go up as a multipart upload whose parts are invisible until
//! `CompleteMultipartUpload` publishes the whole object at once (a failed upload is aborted, and never leaves an
//! object behind). Nothing is ever written under a final key except the complete bytes of that blob.
//!
//! Refresh and collection (see the crate docs' refresh rule): S3 cannot touch an object in place, so a put of a blob
//! that exists re-uploads it when its `last_modified` is older than [`S3Config::refresh_after`], and `touch`
//! (no bytes at hand) copies the object out and back (server-side copies, objects under 5 GiB; larger ones answer
//! `false` so the caller puts the bytes). `delete_if_older` is a `HEAD` then a `DELETE`: a refresh that lands between
//! the two is lost, so the scheduler, which runs the collector, also refuses to commit a reference to a blob it
//! has just deleted (`aidos_scheduler`'s `gc::RefGate`). The comparison uses the S3 server's clock against the
//! collector's: their skew must be far below the grace period.
//!
//! Blocking over async: [`BlobStore`] is blocking and `object_store` is async, so every [`S3Store`] owns a small
//! multi-threaded tokio runtime (2 worker threads) that runs its requests. A call spawns its request onto that
//! runtime and waits for the result on a `std::sync::mpsc` channel; the calling thread never enters the runtime. So a
//! store works from plain threads, from `spawn_blocking` threads of another runtime (the expected use from async
//! code) and from several threads at once. Calling it straight from an async task also works but blocks that
//! executor thread for the whole request — use `spawn_blocking`. Dropping the store shuts its runtime down in the
//! background (never blocks, so dropping inside an async context is safe).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aidos_api::client::error_chain;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayloadMut,
    RetryConfig,
};

use crate::blocking::BlockingRuntime;
use crate::{BlobBytes, BlobError, BlobId, BlobInfo, BlobStore, ByteStream, Bytes, Pieces};

/// The bucket variable: set, it selects an S3 store ([`S3Config::from_lookup`]).
pub const ENV_BUCKET: &str = "AIDOS_S3_BUCKET";
/// The key prefix variable.
pub const ENV_PREFIX: &str = "AIDOS_S3_PREFIX";
/// [`S3Config::refresh_after`] in seconds.
pub const ENV_REFRESH_AFTER_SECS: &str = "AIDOS_S3_REFRESH_AFTER_SECS";

/// Default multipart part size (and threshold): 16 MiB.
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
/// Default of [`S3Config::refresh_after`]: 10 minutes.
pub const DEFAULT_REFRESH_AFTER: Duration = Duration::from_secs(600);
/// Largest object one server-side copy (`CopyObject`) may copy: `touch` of a larger blob answers `false`.
const MAX_COPY: u64 = 5 << 30;

/// Where and how to reach an S3-compatible bucket. A plain struct: fill it from flags, or start from
/// [`S3Config::from_env`].
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:8333` for a self-hosted store; `None` means AWS S3 for `region`.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Key prefix inside the bucket (no leading/trailing `/` needed); empty for the bucket root.
    pub prefix: String,
    /// Static credentials. `None` leaves credentials to `object_store`'s default chain (instance metadata, web
    /// identity, ...).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Allow `http://` endpoints (self-hosted stores on a trusted network or loopback).
    pub allow_http: bool,
    /// `true`: virtual-hosted-style requests (`https://<bucket>.<endpoint>/key`, AWS's default); `false`:
    /// path-style (`<endpoint>/<bucket>/key`), what most self-hosted stores expect.
    pub virtual_hosted_style: bool,
    /// Blobs of at least this many bytes use a multipart upload.
    pub multipart_threshold: usize,
    /// Part size of multipart uploads (S3 requires >= 5 MiB except for the last part).
    pub part_size: usize,
    /// Parts uploaded concurrently.
    pub upload_concurrency: usize,
    /// Retries of a failed request (transient errors only), and the time after which no retry starts.
    pub max_retries: usize,
    pub retry_timeout: Duration,
    /// TCP connect timeout (an unreachable endpoint fails after about this long per attempt).
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// A put (or touch) of a blob that exists refreshes it (uploads it again) only when it is older than this: the
    /// `refresh_after` of the crate docs' rule (a blob must be referenced within `grace - refresh_after` of its
    /// last put), so it must stay well below the collector's grace period. 0: every put refreshes.
    pub refresh_after: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("refresh_after", &self.refresh_after)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// A config for `bucket` with defaults: AWS region `us-east-1`, no endpoint, no prefix, credentials from the
    /// default chain, https only, path-style requests, 16 MiB multipart parts.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".to_string(),
            bucket: bucket.into(),
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: false,
            virtual_hosted_style: false,
            multipart_threshold: DEFAULT_PART_SIZE,
            part_size: DEFAULT_PART_SIZE,
            upload_concurrency: 4,
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
            refresh_after: DEFAULT_REFRESH_AFTER,
        }
    }

    /// A config from the usual AWS environment variables: `AWS_ENDPOINT_URL`, `AWS_REGION` (or
    /// `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, plus
    /// `AIDOS_S3_BUCKET` (required) and `AIDOS_S3_PREFIX`. An `http://` endpoint turns on `allow_http`.
    pub fn from_env() -> Result<Self, BlobError> {
        Self::from_lookup(|k| std::env::var(k).ok())?.ok_or_else(|| BlobError::Remote {
            store: "S3 configuration".to_string(),
            message: format!("{ENV_BUCKET} is not set (the bucket that holds blobs)"),
        })
    }

    /// [`S3Config::from_env`] through `get` (a variable's value, None when unset). `Ok(None)`: no bucket is named,
    /// so no S3 store is configured (a worker's tasks then reach blobs through the blob service).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, BlobError> {
        let var = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let Some(bucket) = var(ENV_BUCKET) else {
            return Ok(None);
        };
        let mut c = Self::new(bucket);
        c.endpoint = var("AWS_ENDPOINT_URL");
        c.allow_http = c.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        if let Some(r) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            c.region = r;
        }
        c.prefix = var(ENV_PREFIX).unwrap_or_default();
        c.access_key_id = var("AWS_ACCESS_KEY_ID");
        c.secret_access_key = var("AWS_SECRET_ACCESS_KEY");
        c.session_token = var("AWS_SESSION_TOKEN");
        if let Some(v) = var(ENV_REFRESH_AFTER_SECS) {
            let secs: f64 =
                v.parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0).ok_or_else(|| BlobError::Remote {
                    store: "S3 configuration".to_string(),
                    message: format!("{ENV_REFRESH_AFTER_SECS}={v} is not a number of seconds"),
                })?;
            c.refresh_after = Duration::from_secs_f64(secs);
        }
        Ok(Some(c))
    }

    /// The variables [`S3Config::from_lookup`] reads back into this config (endpoint, region, bucket, prefix and
    /// static credentials): how a worker hands its store to its tasks. Tuning fields keep their defaults.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (ENV_BUCKET.to_string(), self.bucket.clone()),
            (ENV_PREFIX.to_string(), self.prefix.clone()),
            ("AWS_REGION".to_string(), self.region.clone()),
            (ENV_REFRESH_AFTER_SECS.to_string(), self.refresh_after.as_secs_f64().to_string()),
        ];
        let opt = [
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("AWS_ACCESS_KEY_ID", &self.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_access_key),
            ("AWS_SESSION_TOKEN", &self.session_token),
        ];
        env.extend(opt.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v))));
        env
    }

    /// Where this config points, for messages: `s3://bucket/prefix at endpoint`.
    pub fn describe(&self) -> String {
        let prefix = self.prefix.trim_matches('/');
        let at = self.endpoint.as_deref().map(str::to_string).unwrap_or_else(|| format!("AWS region {}", self.region));
        if prefix.is_empty() {
            format!("s3://{} at {at}", self.bucket)
        } else {
            format!("s3://{}/{prefix} at {at}", self.bucket)
        }
    }

    /// The `object_store` client for this config (also handy for tests and tools that need raw access).
    pub fn build_object_store(&self) -> Result<AmazonS3, BlobError> {
        // reqwest is built without a crypto provider (Cargo.toml: ring instead of aws-lc-rs) and takes the
        // process default; installing fails only when one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_allow_http(self.allow_http)
            .with_virtual_hosted_style_request(self.virtual_hosted_style)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: self.max_retries,
                retry_timeout: self.retry_timeout,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(self.allow_http)
                    .with_connect_timeout(self.connect_timeout)
                    .with_timeout(self.request_timeout),
            );
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(k) = &self.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &self.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        if let Some(t) = &self.session_token {
            b = b.with_token(t);
        }
        b.build().map_err(|e| BlobError::Remote {
            store: format!("S3 configuration for {}", self.describe()),
            message: error_chain(&e),
        })
    }
}

/// Blobs as objects in an S3-compatible bucket: `<prefix>/<id[0..2]>/<id>`.
pub struct S3Store {
    config: S3Config,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    runtime: BlockingRuntime,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Which request failed, for `BlobError::Remote`.
#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
    Head,
    Range,
    Touch,
    List,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "existence check",
            Op::Range => "ranged get",
            Op::Touch => "refresh",
            Op::List => "listing",
            Op::Delete => "delete",
        }
    }
}

impl S3Store {
    /// A store for `config`. Makes no request: a wrong endpoint, credentials or bucket show on first use, each
    /// with an error that names it.
    pub fn open(config: S3Config) -> Result<Self, BlobError> {
        let store: Arc<dyn ObjectStore> = Arc::new(config.build_object_store()?);
        let runtime = BlockingRuntime::new(2, "aidos-s3").map_err(|e| BlobError::Remote {
            store: format!("S3 store for {}", config.describe()),
            message: format!("cannot start its I/O runtime: {e}"),
        })?;
        let prefix = config.prefix.trim_matches('/').to_string();
        Ok(Self { config, store, prefix, runtime })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The object key of a blob: `<prefix>/<id[0..2]>/<id>`.
    pub fn key(&self, id: &BlobId) -> ObjectPath {
        let s = id.as_str();
        if self.prefix.is_empty() {
            ObjectPath::from(format!("{}/{s}", &s[..2]))
        } else {
            ObjectPath::from(format!("{}/{}/{s}", self.prefix, &s[..2]))
        }
    }

    /// Runs `fut` on the store's runtime and waits for it on this (non-runtime) thread. See the module docs.
    fn wait<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        self.runtime.wait(fut).expect("the S3 store's runtime dropped a request (it was shut down?)")
    }

    /// A `BlobError` for an `object_store` error of `op` on `id`, naming the problem.
    fn remote(&self, op: Op, id: &BlobId, e: object_store::Error) -> BlobError {
        self.remote_at(format!("S3 {} of blob {id} in {}", op.name(), self.config.describe()), op, e)
    }

    /// A `BlobError` for an `object_store` error of `op`, `what` naming the request.
    fn remote_at(&self, what: String, op: Op, e: object_store::Error) -> BlobError {
        let chain = error_chain(&e);
        let endpoint = self.config.endpoint.clone().unwrap_or_else(|| format!("AWS S3 ({})", self.config.region));
        let message = if chain.contains("NoSuchBucket")
            || matches!((op, &e), (Op::Put, object_store::Error::NotFound { .. }))
        {
            format!(
                "bucket {:?} does not exist at {endpoint} (create it, or fix the bucket name): {chain}",
                self.config.bucket
            )
        } else if matches!(
            e,
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
        ) || ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"].iter().any(|c| chain.contains(c))
        {
            format!(
                "access denied by {endpoint} (HTTP 403): wrong credentials (access key {:?}) or no permission on bucket {:?}: {chain}",
                self.config.access_key_id.as_deref().unwrap_or("<default chain>"),
                self.config.bucket
            )
        } else if is_unreachable(&chain) {
            format!(
                "endpoint {endpoint} is unreachable (connection failed; is the server running and the address right?): {chain}"
            )
        } else {
            format!("request to {endpoint} failed: {chain}")
        };
        BlobError::Remote { store: what, message }
    }

    /// Maps a missing object to `NotFound`, everything else through [`Self::remote`]. A 404 whose body says the
    /// *bucket* is missing is not a missing blob.
    fn not_found_or_remote(&self, op: Op, id: &BlobId, e: object_store::Error) -> BlobError {
        match &e {
            object_store::Error::NotFound { .. } if !error_chain(&e).contains("NoSuchBucket") => {
                BlobError::NotFound(id.clone())
            }
            _ => self.remote(op, id, e),
        }
    }

    /// The blob's object metadata, `None` when absent. `op` names the caller's operation in errors.
    fn head(&self, op: Op, id: &BlobId) -> Result<Option<ObjectMeta>, BlobError> {
        let store = self.store.clone();
        let key = self.key(id);
        match self.wait(async move { store.head(&key).await }) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) => match self.not_found_or_remote(op, id, e) {
                BlobError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Bytes per multipart part (S3's minimum is 5 MiB, except for the last part).
    fn part_size(&self) -> usize {
        self.config.part_size.max(5 * 1024 * 1024)
    }

    /// Whether an object was written within `refresh_after` (then a put or touch leaves it alone).
    fn fresh(&self, meta: &ObjectMeta) -> bool {
        let modified = SystemTime::from(meta.last_modified);
        !self.config.refresh_after.is_zero() && SystemTime::now() < modified + self.config.refresh_after
    }
}

/// Pieces a streamed read ([`S3Store::read_stream`]) receives ahead of its reader.
const STREAM_AHEAD: usize = 4;

/// A multipart upload not yet completed or aborted, with its parts in flight. Dropped while it still holds the
/// upload (a panic in the pieces or in `put_stream` itself), it aborts it on the store's runtime once the parts in
/// flight have ended, so the bucket does not keep the parts of a blob that was never published (S3 keeps them, and
/// bills them, until a lifecycle rule expires them). Best effort: a store dropped right after loses the abort.
struct Unfinished<'a> {
    upload: Option<Box<dyn object_store::MultipartUpload>>,
    in_flight: VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>,
    runtime: &'a BlockingRuntime,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else { return };
        let in_flight = std::mem::take(&mut self.in_flight);
        self.runtime.spawn(async move {
            if let Err(e) = abort_upload(upload, in_flight).await {
                eprintln!("aidos: S3: aborting an unfinished multipart upload failed: {e}");
            }
        });
    }
}

/// Waits for the parts in flight to end, then aborts the upload (S3 may keep a part that lands after the abort).
async fn abort_upload(
    mut upload: Box<dyn object_store::MultipartUpload>,
    in_flight: VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>,
) -> object_store::Result<()> {
    for h in in_flight {
        let _ = h.await;
    }
    upload.abort().await
}

fn is_unreachable(chain: &str) -> bool {
    let c = chain.to_ascii_lowercase();
    [
        "connection refused",
        "error sending request",
        "dns error",
        "failed to lookup",
        "connect",
        "timed out",
        "unreachable",
    ]
    .iter()
    .any(|k| c.contains(k))
}

impl BlobStore for S3Store {
    fn put(&self, data: &[u8]) -> Result<BlobId, BlobError> {
        let id = BlobId::of(data);
        // An existing blob is uploaded again only to refresh it (S3 cannot touch in place; see the module docs).
        if self.head(Op::Put, &id)?.is_some_and(|m| self.fresh(&m)) {
            return Ok(id);
        }
        let part = self.part_size();
        let mut pieces = data.chunks(part).map(|c| Ok(Bytes::copy_from_slice(c)));
        self.put_stream(&id, data.len() as u64, &mut pieces)?;
        Ok(id)
    }

    /// One `PUT` under [`S3Config::multipart_threshold`] bytes; a multipart upload otherwise, each part sent as soon
    /// as the pieces fill it (at most [`S3Config::upload_concurrency`] in flight, so an upload holds at most
    /// `(upload_concurrency + 1) * part_size` bytes), completed only after `pieces` ended without an error and
    /// aborted otherwise (see the module docs' visibility rule).
    fn put_stream(&self, id: &BlobId, size: u64, pieces: Pieces<'_>) -> Result<(), BlobError> {
        let key = self.key(id);
        if size < self.config.multipart_threshold as u64 {
            let mut payload = PutPayloadMut::new();
            for p in pieces {
                payload.push(p?);
            }
            let (store, payload) = (self.store.clone(), payload.freeze());
            return self
                .wait(async move { store.put(&key, payload).await.map(|_| ()) })
                .map_err(|e| self.remote(Op::Put, id, e));
        }
        let store = self.store.clone();
        let upload =
            self.wait(async move { store.put_multipart(&key).await }).map_err(|e| self.remote(Op::Put, id, e))?;
        // From here every way out either completes the upload or aborts it, a panic included (the guard's drop).
        let mut pending = Unfinished { upload: Some(upload), in_flight: VecDeque::new(), runtime: &self.runtime };
        let (part_size, concurrency) = (self.part_size(), self.config.upload_concurrency.max(1));
        // Waits for the oldest part in flight.
        let join = |h: tokio::task::JoinHandle<object_store::Result<()>>| {
            self.wait(h).map_err(object_store::Error::from).and_then(|r| r).map_err(|e| self.remote(Op::Put, id, e))
        };
        let mut part = PutPayloadMut::new();
        let mut sent_any = false;
        let mut sent = |pending: &mut Unfinished<'_>| -> Result<(), BlobError> {
            // `None` marks the end: the last part goes then, whatever its size (and one, empty, if none went).
            for p in pieces.map(Some).chain([None]) {
                let last = p.is_none();
                if let Some(p) = p {
                    part.push(p?);
                }
                if part.content_length() >= part_size || (last && (part.content_length() > 0 || !sent_any)) {
                    if pending.in_flight.len() >= concurrency {
                        join(pending.in_flight.pop_front().expect("non-empty"))?;
                    }
                    let payload = std::mem::take(&mut part).freeze();
                    let put = pending.upload.as_mut().expect("taken only below").put_part(payload);
                    pending.in_flight.push_back(self.runtime.spawn(put));
                    sent_any = true;
                }
            }
            while let Some(h) = pending.in_flight.pop_front() {
                join(h)?;
            }
            Ok(())
        };
        let result = sent(&mut pending);
        let mut upload = pending.upload.take().expect("taken only here");
        match result {
            Ok(()) => self
                .wait(async move {
                    let done = upload.complete().await.map(|_| ());
                    if done.is_err() {
                        // Not published: drop the parts.
                        let _ = upload.abort().await;
                    }
                    done
                })
                .map_err(|e| self.remote(Op::Put, id, e)),
            Err(e) => {
                // Nothing was published; drop the parts so the bucket does not keep them.
                let _ = self.wait(abort_upload(upload, std::mem::take(&mut pending.in_flight)));
                Err(e)
            }
        }
    }

    /// One streamed GET, hashed as it arrives (each piece while it is in cache, not a second pass over the blob).
    fn get(&self, id: &BlobId) -> Result<BlobBytes, BlobError> {
        let store = self.store.clone();
        let key = self.key(id);
        let (bytes, hash) = self
            .wait(async move {
                let got = store.get(&key).await?;
                // Room for all of it at once (the server's claim, at most 1 GiB up front).
                let mut data = Vec::with_capacity(got.meta.size.min(1 << 30) as usize);
                let mut hasher = blake3::Hasher::new();
                let mut pieces = got.into_stream();
                while let Some(p) = pieces.next().await {
                    let p = p?;
                    hasher.update(&p);
                    data.extend_from_slice(&p);
                }
                Ok::<_, object_store::Error>((data, hasher.finalize()))
            })
            .map_err(|e| self.not_found_or_remote(Op::Get, id, e))?;
        let actual = BlobId::from_hash(hash);
        if &actual != id {
            return Err(BlobError::Corrupt { id: id.clone(), actual });
        }
        Ok(BlobBytes::Owned(bytes))
    }

    /// One streamed GET from `offset`, its body cut into `piece`-byte pieces on the store's runtime, at most
    /// [`STREAM_AHEAD`] pieces ahead of the reader. An offset S3 cannot serve as a range (an empty object, at or past
    /// the end: 416) is told apart by the object's size: no pieces then.
    fn read_stream(&self, id: &BlobId, offset: u64, piece: usize) -> Result<ByteStream<'_>, BlobError> {
        let piece = piece.max(1);
        let (store, key) = (self.store.clone(), self.key(id));
        let opts = GetOptions::new().with_range(Some(GetRange::Offset(offset)));
        let got = match self.wait(async move { store.get_opts(&key, opts).await }) {
            Ok(got) => got,
            Err(e @ object_store::Error::NotFound { .. }) => return Err(self.not_found_or_remote(Op::Get, id, e)),
            Err(e) => {
                return match self.head(Op::Get, id)? {
                    Some(meta) if offset >= meta.size => {
                        Ok(ByteStream { total: meta.size, pieces: Box::new(std::iter::empty()) })
                    }
                    Some(_) => Err(self.remote(Op::Get, id, e)),
                    None => Err(BlobError::NotFound(id.clone())),
                };
            }
        };
        let total = got.meta.size;
        let (tx, mut rx) = tokio::sync::mpsc::channel(STREAM_AHEAD);
        let mut body = got.into_stream();
        self.runtime.spawn(async move {
            // Whole pieces go out as slices of what arrived where they can (no copy), the rest is gathered.
            let mut gathered = bytes::BytesMut::new();
            loop {
                let out = match body.next().await {
                    Some(Ok(mut b)) => {
                        let mut out = Vec::new();
                        while !b.is_empty() {
                            if gathered.is_empty() && b.len() >= piece {
                                out.push(b.split_to(piece));
                                continue;
                            }
                            if gathered.capacity() == 0 {
                                gathered.reserve(piece);
                            }
                            let take = b.len().min(piece - gathered.len());
                            gathered.extend_from_slice(&b.split_to(take));
                            if gathered.len() == piece {
                                out.push(gathered.split().freeze());
                            }
                        }
                        out.into_iter().map(Ok).collect()
                    }
                    Some(Err(e)) => vec![Err(e)],
                    None if gathered.is_empty() => return,
                    None => vec![Ok(std::mem::take(&mut gathered).freeze())],
                };
                for p in out {
                    let failed = p.is_err();
                    // A reader that left (the stream dropped) stops the GET.
                    if tx.send(p).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        let id = id.clone();
        // Not `blocking_recv`, which panics on a thread inside a runtime (the contract asks for a blocking context,
        // but a misplaced caller should block, as every other call of this store does, not panic).
        let pieces = std::iter::from_fn(move || {
            futures::executor::block_on(rx.recv()).map(|p| p.map_err(|e| self.remote(Op::Get, &id, e)))
        });
        Ok(ByteStream { total, pieces: Box::new(pieces) })
    }

    fn contains(&self, id: &BlobId) -> Result<bool, BlobError> {
        Ok(self.head(Op::Head, id)?.is_some())
    }

    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<(Vec<u8>, u64), BlobError> {
        // One ranged GET answers both the bytes and the object's total size (Content-Range). A range S3 cannot
        // serve (an empty object, an offset at or past the end) falls back to HEAD, then a GET of what is left.
        if len > 0 {
            let store = self.store.clone();
            let key = self.key(id);
            let range = offset..offset.saturating_add(len);
            let got = self.wait(async move {
                let r = store.get_opts(&key, GetOptions::new().with_range(Some(range))).await?;
                let total = r.meta.size;
                Ok::<_, object_store::Error>((r.bytes().await?, total))
            });
            match got {
                Ok((bytes, total)) => return Ok((Vec::from(bytes), total)),
                Err(e @ object_store::Error::NotFound { .. }) => {
                    return Err(self.not_found_or_remote(Op::Range, id, e));
                }
                Err(_) => {} // e.g. 416 Range Not Satisfiable: decided below with the object's size
            }
        }
        let total = self.head(Op::Range, id)?.ok_or_else(|| BlobError::NotFound(id.clone()))?.size;
        let start = offset.min(total);
        let end = start.saturating_add(len).min(total);
        if start == end {
            return Ok((Vec::new(), total));
        }
        let store = self.store.clone();
        let key = self.key(id);
        let bytes = self
            .wait(async move { store.get_range(&key, start..end).await })
            .map_err(|e| self.not_found_or_remote(Op::Range, id, e))?;
        Ok((Vec::from(bytes), total))
    }

    /// Copies the object to a temporary key and back (two server-side copies: a fresh `last_modified`, no bytes
    /// through this host), then deletes the temporary key, which `list` never reports (not a blob id).
    fn touch(&self, id: &BlobId) -> Result<bool, BlobError> {
        let Some(meta) = self.head(Op::Touch, id)? else { return Ok(false) };
        if self.fresh(&meta) {
            return Ok(true);
        }
        if meta.size > MAX_COPY {
            return Ok(false);
        }
        let store = self.store.clone();
        let key = self.key(id);
        let tmp = ObjectPath::from(format!("{key}.touch-{}-{}", std::process::id(), crate::unique()));
        let copied = self.wait(async move {
            store.copy(&key, &tmp).await?;
            let back = store.copy(&tmp, &key).await;
            let _ = store.delete(&tmp).await;
            back
        });
        match copied {
            Ok(()) => Ok(true),
            Err(e) => match self.not_found_or_remote(Op::Touch, id, e) {
                BlobError::NotFound(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        let store = self.store.clone();
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let metas = self.wait(async move {
            let mut out = Vec::new();
            let mut stream = store.list(prefix.as_ref());
            while let Some(m) = stream.next().await {
                out.push(m?);
            }
            Ok::<_, object_store::Error>(out)
        });
        let metas = metas
            .map_err(|e| self.remote_at(format!("S3 listing of blobs in {}", self.config.describe()), Op::List, e))?;
        let mut out: Vec<BlobInfo> = metas
            .into_iter()
            .filter_map(|m| {
                // Only `<prefix>/<id[0..2]>/<id>`: temporary keys and foreign objects are left out.
                let id = BlobId::parse(m.location.filename()?).ok()?;
                (m.location == self.key(&id)).then(|| BlobInfo {
                    id,
                    size: m.size,
                    modified: SystemTime::from(m.last_modified),
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn delete(&self, id: &BlobId) -> Result<(), BlobError> {
        let store = self.store.clone();
        let key = self.key(id);
        match self.wait(async move { store.delete(&key).await }) {
            Ok(()) => Ok(()),
            Err(e) => match self.not_found_or_remote(Op::Delete, id, e) {
                BlobError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// `HEAD`, then `DELETE` when older than `cutoff` (see the module docs for the window between the two).
    fn delete_if_older(&self, id: &BlobId, cutoff: SystemTime) -> Result<bool, BlobError> {
        match self.head(Op::Delete, id)? {
            Some(m) if SystemTime::from(m.last_modified) < cutoff => {
                self.delete(id)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_roundtrip_and_no_bucket_means_no_s3() {
        let mut c = S3Config::new("models");
        c.endpoint = Some("http://192.0.2.10:8333".into());
        c.region = "eu-1".into();
        c.prefix = "team-a".into();
        c.access_key_id = Some("AK".into());
        c.secret_access_key = Some("SK".into());
        c.refresh_after = Duration::from_millis(1500);
        let env: std::collections::HashMap<_, _> = c.to_env().into_iter().collect();
        let back = S3Config::from_lookup(|k| env.get(k).cloned()).unwrap().unwrap();
        assert_eq!(back.bucket, "models");
        assert_eq!(back.endpoint.as_deref(), Some("http://192.0.2.10:8333"));
        assert!(back.allow_http);
        assert_eq!((back.region.as_str(), back.prefix.as_str()), ("eu-1", "team-a"));
        assert_eq!((back.access_key_id.as_deref(), back.secret_access_key.as_deref()), (Some("AK"), Some("SK")));
        assert!(back.session_token.is_none());
        assert_eq!(back.refresh_after, Duration::from_millis(1500));
        assert!(S3Config::from_lookup(|_| None).unwrap().is_none());
        assert!(S3Config::from_lookup(|k| (k == ENV_BUCKET).then(|| " ".to_string())).unwrap().is_none());
    }
}
