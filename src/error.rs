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

impl From<crate::config::ConfigError> for Error {
    fn from(e: crate::config::ConfigError) -> Self {
        Error::new(ErrorCode::ConfigInvalid, e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}
