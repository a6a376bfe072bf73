//! The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

use std::collections::BTreeMap;
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
        let timeout = req
            .extensions()
            .get::<BodyTimeout>()
            .map_or(crate::DEFAULT_BODY_TIMEOUT, |t| t.0);
        // A client that declares a body and stalls gets 408 (and the connection is closed).
        let read = tokio::time::timeout(timeout, Bytes::from_request(req, state));
        let bytes = match read.await {
            Err(_elapsed) => return Err(ApiError::body_timeout(timeout)),
            Ok(Ok(bytes)) => bytes,
            // The server's own deadline on the body (it may fire a moment before ours).
            Ok(Err(rej)) if timed_out(&rej) => return Err(ApiError::body_timeout(timeout)),
            Ok(Err(rej)) if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::too_large(limit));
            }
            Ok(Err(rej)) => {
                return Err(ApiError::invalid(
                    format!("Could not read the request body: {rej}"),
                    None,
                ));
            }
        };
        parse_json(&bytes).map(OpenAiJson)
    }
}

/// Whether `err` comes from a body that ran past its deadline ([`crate::BodyTimedOut`]).
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(err);
    while let Some(cur) = e {
        if cur.is::<crate::BodyTimedOut>() {
            return true;
        }
        e = cur.source();
    }
    false
}

/// The body size limit, put in request extensions so errors can name it.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// The time a request body has to arrive, put in request extensions ([`crate::ApiConfig`]).
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeout(pub std::time::Duration);

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

/// What the API does with a request field it knows.
#[derive(Clone, Copy)]
enum Field {
    /// Parsed and used.
    Used,
    /// Accepted at its neutral value (`ok`) only, since nothing else is supported; any other
    /// value is refused with `why`.
    Neutral {
        ok: fn(&Value) -> bool,
        why: &'static str,
    },
}

use Field::{Neutral, Used};

fn is_null(v: &Value) -> bool {
    v.is_null()
}
fn null_or_false(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Bool(false))
}
fn null_or_bool(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Bool(_))
}
fn null_or_string(v: &Value) -> bool {
    matches!(v, Value::Null | Value::String(_))
}
fn null_or_empty_string(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("")
}
fn null_or_object(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Object(_))
}
fn null_or_empty_array(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(Vec::is_empty)
}
fn null_or_zero(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(0.0)
}
fn null_or_one(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(1.0)
}
fn null_or_text_format(v: &Value) -> bool {
    v.is_null() || *v == json!({"type": "text"})
}
fn null_or_text_modality(v: &Value) -> bool {
    v.is_null() || *v == json!(["text"])
}
fn no_tool_choice(v: &Value) -> bool {
    matches!(v.as_str(), Some("none" | "auto")) || v.is_null()
}
fn default_service_tier(v: &Value) -> bool {
    matches!(v.as_str(), Some("auto" | "default")) || v.is_null()
}

/// Fields of both endpoints. Besides OpenAI's, three Agora extensions: `top_k`, `ignore_eos`
/// (benchmarks: keep generating through end-of-generation tokens), and `agora`: an object whose
/// only field, `provenance`, is `"digest"` (the default: the receipt carries the text's digest)
/// or `"fingerprint"` (it also carries a fingerprint of the text, so that edited copies of the
/// answer can be found — see docs/provenance.md for what that reveals).
///
/// Accepted at neutral values only: `n` (1), `presence_penalty` and `frequency_penalty` (0).
/// Accepted and without effect on the answer: `user` (a string: an end-user id for the
/// operator's abuse monitoring; Agora keeps none) and `cache_prompt` (a boolean, llama-server's:
/// whether a cached prompt prefix may be reused; Agora's reuse changes no bit of an answer).
const COMMON_FIELDS: &[(&str, Field)] = &[
    ("model", Used),
    ("temperature", Used),
    ("top_p", Used),
    ("top_k", Used),
    ("seed", Used),
    ("max_tokens", Used),
    ("stop", Used),
    ("stream", Used),
    ("stream_options", Used),
    ("logit_bias", Used),
    ("ignore_eos", Used),
    ("agora", Used),
    (
        "user",
        Neutral {
            ok: null_or_string,
            why: "user must be a string.",
        },
    ),
    (
        "cache_prompt",
        Neutral {
            ok: null_or_bool,
            why: "cache_prompt must be a boolean.",
        },
    ),
    (
        "n",
        Neutral {
            ok: null_or_one,
            why: "Only n = 1 is supported (one choice per request).",
        },
    ),
    (
        "presence_penalty",
        Neutral {
            ok: null_or_zero,
            why: "presence_penalty is not supported (only 0).",
        },
    ),
    (
        "frequency_penalty",
        Neutral {
            ok: null_or_zero,
            why: "frequency_penalty is not supported (only 0).",
        },
    ),
];

