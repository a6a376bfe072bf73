//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the status
//! OpenAI would use.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error a client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 for a request that is well-formed JSON but asks for something invalid.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.map(str::to_string);
        e
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn unknown_model(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "The model `{model}` does not exist or is not served here; GET /v1/models lists what is."
            ),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    }

    pub fn overloaded(message: impl Into<String>, retry_after: u32) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
        e.code = Some("rate_limit_exceeded");
        e.retry_after = Some(retry_after);
        e
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u32) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    /// 405: the route exists, not with this method.
    pub fn method_not_allowed(method: &axum::http::Method, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method {method} is not allowed on {path}."),
        )
    }

    /// 408: the request body did not arrive in time (the connection is closed after it).
    pub fn body_timeout(after: std::time::Duration) -> Self {
        let mut e = Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "The request body was not received within {} seconds.",
                after.as_secs_f64()
            ),
        );
        e.code = Some("request_timeout");
        e
    }

    /// Rebuilds an error that crossed the network (status, message, param, code).
    pub fn from_parts(
        status: u16,
        message: String,
        param: Option<String>,
        code: Option<&str>,
    ) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let kind = match status.as_u16() {
            429 => "rate_limit_error",
            503 => "service_unavailable",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        };
        let code = match code {
            Some("context_length_exceeded") => Some("context_length_exceeded"),
            Some("model_not_found") => Some("model_not_found"),
            Some("rate_limit_exceeded") => Some("rate_limit_exceeded"),
            _ => None,
        };
        let retry_after = matches!(status.as_u16(), 429 | 503).then_some(1);
        Self {
            status,
            message,
            kind,
            param,
            code,
            retry_after,
        }
    }

    /// The JSON body alone (also used as an SSE event when a stream fails midway).
    pub fn body_json(&self) -> String {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| String::from("{\"error\":{}}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body_json(),
        )
            .into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        // The body was not read to its end (too large, or stalled): the connection cannot carry
        // another request.
        if matches!(
            self.status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
