//! The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use agora_engine::{ChatMessage, Event, FinishReason, JobSpec, PromptSpec, SamplingParams};

use crate::AppState;
use crate::backend::Started;
use crate::error::ApiError;

/// A JSON body parsed with OpenAI-style errors: 413 over the size limit, 400 naming the
/// offending parameter for malformed JSON or wrong types.
pub struct OpenAiJson<T>(pub T);

impl<S, T> FromRequest<S> for OpenAiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(0);
        // Refuse from the declared length at once, without reading (or waiting for) the body.
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if limit > 0 && declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::too_large(limit));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit)
            } else {
                ApiError::invalid(format!("Could not read the request body: {rej}"), None)
            }
        })?;
        parse_json(&bytes).map(OpenAiJson)
    }
}

/// The body size limit, put in request extensions so errors can name it.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// Parses a request body, naming the parameter at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(format!("We could not parse the JSON body of your request ({e}). The body must be a JSON object."), None)
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    }
    from_value(&value)
}

/// Deserializes `T` from `value`, naming the parameter at fault.
fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|err| {
        let path = err.path().to_string();
        let msg = err.into_inner().to_string();
        // serde reports a missing field at the parent's path; name the field itself.
        let param = match msg.split('`').nth(1) {
            Some(field) if msg.starts_with("missing field") => {
                if path == "." {
                    field.to_string()
                } else {
                    format!("{path}.{field}")
                }
            }
            _ if path == "." => String::new(),
            _ => path,
        };
        match param.is_empty() {
            true => ApiError::invalid(format!("Invalid request: {msg}."), None),
            false => {
                ApiError::invalid(format!("Invalid value for '{param}': {msg}."), Some(&param))
            }
        }
    })
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Sampling and control fields shared by both endpoints.
#[derive(Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    seed: Option<serde_json::Number>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    /// Agora extension for benchmarks: keep generating through end-of-generation tokens.
    #[serde(default)]
    ignore_eos: Option<bool>,
}

/// The fields of `POST /v1/chat/completions` beyond [`Common`].
#[derive(Deserialize)]
struct ChatFields {
    messages: Vec<InMessage>,
}

/// The fields of `POST /v1/completions` beyond [`Common`].
#[derive(Deserialize)]
struct CompletionFields {
    prompt: Value,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    best_of: Option<u32>,
}

/// Largest value a seed the node picks may take: 2^53, so any JSON client can repeat it exactly.
const PICKED_SEED_LIMIT: u64 = 1 << 53;

pub(crate) struct Validated {
    model: String,
    job: JobSpec,
    stream: bool,
    include_usage: bool,
}

fn validate(c: Common, prompt: PromptSpec) -> Result<Validated, ApiError> {
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("temperature must be between 0 and 2, got {temperature}."),
            Some("temperature"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            format!("top_p must be in (0, 1], got {top_p}."),
            Some("top_p"),
        ));
    }
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("Only n = 1 is supported.", Some("n")));
    }
    for (name, v) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(
                format!("{name} is not supported (only 0)."),
                Some(name),
            ));
        }
    }
    if matches!(c.logprobs, Some(Value::Bool(true)) | Some(Value::Number(_))) {
        return Err(ApiError::invalid(
            "logprobs are not supported.",
            Some("logprobs"),
        ));
    }
    if c.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid(
            "Tools and function calling are not supported.",
            Some("tools"),
        ));
    }
    let (max_param, max) = match (c.max_completion_tokens, c.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_tokens = match max {
        None => None,
        Some(m) if m >= 1 && m <= i64::from(u32::MAX) => Some(m as u32),
        Some(m) => {
            return Err(ApiError::invalid(
                format!("{max_param} must be at least 1, got {m}."),
                Some(max_param),
            ));
        }
    };
    let stop = match c.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(v)) => v
            .into_iter()
            .map(|x| match x {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid(
                    "stop must be a string or an array of strings.",
                    Some("stop"),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop must be a string or an array of strings.",
                Some("stop"),
            ));
        }
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid(
            "At most 4 stop sequences are allowed.",
            Some("stop"),
        ));
    }
    if stop.iter().any(|s| s.len() > 1024) {
        return Err(ApiError::invalid(
            "A stop sequence may be at most 1024 bytes.",
            Some("stop"),
        ));
    }
    let seed = match c.seed {
        None => rand::random::<u64>() % PICKED_SEED_LIMIT,
        Some(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u,
            // Negative seeds are accepted (OpenAI allows them) and reinterpreted as 64 bits.
            (None, Some(i)) => i as u64,
            _ => {
                return Err(ApiError::invalid(
                    format!("seed must be an integer, got {n}."),
                    Some("seed"),
                ));
            }
        },
    };
    let model = c.model;
    if model.is_empty() {
        return Err(ApiError::invalid("model must not be empty.", Some("model")));
    }
    Ok(Validated {
        model,
        job: JobSpec {
            prompt,
            params: SamplingParams {
                temperature,
                top_p,
                top_k: c.top_k.unwrap_or(0),
                seed,
            },
            max_tokens,
            stop,
            ignore_eos: c.ignore_eos.unwrap_or(false),
        },
        stream: c.stream.unwrap_or(false),
        include_usage: c.stream_options.unwrap_or_default().include_usage,
    })
}