/// Fields of `POST /v1/chat/completions` beyond [`COMMON_FIELDS`]: `messages` and
/// `max_completion_tokens` are used. Accepted at their neutral values only, as nothing else is
/// supported: `logprobs` (false), `top_logprobs` (0), `response_format` (`{"type": "text"}`),
/// `tools` and `functions` (empty), `tool_choice` and `function_call` (`"none"` or `"auto"`,
/// which with no tools mean the same), `modalities` (`["text"]`), `audio`, `prediction`,
/// `reasoning_effort`, `verbosity` and `web_search_options` (null), `store` (false: nothing is
/// stored), `service_tier` (`"auto"` or `"default"`). Accepted and without effect on the answer:
/// `parallel_tool_calls` (a boolean; no tools are ever called), `metadata` (an object; only
/// meaningful with `store`), `prompt_cache_key` and `safety_identifier` (strings: hints for
/// caching and abuse monitoring).
const CHAT_FIELDS: &[(&str, Field)] = &[
    ("messages", Used),
    ("max_completion_tokens", Used),
    (
        "logprobs",
        Neutral {
            ok: null_or_false,
            why: "logprobs are not supported.",
        },
    ),
    (
        "top_logprobs",
        Neutral {
            ok: null_or_zero,
            why: "top_logprobs is not supported (logprobs are not).",
        },
    ),
    (
        "response_format",
        Neutral {
            ok: null_or_text_format,
            why: "response_format is not supported: only {\"type\": \"text\"} (plain text).",
        },
    ),
    (
        "tools",
        Neutral {
            ok: null_or_empty_array,
            why: "tools are not supported: function calling is not.",
        },
    ),
    (
        "tool_choice",
        Neutral {
            ok: no_tool_choice,
            why: "tool_choice is not supported: tools and function calling are not (only \"none\").",
        },
    ),
    (
        "functions",
        Neutral {
            ok: null_or_empty_array,
            why: "functions are not supported: function calling is not.",
        },
    ),
    (
        "function_call",
        Neutral {
            ok: no_tool_choice,
            why: "function_call is not supported: function calling is not (only \"none\").",
        },
    ),
    (
        "parallel_tool_calls",
        Neutral {
            ok: null_or_bool,
            why: "parallel_tool_calls must be a boolean.",
        },
    ),
    (
        "modalities",
        Neutral {
            ok: null_or_text_modality,
            why: "modalities other than [\"text\"] are not supported.",
        },
    ),
    (
        "audio",
        Neutral {
            ok: is_null,
            why: "audio output is not supported.",
        },
    ),
    (
        "prediction",
        Neutral {
            ok: is_null,
            why: "prediction (predicted outputs) is not supported.",
        },
    ),
    (
        "reasoning_effort",
        Neutral {
            ok: is_null,
            why: "reasoning_effort is not supported.",
        },
    ),
    (
        "verbosity",
        Neutral {
            ok: is_null,
            why: "verbosity is not supported.",
        },
    ),
    (
        "web_search_options",
        Neutral {
            ok: is_null,
            why: "web_search_options is not supported: there is no web search.",
        },
    ),
    (
        "store",
        Neutral {
            ok: null_or_false,
            why: "store is not supported: completions are not stored (only false).",
        },
    ),
    (
        "service_tier",
        Neutral {
            ok: default_service_tier,
            why: "service_tier is not supported (only \"auto\" or \"default\").",
        },
    ),
    (
        "metadata",
        Neutral {
            ok: null_or_object,
            why: "metadata must be an object.",
        },
    ),
    (
        "prompt_cache_key",
        Neutral {
            ok: null_or_string,
            why: "prompt_cache_key must be a string.",
        },
    ),
    (
        "safety_identifier",
        Neutral {
            ok: null_or_string,
            why: "safety_identifier must be a string.",
        },
    ),
];

