//! A fake Kubernetes API server behind a `tower-test` mock service: it keeps
//! objects in memory, answers GET, LIST (label selectors), server-side apply,
//! merge and JSON patches, POST and DELETE the way the API server does for
//! the calls the operator makes, and records every call in order.
//!
//! Calls are recorded as `METHOD resource[/name][/subresource]`, e.g.
//! `GET secrets/chat-jwt`, `APPLY deployments/chat-monolith`,
//! `LIST configmaps`, `PATCH chatclusters/chat/status`,
//! `EVENT Warning MigrationFailed`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// The fake API server's state, shared with the test.
#[derive(Clone, Default)]
pub struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    calls: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<(String, Value)>>>,
}

/// Where an object lives: `(prefix, resource, name, subresource)`, with
/// `prefix` = `/api/v1/namespaces/ns` or `/apis/group/version/namespaces/ns`.
struct Target {
    collection: String,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse(path: &str) -> Target {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // api/v1/namespaces/ns/<resource>/... or apis/g/v/namespaces/ns/<resource>/...
    let at = parts
        .iter()
        .position(|p| *p == "namespaces")
        .expect("namespaced paths only");
    let resource = parts[at + 2].to_owned();
    Target {
        collection: parts[..at + 3].join("/"),
        resource,
        name: parts.get(at + 3).map(|s| (*s).to_owned()),
        subresource: parts.get(at + 4).map(|s| (*s).to_owned()),
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code
    })
}