fn chat_messages(messages: Vec<InMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages must contain at least one message.",
            Some("messages"),
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(ApiError::invalid(
                    format!("Invalid role '{}' in messages[{i}]; expected system, developer, user, assistant or tool.", m.role),
                    Some(&format!("messages[{i}].role")),
                ));
            }
            let param = format!("messages[{i}].content");
            let content = match m.content {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(t)) => t,
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            (Some("text"), None) => {
                                return Err(ApiError::invalid("A text content part needs a string 'text'.", Some(&param)));
                            }
                            (Some(other), _) => {
                                return Err(ApiError::invalid(
                                    format!("Content parts of type '{other}' are not supported; only text."),
                                    Some(&param),
                                ));
                            }
                            (None, _) => return Err(ApiError::invalid("Each content part needs a 'type'.", Some(&param))),
                        }
                    }
                    text
                }
                Some(_) => {
                    return Err(ApiError::invalid("content must be a string or an array of content parts.", Some(&param)));
                }
            };
            let role = if m.role == "developer" { "system".to_string() } else { m.role };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// A request body, parsed and checked: what the handlers run.
#[derive(Debug)]
pub struct ParsedRequest {
    pub model: String,
    pub job: JobSpec,
    pub stream: bool,
    pub include_usage: bool,
}

impl From<Validated> for ParsedRequest {
    fn from(v: Validated) -> Self {
        Self {
            model: v.model,
            job: v.job,
            stream: v.stream,
            include_usage: v.include_usage,
        }
    }
}

/// Parses and checks a `/v1/chat/completions` body (untrusted bytes: errors, never panics).
pub fn parse_chat_request(bytes: &[u8]) -> Result<ParsedRequest, ApiError> {
    chat_request(&parse_json::<Value>(bytes)?).map(Into::into)
}

/// Parses and checks a `/v1/completions` body (untrusted bytes: errors, never panics).
pub fn parse_completion_request(bytes: &[u8]) -> Result<ParsedRequest, ApiError> {
    completion_request(&parse_json::<Value>(bytes)?).map(Into::into)
}

fn chat_request(body: &Value) -> Result<Validated, ApiError> {
    let fields: ChatFields = from_value(body)?;
    let common: Common = from_value(body)?;
    let messages = chat_messages(fields.messages)?;
    validate(common, PromptSpec::Chat(messages))
}

fn completion_request(body: &Value) -> Result<Validated, ApiError> {
    let req: CompletionFields = from_value(body)?;
    let common: Common = from_value(body)?;
    if req.echo == Some(true) {
        return Err(ApiError::invalid("echo is not supported.", Some("echo")));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix is not supported.",
            Some("suffix"),
        ));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid(
            "Only best_of = 1 is supported.",
            Some("best_of"),
        ));
    }
    let prompt = match req.prompt {
        Value::String(p) => p,
        Value::Array(v) if v.len() == 1 => match v.into_iter().next() {
            Some(Value::String(p)) => p,
            _ => {
                return Err(ApiError::invalid(
                    "prompt must be a string.",
                    Some("prompt"),
                ));
            }
        },
        Value::Array(_) => {
            return Err(ApiError::invalid(
                "Exactly one prompt per request is supported.",
                Some("prompt"),
            ));
        }
        _ => {
            return Err(ApiError::invalid(
                "prompt must be a string.",
                Some("prompt"),
            ));
        }
    };
    validate(common, PromptSpec::Text(prompt))
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<OpenAiJson<Value>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let OpenAiJson(body) = body?;
        let v = chat_request(&body)?;
        run(&state, v, Kind::Chat, started).await
    }
    .await;
    finish(&state, "chat", result, started)
}

/// `POST /v1/completions`
pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<OpenAiJson<Value>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let OpenAiJson(body) = body?;
        let v = completion_request(&body)?;
        run(&state, v, Kind::Completion, started).await
    }
    .await;
    finish(&state, "completions", result, started)
}