/// Fields of `POST /v1/completions` beyond [`COMMON_FIELDS`]: `prompt` is used. Accepted at
/// their neutral values only: `echo` (false), `suffix` (empty), `best_of` (1), `logprobs`
/// (null or 0).
const COMPLETION_FIELDS: &[(&str, Field)] = &[
    ("prompt", Used),
    (
        "echo",
        Neutral {
            ok: null_or_false,
            why: "echo is not supported.",
        },
    ),
    (
        "suffix",
        Neutral {
            ok: null_or_empty_string,
            why: "suffix is not supported.",
        },
    ),
    (
        "best_of",
        Neutral {
            ok: null_or_one,
            why: "Only best_of = 1 is supported.",
        },
    ),
    (
        "logprobs",
        Neutral {
            ok: null_or_zero,
            why: "logprobs are not supported.",
        },
    ),
];

/// Refuses, naming it, any field of `body` that is not in `common` or `own`, or that is there
/// at a value it does not support. Nothing a client asks for is silently ignored.
fn check_fields(
    body: &Value,
    common: &[(&str, Field)],
    own: &[(&str, Field)],
) -> Result<(), ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    };
    for (name, value) in obj {
        let field = common
            .iter()
            .chain(own)
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f);
        match field {
            None => return Err(unrecognized(name)),
            Some(Used) => {}
            Some(Neutral { ok, why }) => {
                if !ok(value) {
                    return Err(ApiError::invalid(why, Some(name)));
                }
            }
        }
    }
    Ok(())
}

/// OpenAI's answer to a field it does not know.
fn unrecognized(param: &str) -> ApiError {
    ApiError::invalid(
        format!("Unrecognized request argument supplied: {param}"),
        Some(param),
    )
}

