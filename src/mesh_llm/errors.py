"""The one error tree of mesh-llm.

::

    MeshLlmError
    ├── ConfigError            bad flags, bad config values, invalid combinations
    ├── ModelError             model resolution and files
    │   ├── ModelNotFoundError
    │   ├── InvalidGgufError   a file that is not a readable GGUF
    │   └── DownloadError
    ├── BackendError           llama.cpp binaries
    │   ├── BackendNotFoundError
    │   └── BackendBuildError
    ├── ProcessError           child processes (llama-server, rpc-server)
    ├── ProtocolError          malformed bytes from an untrusted peer (HTTP or mesh wire)
    │   └── HttpProtocolError  carries the HTTP status to answer with
    ├── TransportError         iroh / sockets
    └── PortInUseError         a listening port is taken

Adapters translate foreign exceptions into these with ``raise ... from exc``.
"""

from __future__ import annotations


class MeshLlmError(Exception):
    """Root of every error mesh-llm raises on purpose."""


class LoadRefusedError(MeshLlmError):
    """A runtime model load or unload this node refuses; ``status`` is the HTTP status the
    management API answers with (400, 404, 409, 422, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConfigError(MeshLlmError):
    """Invalid configuration or command-line arguments."""


class ModelError(MeshLlmError):
    """A model could not be resolved, read or fetched."""


class ModelNotFoundError(ModelError):
    """No model matches the given name, path or reference."""


class InvalidGgufError(ModelError):
    """A file is not a valid GGUF model."""


class DownloadError(ModelError):
    """A model download failed."""


class BackendError(MeshLlmError):
    """The llama.cpp backend is missing or broken."""


class BackendNotFoundError(BackendError):
    """The llama.cpp binaries could not be found."""


class BackendBuildError(BackendError):
    """Building llama.cpp from source failed."""


class ProcessError(MeshLlmError):
    """A child process failed to start or became unhealthy."""


class ProtocolError(MeshLlmError):
    """Malformed bytes from an untrusted peer."""


class HttpProtocolError(ProtocolError):
    """A malformed or unacceptable HTTP request; ``status`` is the response code to send."""

    def __init__(self, status: int, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class TransportError(MeshLlmError):
    """A transport (QUIC/TCP) operation failed."""


class PortInUseError(MeshLlmError):
    """A port we must listen on is already taken."""
