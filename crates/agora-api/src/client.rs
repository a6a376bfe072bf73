//! A small blocking client for Agora's (and any OpenAI-compatible) HTTP API, used by
//! `agora chat` and `agora bench`.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::Value;

/// Why a call failed, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not reach {url}: {why} (is `agora node` running there?)")]
    Connect { url: String, why: String },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} sent something unexpected: {why}")]
    Protocol { url: String, why: String },
}

/// What a streamed completion ended with.
#[derive(Debug, Default, Clone)]
pub struct StreamEnd {
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    pub seed: Option<u64>,
    /// Every `data:` JSON object received, in order (for tools that want more than text).
    pub events: Vec<Value>,
}

/// Blocking HTTP client bound to one base URL (e.g. `http://127.0.0.1:8080`).
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    pub fn new(base: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        Self {
            base: base.trim_end_matches('/').to_string(),
            agent,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path`, expecting JSON and a 2xx status.
    pub fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let url = self.url(path);
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                why: e.to_string(),
            })?;
        read_json(&url, resp)
    }

    /// GET `path` as text (e.g. `/metrics`), expecting a 2xx status.
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = self.url(path);
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                why: e.to_string(),
            })?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp));
        }
        resp.into_body()
            .read_to_string()
            .map_err(|e| ClientError::Protocol {
                url,
                why: e.to_string(),
            })
    }

    /// POST a JSON body, expecting JSON and a 2xx status.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let url = self.url(path);
        let resp = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string())
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                why: e.to_string(),
            })?;
        read_json(&url, resp)
    }

    /// POST a streaming request and call `on_text` with each piece of text as it arrives.
    pub fn stream(
        &self,
        path: &str,
        body: &Value,
        mut on_text: impl FnMut(&str),
    ) -> Result<StreamEnd, ClientError> {
        let url = self.url(path);
        let resp = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string())
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                why: e.to_string(),
            })?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp));
        }
        let reader = BufReader::new(resp.into_body().into_reader());
        let mut end = StreamEnd::default();
        let proto = |why: String| ClientError::Protocol {
            url: url.clone(),
            why,
        };
        for line in reader.lines() {
            let line = line.map_err(|e| proto(format!("the stream broke: {e}")))?;
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                return Ok(end);
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|e| proto(format!("bad event {data:?}: {e}")))?;
            if let Some(err) = v.get("error") {
                let message = err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_string();
                return Err(ClientError::Status {
                    url: url.clone(),
                    status: 200,
                    message,
                });
            }
            if let Some(seed) = v.get("seed").and_then(Value::as_u64) {
                end.seed = Some(seed);
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                end.usage = Some(u.clone());
            }
            if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
                let text = choice
                    .get("delta")
                    .and_then(|d| d.get("content"))
                    .or_else(|| choice.get("text"))
                    .and_then(Value::as_str);
                if let Some(t) = text.filter(|t| !t.is_empty()) {
                    on_text(t);
                }
                if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                    end.finish_reason = Some(r.to_string());
                }
            }
            end.events.push(v);
        }
        Err(proto("the stream ended without [DONE]".into()))
    }
}

fn status_error(url: &str, resp: ureq::http::Response<ureq::Body>) -> ClientError {
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string().unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or(text);
    ClientError::Status {
        url: url.to_string(),
        status,
        message,
    }
}

fn read_json(url: &str, resp: ureq::http::Response<ureq::Body>) -> Result<Value, ClientError> {
    if !resp.status().is_success() {
        return Err(status_error(url, resp));
    }
    let text = resp
        .into_body()
        .read_to_string()
        .map_err(|e| ClientError::Protocol {
            url: url.into(),
            why: e.to_string(),
        })?;
    serde_json::from_str(&text).map_err(|e| ClientError::Protocol {
        url: url.into(),
        why: e.to_string(),
    })
}
