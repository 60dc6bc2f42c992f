"""Private meshes: the mesh-secret admission handshake (docs/DESIGN.md, "Private meshes").

A private mesh's nodes share a 32-byte *mesh key*, derived from ``--mesh-secret`` (or carried in
the invite token). Before anything else on a new connection the dialler opens one ADMIT stream
(type 0x0B) and proves that it knows the key; the acceptor answers with its own proof, bound to
the dialler's fresh nonce. The secret and the key never travel: only HMAC-SHA256 values do,
inside the QUIC connection (already encrypted, and authenticated to both endpoint ids by TLS).

Wire form (after the type byte; both bodies framed as ``[u32 LE length][body]``):

- request ``[version=1][nonce_d: 16][proof_d: 32]``, proof_d = HMAC(key, "mesh-llm admit v1
  dialer" ‖ dialer id ‖ acceptor id ‖ nonce_d);
- answer ``[nonce_a: 16][proof_a: 32]``, proof_a = HMAC(key, "mesh-llm admit v1 acceptor" ‖
  acceptor id ‖ dialer id ‖ nonce_d ‖ nonce_a).

A refusal is a connection close with :data:`REFUSED_CODE` and a reason starting ``refused:``,
which the refused side reads back with :func:`refusal_from_close_reason`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from typing import Final

from mesh_llm.errors import ProtocolError

__all__ = [
    "ADMIT_VERSION",
    "MESH_KEY_BYTES",
    "NONCE_BYTES",
    "REFUSED_CODE",
    "AdmitAnswer",
    "AdmitRequest",
    "Refusal",
    "acceptor_proof",
    "decode_admit_answer",
    "decode_admit_request",
    "dialer_proof",
    "encode_admit_answer",
    "encode_admit_request",
    "mesh_key_from_secret",
    "refusal_from_close_reason",
    "verify_acceptor",
    "verify_dialer",
]

MESH_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 16
PROOF_BYTES: Final = 32
ADMIT_VERSION: Final = 1
REFUSED_CODE: Final = 0x4D53
"""QUIC application close code of an admission refusal ("MS")."""

_REQUEST_BYTES: Final = 1 + NONCE_BYTES + PROOF_BYTES
_ANSWER_BYTES: Final = NONCE_BYTES + PROOF_BYTES
_DIALER_LABEL: Final = b"mesh-llm admit v1 dialer\0"
_ACCEPTOR_LABEL: Final = b"mesh-llm admit v1 acceptor\0"
_KEY_LABEL: Final = b"mesh-llm mesh-secret v1\0"
MIN_SECRET_CHARS: Final = 8


class Refusal(enum.StrEnum):
    """Why a node refused a connection (the text both sides show)."""

    SECRET_REQUIRED = "refused: this mesh requires a mesh secret"
    WRONG_SECRET = "refused: wrong mesh secret"
    NOT_PRIVATE = "refused: this mesh uses no mesh secret"
    BAD_ANSWER = "refused: the peer did not prove it knows the mesh secret"


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    nonce: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class AdmitAnswer:
    nonce: bytes
    proof: bytes


def mesh_key_from_secret(secret: str) -> bytes:
    """The 32-byte mesh key for a ``--mesh-secret`` (a one-way hash: tokens carry the key, so the
    user's words, perhaps used elsewhere, never leave the machine)."""
    text = secret.strip()
    if len(text) < MIN_SECRET_CHARS:
        raise ProtocolError(f"a mesh secret must be at least {MIN_SECRET_CHARS} characters")
    return hashlib.sha256(_KEY_LABEL + text.encode("utf-8")).digest()


def _check_key(key: bytes) -> None:
    if len(key) != MESH_KEY_BYTES:
        raise ProtocolError(f"a mesh key is {MESH_KEY_BYTES} bytes")


def dialer_proof(key: bytes, dialer: bytes, acceptor: bytes, nonce: bytes) -> bytes:
    _check_key(key)
    return hmac.digest(key, _DIALER_LABEL + dialer + acceptor + nonce, "sha256")


def acceptor_proof(
    key: bytes, acceptor: bytes, dialer: bytes, dialer_nonce: bytes, nonce: bytes
) -> bytes:
    _check_key(key)
    message = _ACCEPTOR_LABEL + acceptor + dialer + dialer_nonce + nonce
    return hmac.digest(key, message, "sha256")


def verify_dialer(key: bytes, dialer: bytes, acceptor: bytes, request: AdmitRequest) -> bool:
    expected = dialer_proof(key, dialer, acceptor, request.nonce)
    return hmac.compare_digest(expected, request.proof)


def verify_acceptor(
    key: bytes, acceptor: bytes, dialer: bytes, dialer_nonce: bytes, answer: AdmitAnswer
) -> bool:
    expected = acceptor_proof(key, acceptor, dialer, dialer_nonce, answer.nonce)
    return hmac.compare_digest(expected, answer.proof)


def _framed(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


def encode_admit_request(request: AdmitRequest) -> bytes:
    """The request body framed (without the stream type byte)."""
    return _framed(bytes([ADMIT_VERSION]) + request.nonce + request.proof)


def decode_admit_request(body: bytes) -> AdmitRequest:
    if len(body) != _REQUEST_BYTES:
        raise ProtocolError(f"admit request must be {_REQUEST_BYTES} bytes, got {len(body)}")
    if body[0] != ADMIT_VERSION:
        raise ProtocolError(f"admit request version {body[0]} is not {ADMIT_VERSION}")
    return AdmitRequest(body[1 : 1 + NONCE_BYTES], body[1 + NONCE_BYTES :])


def encode_admit_answer(answer: AdmitAnswer) -> bytes:
    return _framed(answer.nonce + answer.proof)


def decode_admit_answer(body: bytes) -> AdmitAnswer:
    if len(body) != _ANSWER_BYTES:
        raise ProtocolError(f"admit answer must be {_ANSWER_BYTES} bytes, got {len(body)}")
    return AdmitAnswer(body[:NONCE_BYTES], body[NONCE_BYTES:])


_CLOSED_BY_PEER = re.compile(r"closed by peer: (refused: .*) \(code (\d+)\)$")


def refusal_from_close_reason(close_reason: str | None) -> str | None:
    """The peer's refusal (``refused: …``) in a connection's close reason, None if it closed for
    another reason."""
    if not close_reason:
        return None
    match = _CLOSED_BY_PEER.search(close_reason.strip())
    if match is None or int(match.group(2)) != REFUSED_CODE:
        return None
    return match.group(1)
