"""The contract every key provider passes against its real backend.

A provider's test module subclasses :class:`ProviderContract` and supplies a
``backend`` fixture returning an object with:

* ``provider``   - the :class:`~cmkfs.providers.base.KeyProvider` under test
* ``key_uri``    - an unversioned URI of an enabled wrapping key
* ``other_key_uri`` - a second, unrelated enabled key of the same backend
* ``missing_key_uri`` - a well-formed URI naming no key
* ``disable()`` / ``enable()`` - revoke and restore ``key_uri`` in the backend
* ``rotate()``   - create a new version of ``key_uri``, return its version
"""

from __future__ import annotations

import os
import pickle
from dataclasses import replace

import pytest

from cmkfs.errors import CMKError, IntegrityError, KeyNotFoundError, KeyRevokedError
from cmkfs.format import KeyBlock


class ProviderContract:
    def test_wrap_unwrap_round_trip(self, backend):
        dek = os.urandom(32)
        block = backend.provider.wrap(backend.key_uri, dek)
        assert isinstance(block, KeyBlock)
        assert bytes(backend.provider.unwrap(block)) == dek

    def test_key_block_names_key_and_version(self, backend):
        block = backend.provider.wrap(backend.key_uri, os.urandom(32))
        assert backend.provider.canonical_uri(block.key_uri) == backend.provider.canonical_uri(backend.key_uri)
        assert block.key_version
        assert backend.provider.describe(backend.key_uri).current_version == block.key_version

    def test_wrapped_key_hides_the_dek(self, backend):
        dek = os.urandom(32)
        block = backend.provider.wrap(backend.key_uri, dek)
        assert dek not in block.wrapped_dek
        assert dek.hex() not in repr(block)

    def test_each_wrap_differs_or_is_deterministic_but_unwraps(self, backend):
        dek = os.urandom(32)
        a = backend.provider.wrap(backend.key_uri, dek)
        b = backend.provider.wrap(backend.key_uri, dek)
        assert bytes(backend.provider.unwrap(a)) == bytes(backend.provider.unwrap(b)) == dek

    def test_tampered_wrapped_key_is_refused(self, backend):
        block = backend.provider.wrap(backend.key_uri, os.urandom(32))
        for pos in (0, len(block.wrapped_dek) // 2, len(block.wrapped_dek) - 1):
            bad = bytearray(block.wrapped_dek)
            bad[pos] ^= 0x01
            with pytest.raises(IntegrityError):
                backend.provider.unwrap(replace(block, wrapped_dek=bytes(bad)))

    def test_wrong_key_is_refused(self, backend):
        block = backend.provider.wrap(backend.key_uri, os.urandom(32))
        other = backend.provider.wrap(backend.other_key_uri, os.urandom(32))
        foreign = replace(block, key_uri=other.key_uri, key_version=other.key_version)
        with pytest.raises(CMKError):
            backend.provider.unwrap(foreign)

    def test_missing_key_is_not_found(self, backend):
        with pytest.raises(KeyNotFoundError):
            backend.provider.wrap(backend.missing_key_uri, os.urandom(32))

    def test_disabled_key_refuses_wrap_and_unwrap(self, backend):
        dek = os.urandom(32)
        block = backend.provider.wrap(backend.key_uri, dek)
        backend.disable()
        try:
            with pytest.raises(KeyRevokedError):
                backend.provider.unwrap(block)
            with pytest.raises(KeyRevokedError):
                backend.provider.wrap(backend.key_uri, os.urandom(32))
            assert backend.provider.describe(backend.key_uri).enabled is False
        finally:
            backend.enable()
        assert bytes(backend.provider.unwrap(block)) == dek

    def test_rotation_uses_new_version_and_old_still_unwraps(self, backend):
        dek = os.urandom(32)
        old = backend.provider.wrap(backend.key_uri, dek)
        new_version = backend.rotate()
        assert new_version != old.key_version
        new = backend.provider.wrap(backend.key_uri, dek)
        assert new.key_version == new_version
        assert backend.provider.describe(backend.key_uri).current_version == new_version
        assert bytes(backend.provider.unwrap(old)) == dek
        assert bytes(backend.provider.unwrap(new)) == dek

    def test_provider_refuses_to_pickle_and_hides_secrets(self, backend):
        with pytest.raises(TypeError):
            pickle.dumps(backend.provider)
        text = repr(backend.provider)
        assert "BEGIN" not in text and "pin" not in text.lower().replace("pinned", "")
