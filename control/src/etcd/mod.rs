//! A small etcd v3 client: the RPCs the etcd datastore, the test etcd fixture and
//! `weftd bench-control` use, over tonic with rustls (no OpenSSL).
//!
//! - The protobuf and gRPC client code in `generated/` comes from the trimmed copies of etcd's
//!   `rpc.proto` and `kv.proto` in `control/proto/` (upstream's packages, names and field
//!   numbers). It is generated once and committed, so a build needs no `protoc`, no build script
//!   and no proto compiler; `control/tests/etcd_proto.rs` regenerates it in pure Rust and fails
//!   when the committed files drift (`WEFT_REGEN_PROTO=1` rewrites them).
//! - [`Client::connect`] balances over every endpoint (tonic's balanced channel; it connects
//!   lazily, so connecting succeeds while etcd is down and requests fail until it is up). With a
//!   user and password it authenticates first and sends the token as the `token` metadata of
//!   every request; a request refused for an invalid or expired token re-authenticates once and
//!   is retried.
//! - Responses are the protobuf messages themselves ([`RangeResponse`], [`WatchResponse`], ...);
//!   requests are built with [`GetOptions`], [`PutOptions`], [`DeleteOptions`], [`WatchOptions`],
//!   [`Txn`], [`Compare`] and [`TxnOp`].

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The generated protobuf messages and gRPC clients (see the module docs).
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic,
    clippy::nursery
)]
pub mod pb {
    /// etcd's `mvccpb` package: keys, values, watch events.
    pub mod mvccpb {
        include!("generated/mvccpb.rs");
    }
    /// etcd's `etcdserverpb` package: the KV, Watch, Lease and Auth services.
    pub mod etcdserverpb {
        include!("generated/etcdserverpb.rs");
    }
}

use pb::etcdserverpb::auth_client::AuthClient;
use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::lease_client::LeaseClient;
use pb::etcdserverpb::watch_client::WatchClient;
pub use pb::etcdserverpb::{
    compare, request_op, AuthenticateRequest, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnResponse,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
pub use pb::mvccpb::{event::EventType, Event, KeyValue};
/// A TLS client certificate or CA bundle, PEM.
pub use tonic::transport::Certificate;
/// TLS settings for `https://` endpoints: CA certificates and a client identity.
pub use tonic::transport::ClientTlsConfig as TlsOptions;
/// A client identity (certificate and key), PEM.
pub use tonic::transport::Identity;

/// A transaction: `when` every compare holds, `and_then` runs, else `or_else`.
pub type Txn = pb::etcdserverpb::TxnRequest;
/// One operation of a [`Txn`].
pub type TxnOp = pb::etcdserverpb::RequestOp;
/// A comparison of a [`Txn`].
pub type Compare = pb::etcdserverpb::Compare;
/// How a [`Compare`] compares.
pub type CompareOp = compare::CompareResult;

/// The metadata key etcd reads the auth token from.
const TOKEN_HEADER: &str = "token";
/// The message etcd sends with an invalid or expired token (with code `Unknown` from services
/// behind its in-process client, `Unauthenticated` otherwise).
const INVALID_AUTH_TOKEN_MSG: &str = "etcdserver: invalid auth token";

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint was given.
    #[error("no etcd endpoints")]
    NoEndpoints,
    /// An endpoint URL is unusable (bad URL, TLS settings on an `http://` URL, bad TLS files).
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// A request failed: etcd's answer, or unreachable, timed out, refused by the transport.
    #[error("{}", status_text(.0))]
    Status(#[from] Status),
    /// etcd's auth token cannot be sent as a header.
    #[error("etcd sent an auth token that is not a valid header value")]
    BadToken,
    /// The request side of a stream (watch, lease keep-alive) is gone.
    #[error("etcd {0} stream closed")]
    StreamClosed(&'static str),
}

impl Error {
    /// The gRPC status of a failed request.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Status(s) => Some(s),
            _ => None,
        }
    }
}

fn status_text(s: &Status) -> String {
    let mut text = format!("{:?}", s.code());
    if !s.message().is_empty() {
        text.push_str(": ");
        text.push_str(s.message());
    }
    text.push_str(&source_chain(s));
    text
}

/// `": cause: its cause ..."` of an error's sources.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

fn is_invalid_auth_token(s: &Status) -> bool {
    match s.code() {
        Code::Unauthenticated => true,
        Code::Unknown => s.message() == INVALID_AUTH_TOKEN_MSG,
        _ => false,
    }
}

