//! Errors crossing between the HTTP API and the generation protocol.

use agora_api::ApiError;

use crate::proto::RemoteError;

/// An API error as a worker sends it to a gateway.
pub fn remote_error(e: ApiError) -> RemoteError {
    RemoteError {
        status: e.status.as_u16(),
        message: e.message,
        param: e.param,
        code: e.code.map(str::to_string),
    }
}

/// A worker's error as the gateway's client sees it.
pub fn api_error(e: RemoteError) -> ApiError {
    ApiError::from_parts(e.status, e.message, e.param, e.code.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_status_param_and_code() {
        let e =
            ApiError::invalid("too long", Some("max_tokens")).with_code("context_length_exceeded");
        let back = api_error(remote_error(e.clone()));
        assert_eq!(back, e);
        let o = ApiError::overloaded("busy", 1);
        assert_eq!(api_error(remote_error(o.clone())), o);
    }
}