/// Keys of a chat message: `role`, `content` used; `tool_call_id` accepted (a string: it only
/// links a tool result to its call, and the content is what the model sees). Accepted only
/// when null or empty, since none is supported: `name`, `tool_calls`, `function_call`,
/// `refusal`, `audio`, `annotations` (what SDKs put in an assistant message they send back).
fn check_message_fields(i: usize, m: &Value) -> Result<(), ApiError> {
    let Some(obj) = m.as_object() else {
        return Err(ApiError::invalid(
            format!("messages[{i}] must be an object."),
            Some(&format!("messages[{i}]")),
        ));
    };
    for (key, value) in obj {
        let param = format!("messages[{i}].{key}");
        let ok = match key.as_str() {
            "role" | "content" => true,
            "tool_call_id" => null_or_string(value),
            "name" | "function_call" | "refusal" | "audio" => value.is_null(),
            "tool_calls" | "annotations" => null_or_empty_array(value),
            _ => return Err(unrecognized(&param)),
        };
        if !ok {
            return Err(ApiError::invalid(
                format!("{param} is not supported."),
                Some(&param),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

/// `stream_options`: `include_usage` is used; `include_obfuscation` accepted when false (no
/// obfuscation padding is sent).
#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

fn check_stream_options(v: &Value) -> Result<(), ApiError> {
    let obj = match v {
        Value::Null => return Ok(()),
        Value::Object(o) => o,
        _ => {
            return Err(ApiError::invalid(
                "stream_options must be an object.",
                Some("stream_options"),
            ));
        }
    };
    for (key, value) in obj {
        match key.as_str() {
            "include_usage" => {}
            "include_obfuscation" if null_or_false(value) => {}
            "include_obfuscation" => {
                return Err(ApiError::invalid(
                    "stream_options.include_obfuscation is not supported (only false).",
                    Some("stream_options.include_obfuscation"),
                ));
            }
            _ => return Err(unrecognized(&format!("stream_options.{key}"))),
        }
    }
    Ok(())
}

/// Sampling and control fields shared by both endpoints (those [`COMMON_FIELDS`] marks used).
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
    logit_bias: Option<Value>,
    /// Agora extension for benchmarks: keep generating through end-of-generation tokens.
    #[serde(default)]
    ignore_eos: Option<bool>,
    /// Agora's own options.
    #[serde(default)]
    agora: Option<Value>,
}

/// Whether the request's `agora` object asks for a fingerprint in the receipt.
fn wants_fingerprint(v: Option<&Value>) -> Result<bool, ApiError> {
    let bad = |msg: &str| ApiError::invalid(msg, Some("agora"));
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(false);
    };
    let Some(o) = v.as_object() else {
        return Err(bad(
            "agora must be an object, such as {\"provenance\": \"fingerprint\"}.",
        ));
    };
    let mut fingerprint = false;
    for (k, v) in o {
        match (k.as_str(), v.as_str()) {
            ("provenance", Some("fingerprint")) => fingerprint = true,
            ("provenance", Some("digest")) => {}
            ("provenance", _) if v.is_null() => {}
            ("provenance", _) => {
                return Err(bad(
                    "agora.provenance must be \"digest\" (the default) or \"fingerprint\".",
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("Unrecognized request argument supplied: agora.{k}"),
                    Some("agora"),
                ));
            }
        }
    }
    Ok(fingerprint)
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
}

/// Most entries `logit_bias` may have (OpenAI's limit too).
pub const LOGIT_BIAS_MAX_ENTRIES: usize = 1024;

/// Parses OpenAI's `logit_bias`: an object whose keys are token ids in decimal and whose values
/// are numbers in [-100, 100]. Whether each id is in the model's vocabulary is the engine's
/// check (the API does not know the vocabulary).
fn parse_logit_bias(v: Option<&Value>) -> Result<BTreeMap<u32, f32>, ApiError> {
    let bad = |msg: String| ApiError::invalid(msg, Some("logit_bias"));
    let map = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(bad(
                "logit_bias must be an object mapping token ids (as strings) to biases between -100 and 100."
                    .into(),
            ));
        }
    };
    if map.len() > LOGIT_BIAS_MAX_ENTRIES {
        return Err(bad(format!(
            "logit_bias has {} entries; at most {LOGIT_BIAS_MAX_ENTRIES} are allowed.",
            map.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        // Canonical decimal only, so two keys cannot name the same token ("7" and "07").
        let canonical = !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_digit())
            && (key == "0" || !key.starts_with('0'));
        let id = canonical
            .then(|| key.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| {
                bad(format!(
                    "Invalid key {key:?} in logit_bias: keys must be token ids in decimal (e.g. \"50256\")."
                ))
            })?;
        let bias = value
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                bad(format!(
                    "Invalid bias {value} for token {key} in logit_bias: biases must be numbers between -100 and 100."
                ))
            })?;
        out.insert(id, bias as f32);
    }
    Ok(out)
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
    let logit_bias = parse_logit_bias(c.logit_bias.as_ref())?;
    let fingerprint = wants_fingerprint(c.agora.as_ref())?;
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
            logit_bias,
            fingerprint,
        },
        stream: c.stream.unwrap_or(false),
        include_usage: c
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
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
    check_fields(body, COMMON_FIELDS, CHAT_FIELDS)?;
    check_stream_options(&body["stream_options"])?;
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for (i, m) in messages.iter().enumerate() {
            check_message_fields(i, m)?;
        }
    }
    let fields: ChatFields = from_value(body)?;
    let common: Common = from_value(body)?;
    let messages = chat_messages(fields.messages)?;
    validate(common, PromptSpec::Chat(messages))
}