fn finish(
    state: &AppState,
    route: &'static str,
    result: Result<Response, ApiError>,
    started: Instant,
) -> Response {
    let resp = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    state.metrics.count(route, resp.status().as_u16());
    // A stream records its duration when it ends (StreamState's Drop).
    if resp
        .headers()
        .get("content-type")
        .is_none_or(|v| v != "text/event-stream")
    {
        state
            .metrics
            .duration
            .get_or_create(&crate::metrics::RouteOnly { route })
            .observe(started.elapsed().as_secs_f64());
    }
    resp
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn id(self) -> String {
        let prefix = match self {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        };
        format!(
            "{prefix}-{:016x}{:08x}",
            rand::random::<u64>(),
            rand::random::<u32>()
        )
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

async fn run(
    state: &Arc<AppState>,
    v: Validated,
    kind: Kind,
    started: Instant,
) -> Result<Response, ApiError> {
    let seed = v.job.params.seed;
    let stream = v.stream;
    let include_usage = v.include_usage;
    let s = state.backend.start(v.model, v.job).await?;
    let meta = Meta {
        id: kind.id(),
        created: now(),
        model: s.model.clone(),
        seed,
        kind,
        seed_pending: true,
    };
    if stream {
        Ok(sse(Arc::clone(state), s, meta, include_usage, started).into_response())
    } else {
        collect(state, s, meta, started).await
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    seed: u64,
    kind: Kind,
    /// The seed goes out once, in the first chunk.
    seed_pending: bool,
}

async fn collect(
    state: &AppState,
    mut s: Started,
    meta: Meta,
    started: Instant,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut first = true;
    let mut workers: Vec<String> = Vec::new();
    loop {
        match s.events.recv().await {
            Some(Event::Worker(w)) => workers.push(w),
            Some(Event::Replayed(_)) => {}
            Some(Event::Token(t)) => {
                if first {
                    state.metrics.ttft.observe(started.elapsed().as_secs_f64());
                    first = false;
                }
                text.push_str(&t.text);
            }
            Some(Event::Done(f)) => {
                text.push_str(&f.tail);
                state
                    .metrics
                    .prompt_tokens
                    .inc_by(u64::from(f.prompt_tokens));
                state
                    .metrics
                    .completion_tokens
                    .inc_by(u64::from(f.completion_tokens));
                let choice = match meta.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": f.reason.as_str(),
                    }),
                    Kind::Completion => json!({
                        "index": 0, "text": text, "logprobs": null, "finish_reason": f.reason.as_str(),
                    }),
                };
                let object = if meta.kind == Kind::Chat {
                    "chat.completion"
                } else {
                    "text_completion"
                };
                let mut body = json!({
                    "id": meta.id, "object": object, "created": meta.created, "model": meta.model,
                    "system_fingerprint": crate::FINGERPRINT, "seed": meta.seed,
                    "choices": [choice],
                    "usage": usage(f.prompt_tokens, f.completion_tokens),
                });
                let mut agora = attestation_json(f.attestation.as_deref(), &f.tokens);
                if !workers.is_empty() {
                    agora["workers"] = json!(workers);
                }
                if agora.as_object().is_some_and(|o| !o.is_empty()) {
                    body["agora"] = agora;
                }
                return Ok(Json(body).into_response());
            }
            Some(Event::Error(e)) => {
                return Err(ApiError::internal(format!("Generation failed: {e}")));
            }
            None => return Err(ApiError::internal("The generation ended without a result.")),
        }
    }
}

/// Streaming state for the SSE response.
struct StreamState {
    state: Arc<AppState>,
    s: Started,
    meta: Meta,
    include_usage: bool,
    started: Instant,
    phase: Phase,
    first_token: bool,
    /// Workers that generated this stream (gateway routing), reported in the final chunk.
    workers: Vec<String>,
}

enum Phase {
    Role,
    Tokens,
    /// Events after the finish chunk: usage, attestation.
    Tail(Vec<Value>),
    Done,
    End,
}

