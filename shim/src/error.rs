//! The runtime library's one error type: what went wrong (the module's own error, kept
//! whole as the cause) and its [`ErrorKind`], which the front ends map in one place each:
//! the CLI to docker's exit codes ([`Error::exit_code`]: 125, 126, 127), the shim to
//! ttrpc (gRPC) status codes ([`ErrorKind::grpc_code`]).
//!
//! The per-module error enums (`SandboxError`, `ImageError`, `NetworkError`, ...) stay
//! where they are; each converts into [`Error`] with the kind that fits it. The message
//! is the wrapped error's own (the CLI prints it as it always did).

use std::fmt;

/// What kind of failure an [`Error`] is, as the callers act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is wrong whatever the state: a bad flag, name, spec or reference.
    InvalidArgument,
    /// A container, process, image or network that does not exist.
    NotFound,
    /// The name is taken.
    AlreadyExists,
    /// The request is fine but the state does not allow it: not running, a host that
    /// cannot boot the guest, a guest image too old for what is asked.
    FailedPrecondition,
    /// The VM or its agent went away (husk-vmm stopped, the connection dropped).
    Unavailable,
    /// The agent does not implement the call.
    Unimplemented,
    /// The container's command does not exist in its image (docker's 127).
    CommandNotFound,
    /// The container's command exists but cannot be run (docker's 126).
    CommandNotExecutable,
    /// Anything else: a host call that failed, a tool that broke.
    Internal,
}

impl ErrorKind {
    /// docker's exit code for a failure of this kind: 127 for a missing command, 126
    /// for one that cannot run, 125 for everything the runtime itself failed at.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::CommandNotFound => 127,
            ErrorKind::CommandNotExecutable => 126,
            _ => 125,
        }
    }

    /// The ttrpc status code (gRPC's numbering, `ttrpc::Code` as i32) the shim answers
    /// containerd with. A missing command is NOT_FOUND, as runc's shim answers.
    pub fn grpc_code(self) -> i32 {
        // google.rpc.Code numbers, which every ttrpc version shares.
        const INVALID_ARGUMENT: i32 = 3;
        const NOT_FOUND: i32 = 5;
        const ALREADY_EXISTS: i32 = 6;
        const FAILED_PRECONDITION: i32 = 9;
        const UNIMPLEMENTED: i32 = 12;
        const INTERNAL: i32 = 13;
        const UNAVAILABLE: i32 = 14;
        match self {
            ErrorKind::InvalidArgument => INVALID_ARGUMENT,
            ErrorKind::NotFound | ErrorKind::CommandNotFound => NOT_FOUND,
            ErrorKind::AlreadyExists => ALREADY_EXISTS,
            ErrorKind::FailedPrecondition | ErrorKind::CommandNotExecutable => FAILED_PRECONDITION,
            ErrorKind::Unavailable => UNAVAILABLE,
            ErrorKind::Unimplemented => UNIMPLEMENTED,
            ErrorKind::Internal => INTERNAL,
        }
    }

    /// The kind of an agent status code (ttrpc 0.10's `Code`).
    pub fn of_agent_code(code: ttrpc::Code) -> ErrorKind {
        match code {
            ttrpc::Code::INVALID_ARGUMENT | ttrpc::Code::OUT_OF_RANGE => ErrorKind::InvalidArgument,
            ttrpc::Code::NOT_FOUND => ErrorKind::NotFound,
            ttrpc::Code::ALREADY_EXISTS => ErrorKind::AlreadyExists,
            ttrpc::Code::FAILED_PRECONDITION => ErrorKind::FailedPrecondition,
            ttrpc::Code::UNAVAILABLE => ErrorKind::Unavailable,
            ttrpc::Code::UNIMPLEMENTED => ErrorKind::Unimplemented,
            _ => ErrorKind::Internal,
        }
    }
}

/// A plain message as an error (for failures that are only words).
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// A failure of the runtime library: a kind and the error that says what happened.
/// Displays as that error; its `source()` is that error's cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
}

