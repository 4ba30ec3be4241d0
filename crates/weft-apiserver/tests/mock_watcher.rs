//! How kube-runtime's watcher meets a slow initial list, a dropped watch connection and a 410,
//! with kube's own mock service (`tower_test::mock::pair`): the test plays the apiserver one
//! request at a time. The same pattern tests the agent's watchers; this file is its example.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{pin::pin, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    runtime::{reflector, watcher},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock;

type MockBody = UnsyncBoxBody<Bytes, std::io::Error>;
type Handle = mock::Handle<Request<kube::client::Body>, Response<MockBody>>;

fn body(bytes: Vec<u8>) -> MockBody {
    http_body_util::Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn config_map(name: &str, rv: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string()}})
}

fn list(items: &[Value], rv: u64) -> Response<MockBody> {
    let list = json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": rv.to_string()}, "items": items});
    Response::new(body(serde_json::to_vec(&list).unwrap()))
}

fn event_line(type_: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

/// A watch response whose body the test feeds (and can break) while the watcher reads it.
fn streaming_watch() -> (
    Response<MockBody>,
    mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (Response::new(StreamBody::new(stream).boxed_unsync()), tx)
}

/// The next request the watcher makes: its query parameters.
async fn next_request(
    handle: &mut std::pin::Pin<&mut Handle>,
) -> (
    Vec<(String, String)>,
    mock::SendResponse<Response<MockBody>>,
) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(20), handle.next_request())
        .await
        .expect("a request in time")
        .expect("the client is still there");
    assert_eq!(
        request.uri().path(),
        "/api/v1/namespaces/default/configmaps"
    );
    let query = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    (query, send)
}

fn param<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn watcher_survives_a_slow_list_a_dropped_connection_and_a_410() {
    let (service, handle) = mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let client = Client::new(service, "default");
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let (reader, writer) = reflector::store::<ConfigMap>();
    let (events_tx, mut events) = mpsc::unbounded_channel::<String>();
    let watching = tokio::spawn(
        reflector(writer, watcher(api, watcher::Config::default())).for_each(move |event| {
            let text = match event {
                Ok(event) => event.to_string(),
                Err(error) => format!("error: {error}"),
            };
            let _ = events_tx.send(text);
            async {}
        }),
    );
    let mut handle = pin!(handle);
    let next_event = async |events: &mut mpsc::UnboundedReceiver<String>| {
        tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("an event in time")
            .expect("watcher running")
    };

    // 1. The initial list, paged like client-go, answered slowly: nothing comes out until it is.
    let (query, send) = next_request(&mut handle).await;
    assert_eq!(param(&query, "limit"), Some("500"));
    assert_eq!(param(&query, "watch"), None);
    // The watcher announces the (re)start, then waits for the list, however long it takes.
    assert_eq!(next_event(&mut events).await, "Init");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err(),
        "nothing more before the list"
    );
    assert!(reader.state().is_empty());
    send.send_response(list(&[config_map("a", 5), config_map("b", 6)], 10));
    for want in ["InitApply(a)", "InitApply(b)", "InitDone"] {
        assert_eq!(next_event(&mut events).await, want);
    }
    assert_eq!(reader.state().len(), 2);

    // 2. The watch from the list's resourceVersion: one event, then the connection drops.
    let (query, send) = next_request(&mut handle).await;
    assert_eq!(param(&query, "watch"), Some("true"));
    assert_eq!(param(&query, "resourceVersion"), Some("10"));
    assert_eq!(param(&query, "allowWatchBookmarks"), Some("true"));
    let (response, feed) = streaming_watch();
    send.send_response(response);
    feed.send(Ok(Frame::data(event_line("ADDED", config_map("c", 11)))))
        .unwrap();
    assert_eq!(next_event(&mut events).await, "Apply(c)");
    feed.send(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset",
    )))
    .unwrap();
    let error = next_event(&mut events).await;
    assert!(error.starts_with("error:"), "{error}");

    // 3. It watches again from the last resourceVersion it saw; that one is gone: 410.
    let (query, send) = next_request(&mut handle).await;
    assert_eq!(param(&query, "watch"), Some("true"));
    assert_eq!(param(&query, "resourceVersion"), Some("11"));
    let gone = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 11 (40)", "reason": "Expired", "code": 410});
    send.send_response(Response::new(body(event_line("ERROR", gone).to_vec())));
    let error = next_event(&mut events).await;
    assert!(error.contains("too old resource version"), "{error}");

    // 4. So it lists again; the store takes the new list as the truth (b went meanwhile).
    let (query, send) = next_request(&mut handle).await;
    assert_eq!(param(&query, "watch"), None);
    send.send_response(list(
        &[config_map("a", 5), config_map("c", 11), config_map("d", 39)],
        40,
    ));
    for want in [
        "Init",
        "InitApply(a)",
        "InitApply(c)",
        "InitApply(d)",
        "InitDone",
    ] {
        assert_eq!(next_event(&mut events).await, want);
    }
    let mut names: Vec<String> = reader.state().iter().map(|m| m.name_any()).collect();
    names.sort();
    assert_eq!(names, ["a", "c", "d"]);

    // 5. And watches from the new list's resourceVersion.
    let (query, _send) = next_request(&mut handle).await;
    assert_eq!(param(&query, "resourceVersion"), Some("40"));
    watching.abort();
}
