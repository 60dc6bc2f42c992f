"""The private-mesh admission handshake's pure parts: key, proofs, wire form, refusals."""

from __future__ import annotations

import pytest

from mesh_llm.errors import ProtocolError
from mesh_llm.protocol.admission import (
    REFUSED_CODE,
    AdmitAnswer,
    AdmitRequest,
    Refusal,
    acceptor_proof,
    decode_admit_answer,
    decode_admit_request,
    dialer_proof,
    encode_admit_answer,
    encode_admit_request,
    mesh_key_from_secret,
    refusal_from_close_reason,
    verify_acceptor,
    verify_dialer,
)

D, A, X = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
NONCE_D, NONCE_A = bytes([7]) * 16, bytes([8]) * 16


def test_key_is_a_stable_one_way_hash_of_the_stripped_secret() -> None:
    key = mesh_key_from_secret("  correct horse  ")
    assert len(key) == 32
    assert key == mesh_key_from_secret("correct horse")
    assert key != mesh_key_from_secret("correct horsf")
    assert b"correct" not in key
    with pytest.raises(ProtocolError, match="at least 8"):
        mesh_key_from_secret("short")


def test_dialer_proof_binds_the_key_both_ids_and_the_nonce() -> None:
    key = mesh_key_from_secret("the mesh secret")
    request = AdmitRequest(NONCE_D, dialer_proof(key, D, A, NONCE_D))
    assert verify_dialer(key, D, A, request)
    assert not verify_dialer(mesh_key_from_secret("another secret"), D, A, request)
    assert not verify_dialer(key, X, A, request)  # replayed by another node
    assert not verify_dialer(key, D, X, request)  # replayed to another acceptor
    assert not verify_dialer(key, A, D, request)  # reflected back
    assert not verify_dialer(key, D, A, AdmitRequest(NONCE_A, request.proof))


def test_acceptor_proof_answers_this_dialer_nonce_and_differs_from_the_dialer_s() -> None:
    key = mesh_key_from_secret("the mesh secret")
    answer = AdmitAnswer(NONCE_A, acceptor_proof(key, A, D, NONCE_D, NONCE_A))
    assert verify_acceptor(key, A, D, NONCE_D, answer)
    assert not verify_acceptor(key, A, D, NONCE_A, answer)  # an old answer to another nonce
    assert not verify_acceptor(mesh_key_from_secret("another secret"), A, D, NONCE_D, answer)
    # A dialer's proof reflected as an answer does not verify (distinct labels).
    reflected = AdmitAnswer(NONCE_A, dialer_proof(key, A, D, NONCE_D + NONCE_A))
    assert not verify_acceptor(key, A, D, NONCE_D, reflected)


def test_wire_form_round_trips_and_rejects_bad_sizes_and_versions() -> None:
    proof = bytes(range(32))
    framed = encode_admit_request(AdmitRequest(NONCE_D, proof))
    assert framed[:4] == (49).to_bytes(4, "little")
    assert framed[4] == 1
    assert decode_admit_request(framed[4:]) == AdmitRequest(NONCE_D, proof)
    answer = encode_admit_answer(AdmitAnswer(NONCE_A, proof))
    assert decode_admit_answer(answer[4:]) == AdmitAnswer(NONCE_A, proof)
    with pytest.raises(ProtocolError):
        decode_admit_request(framed[4:-1])
    with pytest.raises(ProtocolError, match="version"):
        decode_admit_request(b"\x02" + framed[5:])
    with pytest.raises(ProtocolError):
        decode_admit_answer(answer[4:] + b"x")
    with pytest.raises(ProtocolError):
        dialer_proof(b"short key", D, A, NONCE_D)


def test_refusal_is_read_back_from_iroh_s_close_reason() -> None:
    reason = f"closed by peer: {Refusal.WRONG_SECRET.value} (code {REFUSED_CODE})"
    assert refusal_from_close_reason(reason) == "refused: wrong mesh secret"
    assert refusal_from_close_reason("closed by peer: refused: x (code 1)") is None
    assert refusal_from_close_reason("closed by peer: shutdown (code 19795)") is None
    assert refusal_from_close_reason("timed out") is None
    assert refusal_from_close_reason(None) is None
