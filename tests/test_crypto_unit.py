"""security/crypto.py by itself: what is sealed opens only with its key, its associated data
and its bytes unchanged; subkeys differ per purpose; a keyed digest is a stable HMAC."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fieldkit.security.crypto import (KEY_SIZE, NONCE_SIZE, TAG_SIZE, InvalidTag, Sealer, derive_subkey,
                                      keyed_digest, random_key)


def test_sizes_are_aes_256_gcm_with_96_bit_nonces():
    assert (KEY_SIZE, NONCE_SIZE, TAG_SIZE) == (32, 12, 16)
    assert Sealer.overhead == 28


def test_random_keys_are_32_bytes_and_differ():
    a, b = random_key(), random_key()
    assert len(a) == 32 and a != b


def test_sealed_bytes_open_to_the_plaintext_and_carry_nonce_and_tag():
    key = random_key()
    sealed = Sealer(key).seal(b"patient record", b"journal:7")
    assert len(sealed) == len(b"patient record") + 28
    assert b"patient record" not in sealed
    # an outside AES-GCM implementation reads it as nonce || ciphertext+tag
    assert AESGCM(key).decrypt(sealed[:12], sealed[12:], b"journal:7") == b"patient record"
    assert Sealer(key).open(sealed, b"journal:7") == b"patient record"


def test_two_seals_of_the_same_bytes_differ():
    s = Sealer(random_key())
    assert s.seal(b"x") != s.seal(b"x")


def test_empty_plaintext_round_trips():
    s = Sealer(random_key())
    assert s.open(s.seal(b"")) == b""


def test_wrong_key_moved_record_changed_byte_or_truncation_is_refused():
    key = random_key()
    s = Sealer(key)
    sealed = s.seal(b"abc", b"pos:1")
    with pytest.raises(InvalidTag):
        Sealer(random_key()).open(sealed, b"pos:1")
    with pytest.raises(InvalidTag):
        s.open(sealed, b"pos:2")
    with pytest.raises(InvalidTag):
        s.open(sealed)
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(InvalidTag):
        s.open(bytes(flipped), b"pos:1")
    for n in (0, 1, 27):
        with pytest.raises(InvalidTag):
            s.open(sealed[:n], b"pos:1")
    # exactly the overhead: nonce + tag of an empty plaintext opens
    assert s.open(s.seal(b""), b"") == b""
    assert len(s.seal(b"")) == 28


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_key_of_the_wrong_size_is_refused(size):
    with pytest.raises(ValueError, match="^AES-256-GCM needs a 32-byte key$"):
        Sealer(b"k" * size)


def test_subkeys_are_hkdf_sha256_per_purpose():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    data_key = bytes(range(32))
    db = derive_subkey(data_key, "db")
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fieldkit/db").derive(data_key)
    assert db == expected and len(db) == 32
    assert derive_subkey(data_key, "blob") != db
    assert derive_subkey(bytes(32), "db") != db
    assert derive_subkey(data_key, "db") == db


def test_keyed_digest_is_hmac_sha256_of_the_whole_stream():
    key = b"k" * 32
    chunks = [b"abc", b"", b"def"]
    expected = hmac.new(key, b"abcdef", hashlib.sha256).hexdigest()
    assert keyed_digest(key, chunks) == expected
    assert keyed_digest(key, iter([b"abcdef"])) == expected
    assert keyed_digest(b"j" * 32, chunks) != expected
    assert keyed_digest(key, []) == hmac.new(key, b"", hashlib.sha256).hexdigest()