/// How [`Client::connect`] connects.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    user: Option<(String, String)>,
    tls: Option<TlsOptions>,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    keep_alive: Option<(Duration, Duration)>,
    keep_alive_while_idle: bool,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("keep_alive", &self.keep_alive)
            .field("keep_alive_while_idle", &self.keep_alive_while_idle)
            .finish()
    }
}

impl ConnectOptions {
    /// No auth, no TLS, no timeouts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Authenticates as `user` with `password`.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// TLS for the endpoints; endpoints without a scheme become `https://`, `http://` ones are
    /// refused.
    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Limit on establishing a connection.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// Limit on each request (until its response, or a stream's first response headers).
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// HTTP/2 keep-alive pings every `interval`, the connection dropped when one is unanswered
    /// for `timeout`.
    pub fn with_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = Some((interval, timeout));
        self
    }

    /// Whether the keep-alive pings go on while no request is open.
    pub fn with_keep_alive_while_idle(mut self, enabled: bool) -> Self {
        self.keep_alive_while_idle = enabled;
        self
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint, Error> {
        let invalid = |reason: String| Error::InvalidEndpoint {
            endpoint: url.to_string(),
            reason,
        };
        let (full, tls) = if url.starts_with("http://") {
            if self.tls.is_some() {
                return Err(invalid("TLS settings need an https:// endpoint".into()));
            }
            (url.to_string(), None)
        } else if url.starts_with("https://") {
            (url.to_string(), Some(self.tls.clone().unwrap_or_default()))
        } else if let Some(tls) = &self.tls {
            (format!("https://{url}"), Some(tls.clone()))
        } else {
            (format!("http://{url}"), None)
        };
        let transport = |e: tonic::transport::Error| invalid(format!("{e}{}", source_chain(&e)));
        let mut ep = Endpoint::from_shared(full).map_err(transport)?;
        if let Some(tls) = tls {
            ep = ep.tls_config(tls).map_err(transport)?;
        }
        if let Some((interval, timeout)) = self.keep_alive {
            ep = ep
                .keep_alive_while_idle(self.keep_alive_while_idle)
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout);
        }
        if let Some(t) = self.timeout {
            ep = ep.timeout(t);
        }
        if let Some(t) = self.connect_timeout {
            ep = ep.connect_timeout(t);
        }
        Ok(ep)
    }
}

type Token = Arc<RwLock<Option<AsciiMetadataValue>>>;

/// Adds the auth token, when there is one, to every request.
#[derive(Clone, Debug)]
struct TokenInterceptor(Token);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let token = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(t) = token {
            req.metadata_mut().insert(TOKEN_HEADER, t);
        }
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, TokenInterceptor>;