/// The library's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `err` as a failure of `kind`.
    pub fn new(
        kind: ErrorKind,
        err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        Error {
            kind,
            inner: err.into(),
        }
    }

    /// A failure of `kind` that is only a message.
    pub fn msg(kind: ErrorKind, msg: impl Into<String>) -> Error {
        Error::new(kind, Message(msg.into()))
    }

    /// A bad request (a flag, name, spec): [`ErrorKind::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::msg(ErrorKind::InvalidArgument, msg)
    }

    /// [`ErrorKind::NotFound`] with a message.
    pub fn not_found(msg: impl Into<String>) -> Error {
        Error::msg(ErrorKind::NotFound, msg)
    }

    /// [`ErrorKind::FailedPrecondition`] with a message.
    pub fn precondition(msg: impl Into<String>) -> Error {
        Error::msg(ErrorKind::FailedPrecondition, msg)
    }

    /// [`ErrorKind::Internal`] with a message.
    pub fn internal(msg: impl Into<String>) -> Error {
        Error::msg(ErrorKind::Internal, msg)
    }

    /// A failed agent call: its status's own message (without ttrpc's wrapping) and the
    /// kind of its code; a broken connection is [`ErrorKind::Unavailable`].
    pub fn agent(e: ttrpc::Error) -> Error {
        match e {
            ttrpc::Error::RpcStatus(s) => {
                let kind = ErrorKind::of_agent_code(s.code());
                Error::msg(kind, s.message().to_string())
            }
            other => Error::msg(ErrorKind::Unavailable, other.to_string()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The same error as another kind.
    pub fn with_kind(mut self, kind: ErrorKind) -> Error {
        self.kind = kind;
        self
    }

    /// docker's exit code for it (see [`ErrorKind::exit_code`]).
    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }

    /// The wrapped error, to look at a module's own variant.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }

    /// This error with `prefix` and `suffix` around its message (the kind kept).
    pub fn wrap_msg(self, prefix: &str, suffix: &str) -> Error {
        let kind = self.kind;
        Error::msg(kind, format!("{prefix}{self}{suffix}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // Transparent: the wrapped error is the message, its cause is ours.
        self.inner.source()
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            std::io::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        };
        Error::new(kind, e)
    }
}

impl From<crate::image::ImageError> for Error {
    fn from(e: crate::image::ImageError) -> Error {
        // A bad reference, layout or image content: the request's fault.
        Error::new(ErrorKind::InvalidArgument, e)
    }
}

impl From<crate::guest::GuestError> for Error {
    fn from(e: crate::guest::GuestError) -> Error {
        // The guest image or husk-vmm is not installed.
        Error::new(ErrorKind::FailedPrecondition, e)
    }
}

impl From<crate::preflight::PreflightError> for Error {
    fn from(e: crate::preflight::PreflightError) -> Error {
        Error::new(ErrorKind::FailedPrecondition, e)
    }
}

impl From<crate::jail::cgroup::CgroupError> for Error {
    fn from(e: crate::jail::cgroup::CgroupError) -> Error {
        // The host lacks what the jail needs (cgroup v2 with memory and pids).
        Error::new(ErrorKind::FailedPrecondition, e)
    }
}

impl From<crate::scratch::ScratchError> for Error {
    fn from(e: crate::scratch::ScratchError) -> Error {
        Error::new(ErrorKind::Internal, e)
    }
}

impl From<crate::network::NetworkError> for Error {
    fn from(e: crate::network::NetworkError) -> Error {
        let kind = e.kind();
        Error::new(kind, e)
    }
}

impl From<crate::sandbox::SandboxError> for Error {
    fn from(e: crate::sandbox::SandboxError) -> Error {
        let kind = e.kind();
        Error::new(kind, e)
    }
}

impl From<husk_agent_protocol::client::ClientError> for Error {
    fn from(e: husk_agent_protocol::client::ClientError) -> Error {
        use husk_agent_protocol::client::ClientError;
        let kind = match &e {
            ClientError::Invalid(_) => ErrorKind::InvalidArgument,
            ClientError::Refused { .. } | ClientError::ForwardRefused { .. } => {
                ErrorKind::FailedPrecondition
            }
            _ => ErrorKind::Unavailable,
        };
        Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_docker_exit_codes() {
        assert_eq!(ErrorKind::CommandNotFound.exit_code(), 127);
        assert_eq!(ErrorKind::CommandNotExecutable.exit_code(), 126);
        for k in [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::Unavailable,
            ErrorKind::Unimplemented,
            ErrorKind::Internal,
        ] {
            assert_eq!(k.exit_code(), 125, "{k:?}");
        }
    }

    #[test]
    fn kinds_map_to_ttrpc_codes() {
        use protobuf::Enum;
        let code = |k: ErrorKind| ttrpc::Code::from_i32(k.grpc_code());
        assert_eq!(
            code(ErrorKind::InvalidArgument),
            Some(ttrpc::Code::INVALID_ARGUMENT)
        );
        assert_eq!(code(ErrorKind::NotFound), Some(ttrpc::Code::NOT_FOUND));
        assert_eq!(
            code(ErrorKind::CommandNotFound),
            Some(ttrpc::Code::NOT_FOUND)
        );
        assert_eq!(
            code(ErrorKind::AlreadyExists),
            Some(ttrpc::Code::ALREADY_EXISTS)
        );
        assert_eq!(
            code(ErrorKind::FailedPrecondition),
            Some(ttrpc::Code::FAILED_PRECONDITION)
        );
        assert_eq!(code(ErrorKind::Unavailable), Some(ttrpc::Code::UNAVAILABLE));
        assert_eq!(
            code(ErrorKind::Unimplemented),
            Some(ttrpc::Code::UNIMPLEMENTED)
        );
        assert_eq!(code(ErrorKind::Internal), Some(ttrpc::Code::INTERNAL));
    }

    #[test]
    fn agent_statuses_keep_their_message_and_kind() {
        let st = ttrpc::get_status(ttrpc::Code::NOT_FOUND, "container x: no such container");
        let e = Error::agent(ttrpc::Error::RpcStatus(st));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.to_string(), "container x: no such container");
        let e = Error::agent(ttrpc::Error::LocalClosed);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn display_is_the_wrapped_error() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = Error::from(io);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.to_string(), "gone");
        assert_eq!(Error::invalid("bad flag").to_string(), "bad flag");
        assert_eq!(Error::invalid("x").exit_code(), 125);
        let e = Error::msg(ErrorKind::Unavailable, "lost").wrap_msg("agent: ", "\nwhy");
        assert_eq!(e.to_string(), "agent: lost\nwhy");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }
}
