//! An S3-compatible bucket for the PostgreSQL store's large values
//! (`kiln serve --store postgres://… --blob-store s3://bucket/prefix`).
//!
//! Snapshot layers, bundles, packets and offloaded payloads are the store's
//! large values. Kept in PostgreSQL they swell its write-ahead log, its
//! backups and its replicas, and each is limited to 1 GiB. With a blob
//! store, the PostgreSQL backend writes every value of at least
//! `min-size` bytes (128 KiB unless the URL says) as an object of its own,
//! and keeps in the table a short reference to it in its place:
//!
//! - the object is written before the group of commits that refers to it,
//!   so a reference in the table always names an object that exists;
//! - each object has a name of its own (`<prefix><hex of the key>/<writer>-<n>`),
//!   never overwritten, so a reader holding an old reference reads the old
//!   value or, once it is deleted, reads the key again;
//! - the objects a group's commit replaces or deletes are deleted once it
//!   is durable and no read that began before it is still under way.
//!   Objects left behind by a crash (written for a group that never
//!   committed, or replaced just before the process died) are found by a
//!   sweep: an object older than an hour, named by a writer this database
//!   registered, not of a group being written, whose key's row does not
//!   refer to it, is deleted;
//! - the database records which bucket and prefix it keeps its values in,
//!   and a server configured otherwise is refused.
//!
//! Requests are signed (AWS Signature Version 4) by the `rusty-s3` crate,
//! which builds and signs S3 requests without doing any I/O itself, and
//! sent through the `reqwest` client Kiln already uses: a full AWS SDK would
//! double the build for four requests (put, get, delete, list).

use crate::{Result, StoreError};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The start of a reference to an object, in place of a value in the
/// table. No value Kiln stores starts with `0xff` (they are JSON,
/// MessagePack maps, UTF-8 text, sealed envelopes and WebAssembly), and a
/// reference is only taken as one when it names an object of the key it is
/// read from.
const MAGIC: &[u8; 8] = b"\xffKLNOBJ\x01";

/// Values of at least this many bytes go to the bucket, unless the URL's
/// `min-size` says otherwise.
pub const DEFAULT_MIN_SIZE: usize = 128 * 1024;

/// The longest object name S3 takes.
const MAX_NAME: usize = 1024;

/// How long a signed request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// How many times a request is sent before its error is given up on
/// (about 25 s of backing off in all).
const TRIES: u32 = 8;

/// The longest pause between two tries of a request.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// An object older than this, that no row refers to, is garbage: no
/// commit takes an hour between writing an object and committing.
pub const SWEEP_AGE: Duration = Duration::from_secs(60 * 60);

/// A bucket, the prefix Kiln's objects go under, and the client that
/// reaches it.
pub struct BlobStore {
    bucket: Bucket,
    credentials: Credentials,
    /// Reads, lists and deletes: a pause of a minute in an answer fails
    /// the request (and it is tried again).
    http: reqwest::Client,
    /// Writes, each with a time limit of its own for its size.
    http_put: reqwest::Client,
    prefix: String,
    min_size: usize,
    /// Names this writer's objects apart from any other's.
    writer: String,
    next: AtomicU64,
    /// The number of the first object of the group being written
    /// (`u64::MAX` when none is): the sweep leaves it and later ones alone.
    writing_from: AtomicU64,
    /// Reads under way, for deletions to wait for.
    readers: Mutex<Readers>,
    /// Whether this server may delete objects: not when the database's
    /// record of the blob store was made by another database (a restored
    /// copy), whose objects it may share with the original.
    deletes: std::sync::atomic::AtomicBool,
    /// `s3://<bucket>/<prefix>`: what the database records.
    location: String,
    /// The location and endpoint, for messages.
    shown: String,
    /// The endpoint given in the URL, to make a fresh client with.
    endpoint: Option<String>,
}

/// The reads that may hold references, by ticket.
#[derive(Default)]
struct Readers {
    next: u64,
    active: BTreeSet<u64>,
}

/// A read under way: while it lives, objects replaced after it began are
/// not deleted.
pub(crate) struct Reading<'a> {
    blobs: &'a BlobStore,
    ticket: u64,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        crate::group_commit::lock(&self.blobs.readers)
            .active
            .remove(&self.ticket);
    }
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

fn refused(why: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("--blob-store: {why}"))
}