fn completion_request(body: &Value) -> Result<Validated, ApiError> {
    check_fields(body, COMMON_FIELDS, COMPLETION_FIELDS)?;
    check_stream_options(&body["stream_options"])?;
    let req: CompletionFields = from_value(body)?;
    let common: Common = from_value(body)?;
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
/// request the receipt covers, the output's tokens, where the receipt was logged, and
/// `"unverifiable": true` when the receipt says so.
fn attestation_json(a: Option<&agora_engine::Attestation>, tokens: &[u32]) -> Value {
    let Some(a) = a else { return json!({}) };
    let mut v = json!({
        "receipt": a.receipt,
        "proof": a.proof_base64(),
        "salt": a.salt_hex(),
        "request": a.request,
        "tokens": tokens,
    });
    if let Some(l) = &a.log {
        v["log"] = json!({ "url": l.url, "index": l.index });
    }
    // Said beside the receipt too, so a client need not decode it to know: the worker's engine
    // failed its self-check, and no verifier can hold this answer to its proof.
    if let Ok(agora_core::Statement::Receipt(r)) =
        agora_core::Statement::from_payload(&a.receipt.payload_type, &a.receipt.payload)
        && r.unverifiable
    {
        v["unverifiable"] = json!(true);
    }
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chat_body() -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    }

    fn completion_body() -> Value {
        json!({"model": "m", "prompt": "hi"})
    }

    fn chat_with(key: &str, value: Value) -> Result<ParsedRequest, ApiError> {
        let mut b = chat_body();
        b[key] = value;
        parse_chat_request(b.to_string().as_bytes())
    }

    fn completion_with(key: &str, value: Value) -> Result<ParsedRequest, ApiError> {
        let mut b = completion_body();
        b[key] = value;
        parse_completion_request(b.to_string().as_bytes())
    }

    fn assert_refused(r: Result<ParsedRequest, ApiError>, param: &str) -> ApiError {
        let e = r.expect_err(param);
        assert_eq!(e.status.as_u16(), 400, "{e:?}");
        assert_eq!(e.param.as_deref(), Some(param), "{e:?}");
        e
    }

    #[test]
    fn plain_requests_parse() {
        let p = parse_chat_request(chat_body().to_string().as_bytes()).unwrap();
        assert_eq!(p.model, "m");
        assert!(p.job.logit_bias.is_empty());
        let p = parse_completion_request(completion_body().to_string().as_bytes()).unwrap();
        assert!(matches!(p.job.prompt, PromptSpec::Text(ref t) if t == "hi"));
    }

    #[test]
    fn unknown_fields_are_refused_naming_them() {
        for key in ["foo", "min_p", "repetition_penalty", "Temperature"] {
            let e = assert_refused(chat_with(key, json!(1)), key);
            assert_eq!(
                e.message,
                format!("Unrecognized request argument supplied: {key}")
            );
            assert_refused(completion_with(key, json!(1)), key);
        }
        // Each endpoint has its own fields.
        for key in [
            "messages",
            "response_format",
            "max_completion_tokens",
            "tools",
        ] {
            assert_refused(completion_with(key, json!(null)), key);
        }
        for key in ["prompt", "echo", "suffix", "best_of"] {
            assert_refused(chat_with(key, json!(null)), key);
        }
        // Inside stream_options and messages too.
        assert_refused(
            chat_with("stream_options", json!({"include_usage": true, "x": 1})),
            "stream_options.x",
        );
        let mut b = chat_body();
        b["messages"][0]["weight"] = json!(1);
        assert_refused(
            parse_chat_request(b.to_string().as_bytes()),
            "messages[0].weight",
        );
    }

    #[test]
    fn unsupported_parameters_are_refused_naming_them() {
        let chat: &[(&str, Value)] = &[
            ("response_format", json!({"type": "json_object"})),
            (
                "response_format",
                json!({"type": "json_schema", "json_schema": {}}),
            ),
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f"}}]),
            ),
            ("tool_choice", json!("required")),
            (
                "tool_choice",
                json!({"type": "function", "function": {"name": "f"}}),
            ),
            ("functions", json!([{"name": "f"}])),
            ("function_call", json!({"name": "f"})),
            ("parallel_tool_calls", json!("yes")),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("n", json!(2)),
            ("presence_penalty", json!(0.5)),
            ("frequency_penalty", json!(-1)),
            ("modalities", json!(["text", "audio"])),
            ("audio", json!({"voice": "alloy", "format": "wav"})),
            ("prediction", json!({"type": "content", "content": "x"})),
            ("store", json!(true)),
            ("service_tier", json!("flex")),
            ("reasoning_effort", json!("low")),
            ("web_search_options", json!({})),
            ("user", json!(5)),
            ("metadata", json!("x")),
        ];
        for (key, value) in chat {
            let e = assert_refused(chat_with(key, value.clone()), key);
            assert!(
                e.message.contains(key) || e.message.contains("n = 1"),
                "{key}: {}",
                e.message
            );
        }
        let completion: &[(&str, Value)] = &[
            ("echo", json!(true)),
            ("suffix", json!("end")),
            ("best_of", json!(3)),
            ("logprobs", json!(5)),
            ("n", json!(4)),
            ("presence_penalty", json!(1)),
        ];
        for (key, value) in completion {
            assert_refused(completion_with(key, value.clone()), key);
        }
        assert_refused(
            chat_with("stream_options", json!({"include_obfuscation": true})),
            "stream_options.include_obfuscation",
        );
        let mut b = chat_body();
        b["messages"][0]["tool_calls"] = json!([{"id": "1"}]);
        assert_refused(
            parse_chat_request(b.to_string().as_bytes()),
            "messages[0].tool_calls",
        );
        b["messages"][0]["tool_calls"] = json!(null);
        b["messages"][0]["name"] = json!("bob");
        assert_refused(
            parse_chat_request(b.to_string().as_bytes()),
            "messages[0].name",
        );
    }

    #[test]
    fn neutral_values_are_accepted() {
        let mut b = chat_body();
        for (key, value) in [
            ("user", json!("u-1")),
            ("store", json!(false)),
            ("metadata", json!({"k": "v"})),
            (
                "stream_options",
                json!({"include_usage": true, "include_obfuscation": false}),
            ),
            ("service_tier", json!("auto")),
            ("seed", json!(7)),
            ("n", json!(1)),
            ("presence_penalty", json!(0)),
            ("frequency_penalty", json!(0.0)),
            ("logprobs", json!(false)),
            ("top_logprobs", json!(0)),
            ("tools", json!([])),
            ("tool_choice", json!("none")),
            ("functions", json!(null)),
            ("function_call", json!("auto")),
            ("parallel_tool_calls", json!(true)),
            ("response_format", json!({"type": "text"})),
            ("modalities", json!(["text"])),
            ("audio", json!(null)),
            ("prediction", json!(null)),
            ("prompt_cache_key", json!("k")),
            ("safety_identifier", json!("s")),
            ("max_completion_tokens", json!(5)),
            ("logit_bias", json!({})),
            ("top_k", json!(40)),
            ("ignore_eos", json!(false)),
        ] {
            b[key] = value;
        }
        // What an SDK sends back when it replays an assistant message.
        b["messages"] = json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "refusal": null, "tool_calls": null,
             "function_call": null, "audio": null, "annotations": []},
            {"role": "user", "content": "again"},
        ]);
        let p = parse_chat_request(b.to_string().as_bytes()).unwrap();
        assert_eq!(p.job.max_tokens, Some(5));
        assert!(p.include_usage);
        let mut c = completion_body();
        for (key, value) in [
            ("echo", json!(false)),
            ("suffix", json!("")),
            ("best_of", json!(1)),
            ("logprobs", json!(null)),
            ("user", json!("u")),
            ("n", json!(1)),
        ] {
            c[key] = value;
        }
        parse_completion_request(c.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn the_agora_object_asks_for_a_fingerprint() {
        assert!(!chat_with("agora", json!(null)).unwrap().job.fingerprint);
        assert!(!chat_with("agora", json!({})).unwrap().job.fingerprint);
        assert!(
            !chat_with("agora", json!({"provenance": "digest"}))
                .unwrap()
                .job
                .fingerprint
        );
        let p = chat_with("agora", json!({"provenance": "fingerprint"})).unwrap();
        assert!(p.job.fingerprint);
        let p = completion_with("agora", json!({"provenance": "fingerprint"})).unwrap();
        assert!(p.job.fingerprint);
        for bad in [json!(1), json!({"provenance": "all"}), json!({"other": 1})] {
            assert_refused(chat_with("agora", bad), "agora");
        }
    }

    #[test]
    fn logit_bias_is_parsed() {
        let p = chat_with(
            "logit_bias",
            json!({"50256": -100, "0": 100, "17": 2.5, "4294967295": 0}),
        )
        .unwrap();
        let want: BTreeMap<u32, f32> =
            [(50256, -100.0), (0, 100.0), (17, 2.5), (u32::MAX, 0.0)].into();
        assert_eq!(p.job.logit_bias, want);
        let p = completion_with("logit_bias", json!({"5": 1})).unwrap();
        assert_eq!(p.job.logit_bias, [(5, 1.0)].into());
        assert!(
            chat_with("logit_bias", json!(null))
                .unwrap()
                .job
                .logit_bias
                .is_empty()
        );
        // 1024 entries is the limit, included.
        let full: serde_json::Map<String, Value> =
            (0..1024).map(|i| (i.to_string(), json!(1))).collect();
        let p = chat_with("logit_bias", Value::Object(full)).unwrap();
        assert_eq!(p.job.logit_bias.len(), 1024);
    }

    #[test]
    fn bad_logit_bias_is_refused() {
        let too_many: serde_json::Map<String, Value> =
            (0..1025).map(|i| (i.to_string(), json!(1))).collect();
        for bad in [
            json!([1, 2]),
            json!("50256:1"),
            json!(5),
            json!({"abc": 1}),
            json!({"-1": 1}),
            json!({"+5": 1}),
            json!({"07": 1}),
            json!({"1.5": 1}),
            json!({"": 1}),
            json!({" 5": 1}),
            json!({"4294967296": 1}),
            json!({"5": 100.5}),
            json!({"5": -101}),
            json!({"5": "1"}),
            json!({"5": null}),
            json!({"5": true}),
            Value::Object(too_many),
        ] {
            let e = assert_refused(chat_with("logit_bias", bad.clone()), "logit_bias");
            assert!(e.message.contains("logit_bias"), "{bad}: {}", e.message);
            assert_refused(completion_with("logit_bias", bad), "logit_bias");
        }
    }

    #[test]
    fn wrong_types_still_name_the_parameter() {
        assert_refused(chat_with("temperature", json!("hot")), "temperature");
        assert_refused(chat_with("stream", json!(1)), "stream");
        assert_refused(
            chat_with("stream_options", json!({"include_usage": "yes"})),
            "stream_options.include_usage",
        );
        assert_refused(chat_with("stream_options", json!(3)), "stream_options");
        let e = parse_chat_request(br#"{"model":"m"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse_chat_request(br#"[1]"#).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
    }
}
