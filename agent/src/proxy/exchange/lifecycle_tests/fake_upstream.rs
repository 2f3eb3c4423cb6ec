//! A fake Snowflake behind the handlers' `send` seam: it logs every request it receives and
//! answers each path with the answers a test programmed for it, in order, as Snowflake would
//! (an answer can be held back until the test releases it, to stage races).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, header};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tokio::sync::oneshot;

use super::Body;
use crate::proxy::transport::ForwardError;
use crate::sync::lock;

/// A body of these bytes, as the proxy's transport hands bodies around.
pub(super) fn body_of(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// One answer of the fake Snowflake.
pub(super) struct Answer {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    gate: Option<oneshot::Receiver<()>>,
    failure: Option<ForwardError>,
}

impl Answer {
    /// A JSON answer, HTTP 200 (Snowflake answers errors of statements with 200 too).
    pub(super) fn json(v: &Value) -> Answer {
        Answer {
            status: 200,
            content_type: "application/json",
            headers: Vec::new(),
            body: serde_json::to_vec(v).unwrap(),
            gate: None,
            failure: None,
        }
    }

    /// A JSON answer with `status` (the SQL API answers 202 and 422).
    pub(super) fn json_with(status: u16, v: &Value) -> Answer {
        Answer {
            status,
            ..Answer::json(v)
        }
    }

    /// A plain-text answer with `status` (a load balancer's 5xx page).
    pub(super) fn text(status: u16, text: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: text.as_bytes().to_vec(),
            gate: None,
            failure: None,
        }
    }

    /// Raw bytes, HTTP 200 (a result chunk as the storage host serves it).
    pub(super) fn bytes(body: &[u8]) -> Answer {
        Answer {
            status: 200,
            content_type: "application/octet-stream",
            headers: Vec::new(),
            body: body.to_vec(),
            gate: None,
            failure: None,
        }
    }

    /// No answer: the transport could not carry the request, for `failure`.
    pub(super) fn failed(failure: ForwardError) -> Answer {
        Answer {
            failure: Some(failure),
            ..Answer::text(502, "")
        }
    }

    /// The same answer, sent only once `gate` fires (the request is logged at once).
    pub(super) fn after(mut self, gate: oneshot::Receiver<()>) -> Answer {
        self.gate = Some(gate);
        self
    }

    /// The answer's body read as JSON, to build a variant of it.
    pub(super) fn json_value(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The answer's body bytes, as the fake sends them.
    pub(super) fn wire_bytes(&self) -> Vec<u8> {
        self.body.clone()
    }
}

/// One request the fake Snowflake received.
#[derive(Clone, Debug)]
pub(super) struct Received {
    /// `GET`, `POST`, ...
    pub(super) method: String,
    /// The path, without the query.
    pub(super) path: String,
    /// The query string, if any.
    pub(super) query: Option<String>,
    /// The headers as forwarded.
    pub(super) headers: HeaderMap,
    /// The body as forwarded.
    pub(super) body: Vec<u8>,
}

impl Received {
    /// The body read as JSON.
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct State {
    answers: HashMap<String, VecDeque<Answer>>,
    received: Vec<Received>,
}

/// The fake Snowflake: programmed answers by path, and the log of what it received.
#[derive(Clone, Default)]
pub(super) struct FakeSnowflake {
    state: Arc<Mutex<State>>,
}

/// What `send` returns: the upstream's answer (or why the transport carried none), later.
type Sent = Pin<Box<dyn Future<Output = Result<Response<Body>, ForwardError>>>>;

impl FakeSnowflake {
    /// Queues `answer` for the next request to `path` (after those queued before).
    pub(super) fn answer(&self, path: &str, answer: Answer) {
        lock(&self.state)
            .answers
            .entry(path.to_owned())
            .or_default()
            .push_back(answer);
    }

    /// Every request received, in order.
    pub(super) fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// The requests received for `path`, in order.
    pub(super) fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Lets other tasks run until `n` requests to `path` were received.
    pub(super) async fn wait_for(&self, path: &str, n: usize) {
        for _ in 0..10_000 {
            if self.received_at(path).len() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the upstream never received {n} requests to {path}");
    }

    /// The `send` closure a handler forwards one request with.
    pub(super) fn send(&self) -> impl FnOnce(Request<Body>) -> Sent + use<> {
        let state = self.state.clone();
        move |req: Request<Body>| -> Sent {
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes().to_vec();
                let path = parts.uri.path().to_owned();
                let answer = {
                    let mut s = lock(&state);
                    s.received.push(Received {
                        method: parts.method.as_str().to_owned(),
                        path: path.clone(),
                        query: parts.uri.query().map(str::to_owned),
                        headers: parts.headers.clone(),
                        body,
                    });
                    s.answers.get_mut(&path).and_then(VecDeque::pop_front)
                };
                let mut answer =
                    answer.unwrap_or_else(|| Answer::text(404, &format!("no answer for {path}")));
                if let Some(gate) = answer.gate.take() {
                    let _ = gate.await;
                }
                if let Some(failure) = answer.failure.take() {
                    return Err(failure);
                }
                let mut resp = Response::new(body_of(answer.body));
                *resp.status_mut() = http::StatusCode::from_u16(answer.status).unwrap();
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(answer.content_type),
                );
                for (k, v) in answer.headers {
                    resp.headers_mut().insert(k, v.parse().unwrap());
                }
                Ok(resp)
            })
        }
    }
}

/// What the client got back from the proxy.
#[derive(Debug)]
pub(super) struct Got {
    /// The HTTP status.
    pub(super) status: u16,
    /// The `Content-Type`, if any.
    pub(super) content_type: Option<String>,
    /// The body bytes.
    pub(super) body: Vec<u8>,
}

impl Got {
    /// Reads a response whole.
    pub(super) async fn read(resp: Response<Body>) -> Got {
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Got {
            status,
            content_type,
            body,
        }
    }

    /// The body read as JSON.
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}