/// A connection to an etcd cluster. Cheap to clone: clones share the connections and the token.
#[derive(Clone)]
pub struct Client {
    kv: KvClient<Authed>,
    watch: WatchClient<Authed>,
    lease: LeaseClient<Authed>,
    auth: AuthClient<Channel>,
    token: Token,
    user: Option<Arc<(String, String)>>,
    /// One re-authentication at a time.
    refresh: Arc<tokio::sync::Mutex<()>>,
    /// Keeps the balanced channel's endpoint list open.
    _endpoints: Arc<tokio::sync::mpsc::Sender<Change<tonic::codegen::http::Uri, Endpoint>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `endpoints` (`http://host:port`, `https://host:port` or `host:port`),
    /// balancing requests over them; authenticates first when `options` has a user.
    pub async fn connect(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        options: Option<ConnectOptions>,
    ) -> Result<Client, Error> {
        let options = options.unwrap_or_default();
        let endpoints = endpoints
            .into_iter()
            .map(|e| options.endpoint(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let (channel, tx) = Channel::balance_channel(64);
        for ep in endpoints {
            tx.send(Change::Insert(ep.uri().clone(), ep))
                .await
                .map_err(|_| Error::StreamClosed("endpoint list"))?;
        }
        let token: Token = Arc::new(RwLock::new(None));
        let authed = InterceptedService::new(channel.clone(), TokenInterceptor(token.clone()));
        let client = Client {
            kv: KvClient::new(authed.clone()),
            watch: WatchClient::new(authed.clone()),
            lease: LeaseClient::new(authed),
            auth: AuthClient::new(channel),
            token,
            user: options.user.map(Arc::new),
            refresh: Arc::new(tokio::sync::Mutex::new(())),
            _endpoints: Arc::new(tx),
        };
        client.authenticate().await?;
        Ok(client)
    }

    /// Gets a fresh token for the user, if there is one.
    async fn authenticate(&self) -> Result<(), Error> {
        let Some(user) = &self.user else {
            return Ok(());
        };
        let resp = self
            .auth
            .clone()
            .authenticate(AuthenticateRequest {
                name: user.0.clone(),
                password: user.1.clone(),
            })
            .await?
            .into_inner();
        let token = AsciiMetadataValue::try_from(resp.token).map_err(|_| Error::BadToken)?;
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = Some(token);
        Ok(())
    }

    fn current_token(&self) -> Option<AsciiMetadataValue> {
        self.token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `call`; when etcd refuses its token, re-authenticates (unless a concurrent call
    /// already replaced that token) and runs it once more.
    async fn retry<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let sent_with = self.current_token();
        match call().await {
            Err(s) if self.user.is_some() && is_invalid_auth_token(&s) => {
                {
                    let _one = self.refresh.lock().await;
                    if self.current_token() == sent_with {
                        self.authenticate().await?;
                    }
                }
                Ok(call().await?.into_inner())
            }
            r => Ok(r?.into_inner()),
        }
    }

    /// Reads `key` (or the keys `options` select).
    pub async fn get(
        &mut self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<RangeResponse, Error> {
        let req = options.unwrap_or_default().request(key.into());
        let kv = &self.kv;
        self.retry(|| {
            let (mut c, r) = (kv.clone(), req.clone());
            async move { c.range(r).await }
        })
        .await
    }

    /// Writes `key = value`.
    pub async fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse, Error> {
        let req = options
            .unwrap_or_default()
            .request(key.into(), value.into());
        let kv = &self.kv;
        self.retry(|| {
            let (mut c, r) = (kv.clone(), req.clone());
            async move { c.put(r).await }
        })
        .await
    }

    /// Deletes `key` (or the keys `options` select).
    pub async fn delete(
        &mut self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteRangeResponse, Error> {
        let req = options.unwrap_or_default().request(key.into());
        let kv = &self.kv;
        self.retry(|| {
            let (mut c, r) = (kv.clone(), req.clone());
            async move { c.delete_range(r).await }
        })
        .await
    }

    /// Runs a transaction.
    pub async fn txn(&mut self, txn: Txn) -> Result<TxnResponse, Error> {
        let kv = &self.kv;
        self.retry(|| {
            let (mut c, r) = (kv.clone(), txn.clone());
            async move { c.txn(r).await }
        })
        .await
    }

    /// Compacts the history up to `revision`.
    pub async fn compact(&mut self, revision: i64) -> Result<CompactionResponse, Error> {
        let req = CompactionRequest {
            revision,
            physical: false,
        };
        let kv = &self.kv;
        self.retry(|| {
            let mut c = kv.clone();
            async move { c.compact(req).await }
        })
        .await
    }

    /// Grants a lease of `ttl` seconds (etcd picks the id).
    pub async fn lease_grant(&mut self, ttl: i64) -> Result<LeaseGrantResponse, Error> {
        let req = LeaseGrantRequest { ttl, id: 0 };
        let lease = &self.lease;
        self.retry(|| {
            let mut c = lease.clone();
            async move { c.lease_grant(req).await }
        })
        .await
    }

    /// Revokes lease `id`, deleting its keys.
    pub async fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        let req = LeaseRevokeRequest { id };
        let lease = &self.lease;
        self.retry(|| {
            let mut c = lease.clone();
            async move { c.lease_revoke(req).await }
        })
        .await
    }

    /// Opens a keep-alive stream for lease `id` and sends its first keep-alive: the first
    /// [`LeaseKeepAliveStream::message`] answers it, [`LeaseKeeper::keep_alive`] sends more.
    pub async fn lease_keep_alive(
        &mut self,
        id: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), Error> {
        let lease = &self.lease;
        let (tx, responses) = self
            .retry(|| {
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                let first = tx.try_send(LeaseKeepAliveRequest { id });
                let mut lease = lease.clone();
                async move {
                    first.map_err(|_| Status::internal("keep-alive queue full"))?;
                    Ok(lease
                        .lease_keep_alive(receiver_stream(rx))
                        .await?
                        .map(|s| (tx, s)))
                }
            })
            .await?;
        Ok((LeaseKeeper { id, tx }, LeaseKeepAliveStream { responses }))
    }

    /// Opens a watch of `key` (or the keys `options` select). The stream's first response
    /// confirms the watch (`created`); later ones carry events, progress notifications, or the
    /// cancellation (`canceled`, `compact_revision` when the start revision was compacted).
    pub async fn watch(
        &mut self,
        key: impl Into<Vec<u8>>,
        options: Option<WatchOptions>,
    ) -> Result<WatchStream, Error> {
        let create = options.unwrap_or_default().request(key.into());
        let watch = &self.watch;
        let (requests, responses) = self
            .retry(|| {
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                let first = tx.try_send(WatchRequest {
                    request_union: Some(
                        pb::etcdserverpb::watch_request::RequestUnion::CreateRequest(
                            create.clone(),
                        ),
                    ),
                });
                let mut watch = watch.clone();
                async move {
                    first.map_err(|_| Status::internal("watch queue full"))?;
                    Ok(watch.watch(receiver_stream(rx)).await?.map(|s| (tx, s)))
                }
            })
            .await?;
        Ok(WatchStream {
            _requests: requests,
            responses,
        })
    }
}

/// The items of `rx` as a stream, for a streaming request.
fn receiver_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

/// The responses of a watch. Dropping it ends the watch (etcd ends a watch stream whose
/// request side closes, so the request side lives as long as this).
#[derive(Debug)]
pub struct WatchStream {
    _requests: tokio::sync::mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

impl WatchStream {
    /// The next response; `None` when etcd ended the stream.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, Error> {
        Ok(self.responses.message().await?)
    }
}

/// Sends keep-alives for one lease.
#[derive(Debug, Clone)]
pub struct LeaseKeeper {
    id: i64,
    tx: tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
}

impl LeaseKeeper {
    /// The lease.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Sends one keep-alive; its answer comes on the [`LeaseKeepAliveStream`].
    pub async fn keep_alive(&mut self) -> Result<(), Error> {
        self.tx
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Error::StreamClosed("lease keep-alive"))
    }
}

/// The answers to a lease's keep-alives.
#[derive(Debug)]
pub struct LeaseKeepAliveStream {
    responses: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl LeaseKeepAliveStream {
    /// The next answer (its `ttl` is the lease's new TTL; 0 once the lease has expired or was
    /// revoked); `None` when etcd ended the stream.
    pub async fn message(&mut self) -> Result<Option<LeaseKeepAliveResponse>, Error> {
        Ok(self.responses.message().await?)
    }
}

/// The end of the range of keys starting with `prefix`: `prefix` with its last byte below 0xff
/// incremented and what follows dropped; `\0` (no end) when there is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `(key, range_end)` of a key or, with `prefix`, of every key starting with it (every key for
/// an empty prefix).
fn key_range(key: Vec<u8>, prefix: bool) -> (Vec<u8>, Vec<u8>) {
    match (prefix, key.is_empty()) {
        (false, _) => (key, Vec::new()),
        (true, true) => (vec![0], vec![0]),
        (true, false) => {
            let end = prefix_end(&key);
            (key, end)
        }
    }
}

/// Options of [`Client::get`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GetOptions {
    prefix: bool,
}

impl GetOptions {
    /// The key alone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key starting with the key.
    pub fn with_prefix(mut self) -> Self {
        self.prefix = true;
        self
    }

    fn request(self, key: Vec<u8>) -> RangeRequest {
        let (key, range_end) = key_range(key, self.prefix);
        RangeRequest {
            key,
            range_end,
            ..RangeRequest::default()
        }
    }
}

/// Options of [`Client::put`] and [`TxnOp::put`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PutOptions {
    lease: i64,
}

impl PutOptions {
    /// No lease.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds the key to lease `id` (it is deleted when the lease ends).
    pub fn with_lease(mut self, id: i64) -> Self {
        self.lease = id;
        self
    }

    fn request(self, key: Vec<u8>, value: Vec<u8>) -> PutRequest {
        PutRequest {
            key,
            value,
            lease: self.lease,
            ..PutRequest::default()
        }
    }
}

/// Options of [`Client::delete`] and [`TxnOp::delete`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOptions {
    prefix: bool,
}

impl DeleteOptions {
    /// The key alone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key starting with the key.
    pub fn with_prefix(mut self) -> Self {
        self.prefix = true;
        self
    }

