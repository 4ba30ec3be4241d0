//! The public handle: building the server, its tower service (in process, as kube-rs's
//! `Client::new` takes it) and serving it over plain HTTP/1.1.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited, combinators::UnsyncBoxBody};
use tokio::net::TcpListener;

use crate::{
    admission::AdmissionHook,
    config::{ConfigError, ServerConfig},
    error::ApiError,
    http::{error_response, handle},
    state::{GraceTimer, State},
};

/// The response body of every request (a watch streams it).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) struct Inner {
    pub config: Arc<ServerConfig>,
    state: Mutex<State>,
}

impl Inner {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the state was locked leaves it as the last completed write left it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a write, then starts the timers it asked for (graceful Pod deletions).
    pub fn mutate<R>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, timers) = {
            let mut state = self.lock();
            let result = f(&mut state);
            (result, std::mem::take(&mut state.timers))
        };
        for timer in timers {
            self.start_timer(timer);
        }
        result
    }

    fn start_timer(self: &Arc<Self>, timer: GraceTimer) {
        let weak = Arc::downgrade(self);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(pod = %timer.name, "no tokio runtime: the grace period will not end by itself");
            return;
        };
        runtime.spawn(async move {
            // The deletion timestamp has whole seconds; waiting a little longer than the grace
            // period makes sure it has passed.
            tokio::time::sleep(timer.after + Duration::from_millis(50)).await;
            if let Some(inner) = weak.upgrade()
                && let Err(e) = inner.mutate(|state| state.expire_grace(&timer))
            {
                tracing::warn!(pod = %timer.name, error = %e, "ending a grace period");
            }
        });
    }
}

/// A Kubernetes-compatible API server kept in memory. Cloning gives another handle to the
/// same server.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// A server with the built-in resources and the namespaces `default`, `kube-system`,
    /// `kube-public` and `kube-node-lease`.
    pub fn new(config: ServerConfig) -> Result<ApiServer, ConfigError> {
        config.validate()?;
        let config = Arc::new(config);
        let state = State::new(config.clone()).map_err(|e| ConfigError::Startup(e.message))?;
        Ok(ApiServer {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
            }),
        })
    }

    /// Adds a check or mutation run on every create, update, patch and delete, after the
    /// server's own defaulting and validation, in the order hooks were added.
    pub fn add_admission_hook(&self, hook: impl AdmissionHook) {
        self.inner.lock().add_hook(Arc::new(hook));
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The cluster-wide resourceVersion of the last change.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }

    /// Objects stored, all resources together.
    pub fn object_count(&self) -> usize {
        self.inner.lock().object_count()
    }

    /// Open watches on a resource (`group` "" for the core group), for tests and diagnostics.
    pub fn watcher_count(&self, group: &str, resource: &str) -> usize {
        self.inner.lock().watcher_count(group, resource)
    }

    /// The server as a tower service: `kube::Client::new(server.router(), "default")` talks
    /// to it in process, without a socket.
    pub fn router(&self) -> ApiService {
        ApiService {
            inner: self.inner.clone(),
        }
    }

    /// Serves plain HTTP/1.1 (no TLS, no authentication) on `listener` until `shutdown`
    /// completes; then stops accepting, lets requests in flight finish and ends open watches
    /// after a second.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let service = hyper_util::service::TowerToHyperService::new(self.router());
                    let mut closing = closing_rx.clone();
                    connections.spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
                        tokio::pin!(connection);
                        tokio::select! {
                            result = connection.as_mut() => {
                                if let Err(e) = result {
                                    tracing::debug!(%peer, error = %e, "connection");
                                }
                            }
                            _ = closing.changed() => {
                                connection.as_mut().graceful_shutdown();
                                let _ = connection.await;
                            }
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        let _ = closing_tx.send(true);
        let drained = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(1), drained)
            .await
            .is_err()
        {
            connections.shutdown().await;
        }
        Ok(())
    }
}

/// The tower service of an [`ApiServer`]; accepts any request body type.
#[derive(Clone)]
pub struct ApiService {
    inner: Arc<Inner>,
}

impl<B> tower::Service<Request<B>> for ApiService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = match Limited::new(body, inner.config.max_body_bytes)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    let error = ApiError::new(
                        413,
                        "RequestEntityTooLarge",
                        format!("reading the request body: {e}"),
                    );
                    return Ok(error_response(&error));
                }
            };
            Ok(handle(inner, parts.method, parts.uri, parts.headers, body).await)
        })
    }
}
