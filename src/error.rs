//! Typed errors with stable string codes.
//!
//! Every error that can reach JavaScript carries a [`ErrorCode`]; the binding maps it to the
//! thrown `Error`'s `code` property, so the shim and users can branch on it without parsing
//! messages. Codes are part of the public API: never rename one, only add.

use std::fmt;

/// Stable error codes surfaced to JS as `err.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The plugin configuration is invalid; the message names the field and the reason.
    ConfigInvalid,
    /// A socket (mesh listener, model proxy) could not be bound.
    BindFailed,
    /// The node is not running (call `start()` first).
    NotRunning,
    /// A capability that this build does not provide yet was requested.
    NotImplemented,
    /// Arguments passed from JS (tool args, method params) are invalid.
    InvalidArgument,
    /// An internal invariant failed; this is a bug.
    Internal,
    /// The destination node has no route from here (not in the mesh, or cut off).
    Unreachable,
    /// The request got no answer within its timeout.
    Timeout,
    /// The remote node answered with an error; the message carries its code and text.
    Remote,
    /// The request was abandoned before an answer: the node stopped, or too many were in flight.
    Cancelled,
    /// This node's tool policy refused the call (`toolProxy` disabled, allow/deny, a path outside
    /// the filesystem root, no root configured). The message names the rule.
    Denied,
    /// A file or program the call names does not exist.
    NotFound,
    /// A path names a directory or a special file where a regular file is needed.
    NotAFile,
    /// A file or argument is over its size limit; the message states the size and the limit.
    TooLarge,
    /// An operating-system I/O error other than the above (permissions, disk full, ...).
    Io,
    /// The node key file or the trust store cannot be used as it is (readable by others, not a
    /// regular file, oversized, malformed). The message names the file and how to fix it; the
    /// node never replaces such a file by itself.
    Identity,
    /// A frame of the call failed the end-to-end check on arrival (altered, injected or
    /// replayed by a relay), or a stream chunk was missing or out of order: the result cannot
    /// be trusted and the call was cancelled.
    Integrity,
}

impl ErrorCode {
    /// The stable string form (`CLAWMATRIX_CONFIG_INVALID`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ConfigInvalid => "CLAWMATRIX_CONFIG_INVALID",
            ErrorCode::BindFailed => "CLAWMATRIX_BIND_FAILED",
            ErrorCode::NotRunning => "CLAWMATRIX_NOT_RUNNING",
            ErrorCode::NotImplemented => "CLAWMATRIX_NOT_IMPLEMENTED",
            ErrorCode::InvalidArgument => "CLAWMATRIX_INVALID_ARGUMENT",
            ErrorCode::Internal => "CLAWMATRIX_INTERNAL",
            ErrorCode::Unreachable => "CLAWMATRIX_UNREACHABLE",
            ErrorCode::Timeout => "CLAWMATRIX_TIMEOUT",
            ErrorCode::Remote => "CLAWMATRIX_REMOTE",
            ErrorCode::Cancelled => "CLAWMATRIX_CANCELLED",
            ErrorCode::Denied => "CLAWMATRIX_DENIED",
            ErrorCode::NotFound => "CLAWMATRIX_NOT_FOUND",
            ErrorCode::NotAFile => "CLAWMATRIX_NOT_A_FILE",
            ErrorCode::TooLarge => "CLAWMATRIX_TOO_LARGE",
            ErrorCode::Io => "CLAWMATRIX_IO",
            ErrorCode::Identity => "CLAWMATRIX_IDENTITY",
            ErrorCode::Integrity => "CLAWMATRIX_INTEGRITY",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The crate-level error: a code plus a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl ErrorCode {
    /// Every code, for parsing.
    const ALL: [ErrorCode; 17] = [
        ErrorCode::ConfigInvalid,
        ErrorCode::BindFailed,
        ErrorCode::NotRunning,
        ErrorCode::NotImplemented,
        ErrorCode::InvalidArgument,
        ErrorCode::Internal,
        ErrorCode::Unreachable,
        ErrorCode::Timeout,
        ErrorCode::Remote,
        ErrorCode::Cancelled,
        ErrorCode::Denied,
        ErrorCode::NotFound,
        ErrorCode::NotAFile,
        ErrorCode::TooLarge,
        ErrorCode::Io,
        ErrorCode::Identity,
        ErrorCode::Integrity,
    ];

    /// The code whose [`as_str`](ErrorCode::as_str) is `s` (e.g. an error code a remote node
    /// sent back), if any.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The JSON type of `v` as error messages name it (`expected a string, got number`).
pub fn json_type_name(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
/// The text of a caught panic (`panic!` payloads are a `&str` or a `String`).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