fn selector_matches(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').expect("equality selectors only");
        labels[key].as_str() == Some(value)
    })
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query()?).ok()?;
    pairs.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl FakeApi {
    /// A client talking to a new fake API server.
    pub fn start() -> (FakeApi, Client) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (code, body) = server.handle(request).await;
                respond.send_response(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        (api, Client::new(service, "default"))
    }

    /// Puts `object` into the store (as if created earlier).
    pub fn insert(&self, object: Value) {
        let key = Self::key_of(&object);
        self.objects.lock().unwrap().insert(key, object);
    }

    /// Changes a stored object in place.
    pub fn update(&self, resource: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut objects = self.objects.lock().unwrap();
        let (_, object) = objects
            .iter_mut()
            .find(|(key, _)| key.ends_with(&format!("/{resource}/{name}")))
            .unwrap_or_else(|| panic!("no {resource}/{name} in the fake API"));
        change(object);
    }

    /// A stored object.
    pub fn get(&self, resource: &str, name: &str) -> Option<Value> {
        self.objects
            .lock()
            .unwrap()
            .iter()
            .find(|(key, _)| key.ends_with(&format!("/{resource}/{name}")))
            .map(|(_, v)| v.clone())
    }

    /// Every call so far, and forget them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// Only the calls that change something (apply, patch, post, delete, events).
    pub fn take_writes(&self) -> Vec<String> {
        self.take_calls()
            .into_iter()
            .filter(|c| !c.starts_with("GET ") && !c.starts_with("LIST "))
            .collect()
    }

    /// The body of the last call recorded as `call`.
    pub fn last_body(&self, call: &str) -> Option<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(c, _)| c == call)
            .map(|(_, b)| b.clone())
    }

    fn key_of(object: &Value) -> String {
        let api_version = object["apiVersion"].as_str().unwrap();
        let kind = object["kind"].as_str().unwrap();
        let namespace = object["metadata"]["namespace"].as_str().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap();
        let prefix = if api_version.contains('/') {
            format!("apis/{api_version}")
        } else {
            format!("api/{api_version}")
        };
        let resource = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            api_version.split_once('/').map_or("", |(g, _)| g),
            api_version.rsplit('/').next().unwrap(),
            kind,
        ))
        .plural;
        format!("{prefix}/namespaces/{namespace}/{resource}/{name}")
    }

    fn record(&self, call: String, body: Option<Value>) {
        if let Some(body) = body {
            self.bodies.lock().unwrap().push((call.clone(), body));
        }
        self.calls.lock().unwrap().push(call);
    }

    async fn handle(&self, request: Request<Body>) -> (StatusCode, Value) {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let content_type = request
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let target = parse(uri.path());
        let resource = target.resource.clone();
        let mut objects = self.objects.lock().unwrap();

        match (method, target.name.clone()) {
            (Method::GET, Some(name)) => {
                self.record(format!("GET {resource}/{name}"), None);
                let key = format!("{}/{name}", target.collection);
                match objects.get(&key) {
                    Some(object) => (StatusCode::OK, object.clone()),
                    None => (StatusCode::NOT_FOUND, status(404, "NotFound")),
                }
            }
            (Method::GET, None) => {
                self.record(format!("LIST {resource}"), None);
                let selector = query(&uri, "labelSelector").unwrap_or_default();
                let prefix = format!("{}/", target.collection);
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|(key, _)| key.starts_with(&prefix))
                    .filter(|(_, o)| selector_matches(&selector, &o["metadata"]["labels"]))
                    .map(|(_, o)| {
                        json!({
                            "apiVersion": "meta.k8s.io/v1",
                            "kind": "PartialObjectMetadata",
                            "metadata": o["metadata"].clone()
                        })
                    })
                    .collect();
                (
                    StatusCode::OK,
                    json!({
                        "apiVersion": "meta.k8s.io/v1",
                        "kind": "PartialObjectMetadataList",
                        "metadata": {"resourceVersion": "1"},
                        "items": items
                    }),
                )
            }
            (Method::POST, None) => {
                let body = body.expect("a JSON body");
                let call = if resource == "events" {
                    format!(
                        "EVENT {} {}",
                        body["type"].as_str().unwrap_or_default(),
                        body["reason"].as_str().unwrap_or_default()
                    )
                } else {
                    format!("POST {resource}")
                };
                self.record(call, Some(body.clone()));
                (StatusCode::CREATED, body)
            }
            (Method::PATCH, Some(name)) if resource == "events" => {
                let body = body.expect("a JSON body");
                let call = format!(
                    "EVENT {} {} (again)",
                    body["type"].as_str().unwrap_or_default(),
                    body["reason"].as_str().unwrap_or_default()
                );
                self.record(call, Some(body.clone()));
                let _ = name;
                (StatusCode::OK, body)
            }
            (Method::PATCH, Some(name)) => {
                let body = body.expect("a JSON body");
                let key = format!("{}/{name}", target.collection);
                let sub = target
                    .subresource
                    .as_ref()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default();
                if content_type.starts_with("application/apply-patch") {
                    self.record(format!("APPLY {resource}/{name}{sub}"), Some(body.clone()));
                    let mut object = body;
                    if let Some(existing) = objects.get(&key) {
                        if !existing["status"].is_null() {
                            object["status"] = existing["status"].clone();
                        }
                        let generation = existing["metadata"]["generation"].as_i64().unwrap_or(1);
                        let changed = existing.get("spec") != object.get("spec");
                        object["metadata"]["generation"] =
                            json!(if changed { generation + 1 } else { generation });
                    } else {
                        object["metadata"]["generation"] = json!(1);
                    }
                    objects.insert(key, object.clone());
                    return (StatusCode::OK, object);
                }
                self.record(format!("PATCH {resource}/{name}{sub}"), Some(body.clone()));
                let Some(object) = objects.get_mut(&key) else {
                    return (StatusCode::NOT_FOUND, status(404, "NotFound"));
                };
                if content_type.starts_with("application/json-patch") {
                    let patch: json_patch::Patch = serde_json::from_value(body).unwrap();
                    // The API server reads an absent field as null (`test` ops).
                    let metadata = object["metadata"].as_object_mut().unwrap();
                    metadata.entry("finalizers").or_insert(Value::Null);
                    let result = json_patch::patch(object, &patch);
                    let metadata = object["metadata"].as_object_mut().unwrap();
                    if metadata.get("finalizers") == Some(&Value::Null) {
                        metadata.remove("finalizers");
                    }
                    if result.is_err() {
                        return (StatusCode::UNPROCESSABLE_ENTITY, status(422, "Invalid"));
                    }
                } else {
                    json_patch::merge(object, &body);
                }
                (StatusCode::OK, object.clone())
            }
            (Method::DELETE, Some(name)) => {
                self.record(format!("DELETE {resource}/{name}"), None);
                let key = format!("{}/{name}", target.collection);
                match objects.remove(&key) {
                    Some(object) => (StatusCode::OK, object),
                    None => (StatusCode::NOT_FOUND, status(404, "NotFound")),
                }
            }
            (method, name) => panic!("unexpected call {method} {resource}/{name:?}"),
        }
    }
}