    fn request(self, key: Vec<u8>) -> DeleteRangeRequest {
        let (key, range_end) = key_range(key, self.prefix);
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: false,
        }
    }
}

/// Options of [`Client::watch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchOptions {
    prefix: bool,
    start_revision: i64,
    progress_notify: bool,
    prev_kv: bool,
}

impl WatchOptions {
    /// The key alone, from now on.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key starting with the key.
    pub fn with_prefix(mut self) -> Self {
        self.prefix = true;
        self
    }

    /// Events from revision `rev` on (inclusive).
    pub fn with_start_revision(mut self, rev: i64) -> Self {
        self.start_revision = rev;
        self
    }

    /// Periodic responses without events while nothing changes (their header revision says how
    /// far the watch has got).
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }

    /// Events carry the key's previous value (`prev_kv`).
    pub fn with_prev_key(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    fn request(self, key: Vec<u8>) -> WatchCreateRequest {
        let (key, range_end) = key_range(key, self.prefix);
        WatchCreateRequest {
            key,
            range_end,
            start_revision: self.start_revision,
            progress_notify: self.progress_notify,
            prev_kv: self.prev_kv,
            ..WatchCreateRequest::default()
        }
    }
}

impl Txn {
    /// An empty transaction (it succeeds and does nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds conditions; the transaction succeeds when all hold.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compares);
        self
    }

    /// Adds operations run when it succeeds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations run when it fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
}

