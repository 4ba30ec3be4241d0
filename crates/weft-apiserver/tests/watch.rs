//! Watches through kube-rs and kube-runtime: order, resume, 410 and relist, bookmarks,
//! streaming lists, selectors.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;
use weft_apiserver::ServerConfig;

use common::{client, eventually, server, server_with};

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]}}))
    .unwrap()
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

/// The next event, with a generous deadline.
async fn next<S: futures_util::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
}

#[tokio::test]
async fn watcher_sees_creates_updates_and_deletes_in_order() {
    let server = server();
    let pods: Api<Pod> = Api::default_namespaced(client(&server));
    pods.create(&PostParams::default(), &pod("before", json!({})))
        .await
        .unwrap();
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    while !seen.ends_with(&["InitDone".to_string()]) {
        seen.push(next(&mut events).await.unwrap().to_string());
    }
    assert_eq!(seen, ["Init", "InitApply(before)", "InitDone"]);
    pods.create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &pod("b", json!({})))
        .await
        .unwrap();
    pods.delete("a", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    pods.delete("before", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let mut live = Vec::new();
    for _ in 0..5 {
        let event = next(&mut events).await.unwrap();
        live.push(match event {
            watcher::Event::Apply(p) => format!(
                "Apply({},{})",
                p.name_any(),
                p.labels().get("v").cloned().unwrap_or_default()
            ),
            other => other.to_string(),
        });
    }
    assert_eq!(
        live,
        [
            "Apply(a,)",
            "Apply(a,2)",
            "Apply(b,)",
            "Delete(a)",
            "Delete(before)"
        ]
    );
}

#[tokio::test]
async fn reflector_converges_on_the_store() {
    let server = server();
    let c = client(&server);
    let pods: Api<Pod> = Api::all(c.clone());
    let (reader, writer) = reflector::store();
    let running = tokio::spawn(
        reflector(writer, watcher(pods, watcher::Config::default()))
            .default_backoff()
            .for_each(|_| async {}),
    );
    reader.wait_until_ready().await.unwrap();
    let in_default: Api<Pod> = Api::default_namespaced(c.clone());
    for i in 0..20 {
        in_default
            .create(
                &PostParams::default(),
                &pod(&format!("p{i}"), json!({"i": i.to_string()})),
            )
            .await
            .unwrap();
    }
    for i in 0..10 {
        in_default
            .delete(&format!("p{i}"), &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    eventually("the reflector to hold p10..p19", || {
        let mut names: Vec<String> = reader.state().iter().map(|p| p.name_any()).collect();
        names.sort();
        names == (10..20).map(|i| format!("p{i}")).collect::<Vec<_>>()
    })
    .await;
    running.abort();
}

#[tokio::test]
async fn watch_resumes_after_a_resource_version() {
    let server = server();
    let maps: Api<ConfigMap> = Api::default_namespaced(client(&server));
    maps.create(&PostParams::default(), &config_map("old"))
        .await
        .unwrap();
    let list = maps.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    maps.create(&PostParams::default(), &config_map("a"))
        .await
        .unwrap();
    maps.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    maps.delete("old", &DeleteParams::default()).await.unwrap();
    let mut stream = maps
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(match next(&mut stream).await.unwrap() {
            WatchEvent::Added(o) => format!("ADDED {}", o.name_any()),
            WatchEvent::Modified(o) => format!("MODIFIED {}", o.name_any()),
            WatchEvent::Deleted(o) => format!("DELETED {}", o.name_any()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(seen, ["ADDED a", "MODIFIED a", "DELETED old"]);
    // From "0": the current objects as ADDED.
    let mut from_zero = maps
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    match next(&mut from_zero).await.unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "a"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_is_410() {
    let server = server_with(ServerConfig {
        history_size: 3,
        ..ServerConfig::default()
    });
    let maps: Api<ConfigMap> = Api::default_namespaced(client(&server));
    let rv = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    for i in 0..5 {
        maps.create(&PostParams::default(), &config_map(&format!("m{i}")))
            .await
            .unwrap();
    }
    let mut stream = maps
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // a list at that exact resourceVersion is 410 too
    let err = maps
        .list(
            &ListParams::default()
                .at(&rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 410));
}

/// Holds watch requests while closed, so that changes pile up while a watcher is away.
#[derive(Clone)]
struct Gate {
    inner: weft_apiserver::ApiService,
    open: Arc<AtomicBool>,
    watches: Arc<AtomicUsize>,
}

impl<B> tower::Service<http::Request<B>> for Gate
where
    weft_apiserver::ApiService: tower::Service<
            http::Request<B>,
            Response = http::Response<weft_apiserver::Body>,
            Error = std::convert::Infallible,
        >,
    <weft_apiserver::ApiService as tower::Service<http::Request<B>>>::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<weft_apiserver::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let is_watch = request
            .uri()
            .query()
            .is_some_and(|q| q.contains("watch=true"));
        let open = self.open.clone();
        let watches = self.watches.clone();
        let future = tower::Service::call(&mut self.inner, request);
        Box::pin(async move {
            if is_watch {
                watches.fetch_add(1, Ordering::SeqCst);
                while !open.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            future.await
        })
    }
}

#[tokio::test]
async fn watcher_relists_after_410_and_converges() {
    let server = server_with(ServerConfig {
        history_size: 4,
        ..ServerConfig::default()
    });
    let gate = Gate {
        inner: server.router(),
        open: Arc::new(AtomicBool::new(true)),
        watches: Arc::new(AtomicUsize::new(0)),
    };
    let c = kube::Client::new(gate.clone(), "default");
    let maps: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let writer_api: Api<ConfigMap> = Api::default_namespaced(client(&server));
    for i in 0..3 {
        writer_api
            .create(&PostParams::default(), &config_map(&format!("keep{i}")))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store();
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_errors = errors.clone();
    let stream = reflector(writer, watcher(maps, watcher::Config::default().timeout(1)))
        .default_backoff()
        .for_each(move |event| {
            if let Err(e) = event {
                seen_errors.lock().unwrap().push(e.to_string());
            }
            async {}
        });
    let running = tokio::spawn(stream);
    reader.wait_until_ready().await.unwrap();
    // Hold the watcher's next watch (its current one ends after 1 s) while more changes than
    // the history keeps happen.
    gate.open.store(false, Ordering::SeqCst);
    let before = gate.watches.load(Ordering::SeqCst);
    eventually("the watcher to come back for a new watch", || {
        gate.watches.load(Ordering::SeqCst) > before
    })
    .await;
    for i in 0..10 {
        writer_api
            .create(&PostParams::default(), &config_map(&format!("new{i}")))
            .await
            .unwrap();
    }
    writer_api
        .delete("keep0", &DeleteParams::default())
        .await
        .unwrap();
    gate.open.store(true, Ordering::SeqCst);
    eventually("the reflector to converge after the relist", || {
        let mut names: Vec<String> = reader.state().iter().map(|m| m.name_any()).collect();
        names.sort();
        let mut want: Vec<String> = (0..10)
            .map(|i| format!("new{i}"))
            .chain(["keep1".into(), "keep2".into()])
            .collect();
        want.sort();
        names == want
    })
    .await;
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("too old resource version")),
        "the watcher saw the 410: {errors:?}"
    );
    running.abort();
}

#[tokio::test]
async fn bookmarks_arrive_with_the_current_resource_version() {
    let server = server_with(ServerConfig {
        bookmark_interval: Duration::from_millis(100),
        ..ServerConfig::default()
    });
    let c = client(&server);
    let maps: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let rv = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = maps
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    // changes elsewhere move the resourceVersion on; the bookmark follows
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    pods.create(&PostParams::default(), &pod("elsewhere", json!({})))
        .await
        .unwrap();
    let now = server.resource_version();
    loop {
        match next(&mut stream).await.unwrap() {
            WatchEvent::Bookmark(b) => {
                let bookmark: u64 = b.metadata.resource_version.parse().unwrap();
                if bookmark >= now {
                    assert_eq!(b.types.kind, "ConfigMap");
                    break;
                }
            }
            other => panic!("only bookmarks expected, got {other:?}"),
        }
    }
    // without allowWatchBookmarks there are none
    let mut quiet = maps
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    let waited = tokio::time::timeout(Duration::from_millis(500), quiet.next()).await;
    assert!(waited.is_err(), "no event expected: {waited:?}");
}

#[tokio::test]
async fn streaming_list_sends_initial_events_then_the_end_bookmark() {
    let server = server();
    let c = client(&server);
    let maps: Api<ConfigMap> = Api::default_namespaced(c.clone());
    for name in ["a", "b", "c"] {
        maps.create(&PostParams::default(), &config_map(name))
            .await
            .unwrap();
    }
    let params = WatchParams::default().initial_events();
    let mut stream = maps.watch(&params, "0").await.unwrap().boxed();
    let mut added = Vec::new();
    loop {
        match next(&mut stream).await.unwrap() {
            WatchEvent::Added(o) => added.push(o.name_any()),
            WatchEvent::Bookmark(b) => {
                assert_eq!(
                    b.metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .map(String::as_str),
                    Some("true")
                );
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(added, ["a", "b", "c"]);
    // kube-runtime's streaming-list watcher converges too
    let (reader, writer) = reflector::store();
    let running = tokio::spawn(
        reflector(
            writer,
            watcher(maps.clone(), watcher::Config::default().streaming_lists()),
        )
        .for_each(|_| async {}),
    );
    reader.wait_until_ready().await.unwrap();
    assert_eq!(reader.state().len(), 3);
    maps.delete("b", &DeleteParams::default()).await.unwrap();
    eventually("the delete to reach the store", || {
        reader.state().len() == 2
    })
    .await;
    running.abort();
}

#[tokio::test]
async fn selector_watches_see_objects_enter_and_leave() {
    let server = server();
    let pods: Api<Pod> = Api::default_namespaced(client(&server));
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods
        .watch(&WatchParams::default().labels("app=web"), &rv)
        .await
        .unwrap()
        .boxed();
    pods.create(&PostParams::default(), &pod("x", json!({"app": "db"})))
        .await
        .unwrap();
    pods.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await
    .unwrap();
    pods.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"n": "1"}}})),
    )
    .await
    .unwrap();
    pods.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(match next(&mut stream).await.unwrap() {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            _ => "other",
        });
    }
    assert_eq!(seen, ["ADDED", "MODIFIED", "DELETED"]);
}

#[tokio::test]
async fn a_watch_ends_at_its_timeout_and_its_queue_is_released() {
    let server = server();
    let maps: Api<ConfigMap> = Api::default_namespaced(client(&server));
    let stream = maps
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    eventually("the watch to be registered", || {
        server.watcher_count("", "configmaps") == 1
    })
    .await;
    let events: Vec<_> =
        tokio::time::timeout(Duration::from_secs(20), stream.try_collect::<Vec<_>>())
            .await
            .unwrap()
            .unwrap();
    assert!(events.is_empty());
    // the closed watch is dropped on the next change
    maps.create(&PostParams::default(), &config_map("later"))
        .await
        .unwrap();
    assert_eq!(server.watcher_count("", "configmaps"), 0);
}