impl BlobStore {
    /// The bucket at `url`: `s3://<bucket>/<prefix>`, with the query
    /// options `endpoint` (an S3-compatible server's URL; AWS's regional
    /// endpoint when absent), `region` (else `AWS_REGION`, else
    /// `us-east-1`) and `min-size` (bytes). The credentials come from
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, if set,
    /// `AWS_SESSION_TOKEN`.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::build(url, Credentials::from_env())
    }

    /// [`BlobStore::from_url`] with the access key and secret given rather
    /// than read from the environment.
    pub fn with_credentials(url: &str, key: &str, secret: &str) -> Result<Self> {
        Self::build(url, Some(Credentials::new(key, secret)))
    }

    fn build(url: &str, credentials: Option<Credentials>) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| refused(format!("not a URL: {e}")))?;
        if parsed.scheme() != "s3" {
            return Err(refused(format!(
                "`{}://` is not a blob store; use s3://<bucket>/<prefix>",
                parsed.scheme()
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(refused(
                "credentials do not go in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        let name = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| refused("the URL names no bucket (s3://<bucket>/<prefix>)"))?
            .to_string();
        let mut prefix = parsed.path().trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let (mut endpoint, mut region, mut min_size) = (None, None, DEFAULT_MIN_SIZE);
        for (option, value) in parsed.query_pairs() {
            match &*option {
                "endpoint" => endpoint = Some(value.into_owned()),
                "region" => region = Some(value.into_owned()),
                "min-size" => {
                    min_size = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        refused(format!("min-size={value} is not a size in bytes"))
                    })?
                }
                other => {
                    return Err(refused(format!(
                        "unknown option `{other}` (endpoint, region, min-size)"
                    )));
                }
            }
        }
        let region = region
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        let given = endpoint.clone();
        let (endpoint, style) = match endpoint {
            // S3-compatible servers (MinIO, moto, Ceph) name buckets in the path.
            Some(endpoint) => (endpoint, UrlStyle::Path),
            None => (
                format!("https://s3.{region}.amazonaws.com"),
                UrlStyle::VirtualHost,
            ),
        };
        let endpoint_url =
            url::Url::parse(&endpoint).map_err(|e| refused(format!("endpoint {endpoint}: {e}")))?;
        let bucket = Bucket::new(endpoint_url, style, name.clone(), region)
            .map_err(|e| refused(format!("bucket {name} at {endpoint}: {e}")))?;
        let credentials = credentials.ok_or_else(|| {
            refused("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the bucket")
        })?;
        Ok(BlobStore {
            bucket,
            credentials,
            http: client(true)?,
            http_put: client(false)?,
            shown: format!("s3://{name}/{prefix} at {endpoint}"),
            location: format!("s3://{name}/{prefix}"),
            prefix,
            min_size,
            writer: writer_name()?,
            next: AtomicU64::new(0),
            writing_from: AtomicU64::new(u64::MAX),
            readers: Mutex::default(),
            deletes: std::sync::atomic::AtomicBool::new(true),
            endpoint: given,
        })
    }

    /// The same bucket with a client and a writer's name of its own, for
    /// one backend: a client's pooled connections belong to the runtime
    /// that made them, and each backend has its own.
    pub(crate) fn fresh(&self) -> Result<Self> {
        Ok(BlobStore {
            bucket: self.bucket.clone(),
            credentials: self.credentials.clone(),
            http: client(true)?,
            http_put: client(false)?,
            prefix: self.prefix.clone(),
            min_size: self.min_size,
            writer: writer_name()?,
            next: AtomicU64::new(0),
            writing_from: AtomicU64::new(u64::MAX),
            readers: Mutex::default(),
            deletes: std::sync::atomic::AtomicBool::new(true),
            location: self.location.clone(),
            shown: self.shown.clone(),
            endpoint: self.endpoint.clone(),
        })
    }

    /// `s3://<bucket>/<prefix>`, which the database records.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether this server deletes objects (see [`BlobStore::keep_all`]).
    pub(crate) fn deletes(&self) -> bool {
        self.deletes.load(Ordering::Acquire)
    }

    /// Never deletes an object from now on.
    pub(crate) fn keep_all(&self) {
        self.deletes.store(false, Ordering::Release);
    }

    /// This writer's name, which the database registers before any object
    /// of its is written.
    pub(crate) fn writer(&self) -> &str {
        &self.writer
    }

    /// Marks a read under way until the answer is dropped.
    pub(crate) fn reading(&self) -> Reading<'_> {
        let mut readers = crate::group_commit::lock(&self.readers);
        let ticket = readers.next;
        readers.next += 1;
        readers.active.insert(ticket);
        Reading {
            blobs: self,
            ticket,
        }
    }

    /// Waits until every read that began before this call has ended.
    pub(crate) async fn reads_done(&self) {
        let cut = crate::group_commit::lock(&self.readers).next;
        loop {
            let oldest = crate::group_commit::lock(&self.readers)
                .active
                .first()
                .copied();
            if oldest.is_none_or(|t| t >= cut) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A group's objects are about to be written: the sweep leaves them
    /// alone until [`BlobStore::group_written`].
    pub(crate) fn writing_group(&self) {
        self.writing_from
            .store(self.next.load(Ordering::Acquire), Ordering::Release);
    }

    /// The group is committed (or failed).
    pub(crate) fn group_written(&self) {
        self.writing_from.store(u64::MAX, Ordering::Release);
    }

    /// Whether `value`, stored under `key`, goes to the bucket: it is
    /// large (or could be mistaken for a reference), and its key fits in
    /// an object's name.
    pub(crate) fn takes(&self, key: &[u8], value: &[u8]) -> bool {
        (value.len() >= self.min_size || value.starts_with(MAGIC))
            && self.prefix.len() + 2 * key.len() + 1 + self.writer.len() + 21 <= MAX_NAME
    }

    /// A new object name for a value of `key`.
    pub(crate) fn new_name(&self, key: &[u8]) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}{}/{}-{n}", self.prefix, hex::encode(key), self.writer)
    }

    /// The key an object Kiln named holds a value of, its writer and its
    /// number, from its name (`<prefix><hex key>/<16 hex>-<n>`).
    fn parse<'n>(&self, name: &'n str) -> Option<(Vec<u8>, &'n str, u64)> {
        let rest = name.strip_prefix(&self.prefix)?;
        let (key, object) = rest.split_once('/')?;
        let (writer, n) = object.split_once('-')?;
        let hex_digits = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        if writer.len() != 16 || !hex_digits(writer) || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((hex::decode(key).ok()?, writer, n.parse().ok()?))
    }

    /// The key an object Kiln named holds a value of.
    fn key_of(&self, name: &str) -> Option<Vec<u8>> {
        self.parse(name).map(|(key, _, _)| key)
    }

    /// The reference kept in the table in place of a value.
    pub(crate) fn reference(name: &str) -> Vec<u8> {
        let mut r = Vec::with_capacity(MAGIC.len() + name.len());
        r.extend_from_slice(MAGIC);
        r.extend_from_slice(name.as_bytes());
        r
    }

    /// The object `value`, read from under `key`, refers to, if it is a
    /// reference.
    pub(crate) fn referred<'v>(&self, key: &[u8], value: &'v [u8]) -> Option<&'v str> {
        let name = std::str::from_utf8(value.strip_prefix(MAGIC)?).ok()?;
        (self.key_of(name)? == key).then_some(name)
    }

    /// Whether a stored value starts as a reference does (the SQL that
    /// finds the objects a group replaces compares this prefix).
    pub(crate) fn magic() -> &'static [u8] {
        MAGIC
    }

    /// Sends the request `make` builds (again on a failure to connect or
    /// a 5xx, up to [`TRIES`] times) and answers its response with a 2xx
    /// or 404 status.
    async fn send(
        &self,
        what: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        // Every request is safe to send again: objects are never
        // overwritten, and deleting or reading one twice is harmless.
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=TRIES {
            let last = attempt == TRIES;
            match make().send().await {
                Ok(response)
                    if response.status().is_success()
                        || response.status() == reqwest::StatusCode::NOT_FOUND =>
                {
                    return Ok(response);
                }
                Ok(response)
                    if !last
                        && (response.status().is_server_error()
                            || response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS) => {}
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(StoreError::Backend(format!(
                        "blob store {}: {what}: {status}: {}",
                        self.shown,
                        s3_error(&body)
                    )));
                }
                Err(_) if !last => {}
                Err(error) => {
                    return Err(StoreError::Backend(format!(
                        "blob store {}: {what}: {}",
                        self.shown,
                        chain(&error.without_url())
                    )));
                }
            }
            // Backing off, with a random part so that nodes retrying at
            // once do not stay in step.
            let jitter = delay.mul_f64(jitter_fraction() * 0.5);
            tokio::time::sleep(delay + jitter).await;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        unreachable!("the last try answers")
    }

    /// Checks that the bucket can be listed with these credentials.
    pub(crate) async fn check(&self) -> Result<()> {
        let mut list = self.bucket.list_objects_v2(Some(&self.credentials));
        list.with_prefix(self.prefix.as_str());
        list.with_max_keys(1);
        let url = list.sign(SIGNED_FOR);
        let response = self
            .send("listing the bucket", || self.http.get(url.clone()))
            .await?;
        self.bucket_found(response).await.map(drop)
    }

    /// `response`, unless it says the bucket does not exist (a 404 that
    /// is not about an object).
    async fn bucket_found(&self, response: reqwest::Response) -> Result<reqwest::Response> {
        if response.status() != reqwest::StatusCode::NOT_FOUND {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(StoreError::Backend(format!(
            "blob store {}: {}",
            self.shown,
            if body.contains("NoSuchKey") {
                s3_error(&body)
            } else {
                format!("the bucket does not exist ({})", s3_error(&body))
            }
        )))
    }

    /// Writes the object `name`.
    pub(crate) async fn put(&self, name: &str, bytes: bytes::Bytes) -> Result<()> {
        let url = self
            .bucket
            .put_object(Some(&self.credentials), name)
            .sign(SIGNED_FOR);
        // A minute, and a second a MiB: an upload slower than that is
        // stuck (reqwest's read timeout would also count the upload).
        let limit = Duration::from_secs(60 + (bytes.len() >> 20) as u64);
        let response = self
            .send(&format!("writing {name}"), || {
                self.http_put
                    .put(url.clone())
                    .timeout(limit)
                    .body(bytes.clone())
            })
            .await?;
        self.bucket_found(response).await.map(drop)
    }

    /// The object `name`'s bytes, `None` if there is no such object.
    pub(crate) async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), name)
            .sign(SIGNED_FOR);
        // An answer cut off midway is asked for again.
        let mut tries = 0;
        loop {
            tries += 1;
            let response = self
                .send(&format!("reading {name}"), || self.http.get(url.clone()))
                .await?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                let body = response.text().await.unwrap_or_default();
                if body.contains("NoSuchBucket") {
                    return Err(StoreError::Backend(format!(
                        "blob store {}: reading {name}: the bucket does not exist",
                        self.shown
                    )));
                }
                return Ok(None);
            }
            match response.bytes().await {
                Ok(bytes) => return Ok(Some(bytes.to_vec())),
                Err(_) if tries < 3 => continue,
                Err(e) => {
                    return Err(StoreError::Backend(format!(
                        "blob store {}: reading {name}: {}",
                        self.shown,
                        chain(&e.without_url())
                    )));
                }
            }
        }
    }

    /// Deletes the object `name` (nothing if it is gone already).
    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), name)
            .sign(SIGNED_FOR);
        self.send(&format!("deleting {name}"), || {
            self.http.delete(url.clone())
        })
        .await
        .map(drop)
    }

    /// Every object under the prefix: its name and, when the server says,
    /// its age.
    pub async fn list(&self) -> Result<Vec<(String, Option<Duration>)>> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut list = self.bucket.list_objects_v2(Some(&self.credentials));
            list.with_prefix(self.prefix.as_str());
            if let Some(token) = &token {
                list.with_continuation_token(token.as_str());
            }
            let url = list.sign(SIGNED_FOR);
            let response = self
                .send("listing the bucket", || self.http.get(url.clone()))
                .await?;
            let response = self.bucket_found(response).await?;
            let body = response.text().await.map_err(|e| {
                StoreError::Backend(format!(
                    "blob store {}: listing: {}",
                    self.shown,
                    chain(&e.without_url())
                ))
            })?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&body).map_err(|e| {
                StoreError::Backend(format!("blob store {}: a listing: {e}", self.shown))
            })?;
            let now = jiff::Timestamp::now();
            for object in page.contents {
                let age = object
                    .last_modified
                    .as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .and_then(|t| now.duration_since(t).try_into().ok());
                objects.push((object.key, age));
            }
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => return Ok(objects),
            }
        }
    }

    /// Deletes every object older than `older_than`, named by one of
    /// `writers` (those the database registered), not of a group being
    /// written, that `holds` (which reads a key's row in the table) does
    /// not refer to; how many it deleted. Objects under the prefix that
    /// Kiln did not name, or that another database's writer named, are
    /// left alone.
    pub(crate) async fn sweep<F, Fut>(
        &self,
        older_than: Duration,
        writers: &HashSet<String>,
        holds: F,
    ) -> Result<usize>
    where
        F: Fn(Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<Vec<u8>>>>,
    {
        let mut deleted = 0;
        for (name, age) in self.list().await? {
            if age.is_none_or(|age| age < older_than) {
                continue;
            }
            let Some((key, writer, n)) = self.parse(&name) else {
                continue;
            };
            if !writers.contains(writer)
                || (writer == self.writer && n >= self.writing_from.load(Ordering::Acquire))
            {
                continue;
            }
            let referred = |row: Option<Vec<u8>>| {
                row.as_deref().and_then(|v| self.referred(&key, v)) == Some(name.as_str())
            };
            if referred(holds(key.clone()).await?) {
                continue;
            }
            // A read that began before its row was replaced may still be
            // reading it.
            self.reads_done().await;
            if referred(holds(key.clone()).await?) || !self.deletes() {
                continue;
            }
            self.delete(&name).await?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

/// An HTTP client for a bucket; with `read_limit`, a pause of a minute
/// in an answer fails the request.
fn client(read_limit: bool) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    let builder = if read_limit {
        builder.read_timeout(Duration::from_secs(60))
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| refused(format!("an HTTP client: {e}")))
}

/// A new writer's name: 16 random hex digits.
fn writer_name() -> Result<String> {
    let mut random = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| refused("no random bytes for the writer's name"))?;
    Ok(hex::encode(random))
}

/// A random fraction in `[0, 1)`.
fn jitter_fraction() -> f64 {
    let mut random = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    f64::from(u16::from_be_bytes(random)) / 65_536.0
}

/// An error and its causes, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// The code and message of an S3 error document, else its start.
fn s3_error(body: &str) -> String {
    let field = |tag: &str| {
        let open = format!("<{tag}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{tag}>"))? + start;
        Some(body[start..end].to_string())
    };
    match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => body.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(url: &str) -> Result<BlobStore> {
        BlobStore::with_credentials(url, "test", "test")
    }

    #[test]
    fn urls_are_read_or_refused_with_the_reason() {
        let s = store("s3://kiln/runs?endpoint=http://127.0.0.1:9&min-size=10").unwrap();
        assert_eq!((s.prefix.as_str(), s.min_size), ("runs/", 10));
        let s = store("s3://kiln").unwrap();
        assert_eq!((s.prefix.as_str(), s.min_size), ("", DEFAULT_MIN_SIZE));
        for (url, why) in [
            ("http://kiln/x", "not a blob store"),
            ("s3:///x", "names no bucket"),
            ("s3://key:secret@kiln/x", "credentials do not go in the URL"),
            ("s3://kiln/x?min-size=lots", "not a size"),
            ("s3://kiln/x?colour=red", "unknown option `colour`"),
        ] {
            let error = store(url).unwrap_err().to_string();
            assert!(error.contains(why), "{url}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn a_reference_names_an_object_of_the_key_it_is_read_from() {
        let s = store("s3://kiln/p?endpoint=http://127.0.0.1:9&min-size=4").unwrap();
        let name = s.new_name(b"snap/r1");
        assert!(name.starts_with("p/"));
        assert_ne!(name, s.new_name(b"snap/r1"), "names are never reused");
        let reference = BlobStore::reference(&name);
        assert_eq!(s.referred(b"snap/r1", &reference), Some(name.as_str()));
        // The same bytes under another key are a value, not a reference.
        assert_eq!(s.referred(b"snap/r2", &reference), None);
        assert_eq!(s.referred(b"snap/r1", b"{\"json\":1}"), None);
        assert!(s.takes(b"k", b"long"));
        assert!(!s.takes(b"k", b"abc"));
        assert!(
            s.takes(b"k", MAGIC),
            "what looks like a reference is stored apart"
        );
        assert!(!s.takes(&[b'k'; 600], b"long"), "a key too long for a name");
        let (key, writer, n) = s.parse(&name).unwrap();
        assert_eq!(
            (key.as_slice(), writer, n),
            (&b"snap/r1"[..], s.writer(), 0)
        );
        for foreign in [
            "p/cafe/notes.txt",
            "p/README",
            "p/zz/0123456789abcdef-1",
            "q/cafe/0123456789abcdef-1",
        ] {
            assert_eq!(s.parse(foreign), None, "{foreign}");
        }
        assert_eq!(
            s3_error("<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>"),
            "NoSuchBucket: gone"
        );
    }
}