impl Compare {
    fn of(
        key: impl Into<Vec<u8>>,
        op: CompareOp,
        target: compare::CompareTarget,
        union: compare::TargetUnion,
    ) -> Self {
        Compare {
            result: op as i32,
            target: target as i32,
            key: key.into(),
            target_union: Some(union),
            range_end: Vec::new(),
        }
    }

    /// Compares the key's version (0: the key does not exist).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::of(
            key,
            op,
            compare::CompareTarget::Version,
            compare::TargetUnion::Version(version),
        )
    }

    /// Compares the key's value.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::of(
            key,
            op,
            compare::CompareTarget::Value,
            compare::TargetUnion::Value(value.into()),
        )
    }

    /// Compares the key's last modification revision.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::of(
            key,
            op,
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(revision),
        )
    }

    /// Compares the key's creation revision.
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::of(
            key,
            op,
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(revision),
        )
    }

    /// Compares the lease the key is bound to (0: none).
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Self::of(
            key,
            op,
            compare::CompareTarget::Lease,
            compare::TargetUnion::Lease(lease),
        )
    }
}

impl TxnOp {
    /// Writes `key = value`.
    pub fn put(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Self {
        let req = options
            .unwrap_or_default()
            .request(key.into(), value.into());
        TxnOp {
            request: Some(request_op::Request::RequestPut(req)),
        }
    }

    /// Reads `key` (or the keys `options` select).
    pub fn get(key: impl Into<Vec<u8>>, options: Option<GetOptions>) -> Self {
        let req = options.unwrap_or_default().request(key.into());
        TxnOp {
            request: Some(request_op::Request::RequestRange(req)),
        }
    }

    /// Deletes `key` (or the keys `options` select).
    pub fn delete(key: impl Into<Vec<u8>>, options: Option<DeleteOptions>) -> Self {
        let req = options.unwrap_or_default().request(key.into());
        TxnOp {
            request: Some(request_op::Request::RequestDeleteRange(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(
            prefix_end(b"/coreos.com/network/subnets/"),
            b"/coreos.com/network/subnets0"
        );
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"a\xfe\xff\xff"), b"a\xff");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(key_range(Vec::new(), true), (vec![0], vec![0]));
        assert_eq!(key_range(b"k".to_vec(), false), (b"k".to_vec(), Vec::new()));
    }

    #[test]
    fn txn_builders_fill_etcds_fields() {
        let txn = Txn::new()
            .when([Compare::version("k", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("k", "v", Some(PutOptions::new().with_lease(7)))]);
        assert_eq!(txn.compare[0].target(), compare::CompareTarget::Version);
        assert_eq!(txn.compare[0].result(), CompareOp::Equal);
        assert_eq!(
            txn.compare[0].target_union,
            Some(compare::TargetUnion::Version(0))
        );
        let Some(request_op::Request::RequestPut(put)) = &txn.success[0].request else {
            panic!("not a put: {txn:?}");
        };
        assert_eq!(
            (&put.key[..], &put.value[..], put.lease),
            (&b"k"[..], &b"v"[..], 7)
        );
    }

    #[test]
    fn tls_settings_need_https() {
        let opts = ConnectOptions::new().with_tls(TlsOptions::new());
        assert!(matches!(
            opts.endpoint("http://127.0.0.1:2379"),
            Err(Error::InvalidEndpoint { .. })
        ));
        assert!(opts.endpoint("127.0.0.1:2379").is_ok());
        assert!(ConnectOptions::new().endpoint("127.0.0.1:2379").is_ok());
    }
}