impl StreamState {
    fn chunk(
        &mut self,
        delta_text: Option<&str>,
        finish: Option<FinishReason>,
        role: bool,
    ) -> Value {
        let choice = match self.meta.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = delta_text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish.map(FinishReason::as_str)})
            }
            Kind::Completion => json!({
                "index": 0, "text": delta_text.unwrap_or(""), "logprobs": null,
                "finish_reason": finish.map(FinishReason::as_str),
            }),
        };
        let object = if self.meta.kind == Kind::Chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut v = json!({
            "id": self.meta.id, "object": object, "created": self.meta.created, "model": self.meta.model,
            "system_fingerprint": crate::FINGERPRINT, "choices": [choice],
        });
        if std::mem::take(&mut self.meta.seed_pending) {
            v["seed"] = json!(self.meta.seed);
        }
        v
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        if !matches!(self.phase, Phase::End) {
            // The client went away before the end: the engine frees the slot when it sees the
            // receiver dropped (right after this).
            self.state.metrics.cancelled.inc();
        }
        self.state
            .metrics
            .duration
            .get_or_create(&crate::metrics::RouteOnly {
                route: if self.meta.kind == Kind::Chat {
                    "chat"
                } else {
                    "completions"
                },
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

fn sse(
    state: Arc<AppState>,
    s: Started,
    meta: Meta,
    include_usage: bool,
    started: Instant,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let st = StreamState {
        state,
        s,
        meta,
        include_usage,
        started,
        phase: Phase::Role,
        first_token: true,
        workers: Vec::new(),
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            match std::mem::replace(&mut st.phase, Phase::Tokens) {
                Phase::Role => {
                    // Chat streams open with the role, as OpenAI's do.
                    if st.meta.kind == Kind::Chat {
                        let ev = data(&st.chunk(Some(""), None, true));
                        return Some((Ok(ev), st));
                    }
                }
                Phase::Tokens => match st.s.events.recv().await {
                    Some(Event::Replayed(_)) => continue,
                    Some(Event::Worker(w)) => {
                        // Tell the client which worker generates from here on (a chunk with no
                        // choices, as the usage chunk is: OpenAI clients skip it).
                        let mut v = st.chunk(None, None, false);
                        v["choices"] = json!([]);
                        v["agora"] = json!({ "worker": w });
                        st.workers.push(w);
                        return Some((Ok(data(&v)), st));
                    }
                    Some(Event::Token(t)) => {
                        if st.first_token {
                            st.state
                                .metrics
                                .ttft
                                .observe(st.started.elapsed().as_secs_f64());
                            st.first_token = false;
                        }
                        if t.text.is_empty() {
                            continue;
                        }
                        let ev = data(&st.chunk(Some(&t.text), None, false));
                        return Some((Ok(ev), st));
                    }
                    Some(Event::Done(f)) => {
                        st.state
                            .metrics
                            .prompt_tokens
                            .inc_by(u64::from(f.prompt_tokens));
                        st.state
                            .metrics
                            .completion_tokens
                            .inc_by(u64::from(f.completion_tokens));
                        let tail = (!f.tail.is_empty()).then_some(f.tail.as_str());
                        let mut last = st.chunk(tail, Some(f.reason), false);
                        if !st.workers.is_empty() {
                            last["agora"] = json!({ "workers": st.workers });
                        }
                        let ev = data(&last);
                        // Then: usage (when asked), the receipt and proof (one last event,
                        // with no choices, which OpenAI clients skip), [DONE].
                        let mut tail_events = Vec::new();
                        if st.include_usage {
                            let mut u = st.chunk(None, None, false);
                            u["choices"] = json!([]);
                            u["usage"] = usage(f.prompt_tokens, f.completion_tokens);
                            tail_events.push(u);
                        }
                        if f.attestation.is_some() {
                            let mut a = st.chunk(None, None, false);
                            a["choices"] = json!([]);
                            a["agora"] = attestation_json(f.attestation.as_deref(), &f.tokens);
                            a["agora"]["workers"] = json!(st.workers);
                            tail_events.push(a);
                        }
                        st.phase = Phase::Tail(tail_events);
                        return Some((Ok(ev), st));
                    }
                    Some(Event::Error(e)) => {
                        st.phase = Phase::Done;
                        let err = ApiError::internal(format!("Generation failed: {e}"));
                        return Some((Ok(SseEvent::default().data(err.body_json())), st));
                    }
                    None => {
                        st.phase = Phase::Done;
                        let err = ApiError::internal("The generation ended without a result.");
                        return Some((Ok(SseEvent::default().data(err.body_json())), st));
                    }
                },
                Phase::Tail(mut events) => {
                    if events.is_empty() {
                        st.phase = Phase::Done;
                        continue;
                    }
                    let ev = events.remove(0);
                    st.phase = Phase::Tail(events);
                    return Some((Ok(data(&ev)), st));
                }
                Phase::Done => {
                    st.phase = Phase::End;
                    return Some((Ok(SseEvent::default().data("[DONE]")), st));
                }
                Phase::End => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /v1/models`
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.count("models", 200);
    let data: Vec<Value> = state
        .backend
        .models()
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id, "object": "model", "created": 0, "owned_by": "agora",
                "agora": {"digest": m.digest, "n_ctx": m.n_ctx, "workers": m.workers},
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// The `agora` object of a response: receipt (the DSSE envelope as JSON), proof, salt, the
/// request the receipt covers, the output's tokens, and where the receipt was logged.
fn attestation_json(a: Option<&agora_engine::Attestation>, tokens: &[u32]) -> Value {
    let Some(a) = a else { return json!({}) };
    let receipt =
        serde_json::from_str::<Value>(&a.receipt).unwrap_or(Value::String(a.receipt.clone()));
    let mut v = json!({ "receipt": receipt, "proof": a.proof, "salt": a.salt, "request": a.request, "tokens": tokens });
    if let Some(l) = &a.log {
        v["log"] = json!({ "url": l.url, "index": l.index });
    }
    v
}
