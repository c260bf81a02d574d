"""Key providers, one module (or package) per vault kind, chosen by key URI prefix.

Optional providers import their SDK lazily: ``https://`` (Azure Key Vault)
needs ``pip install 'cmkfs[azure]'``, ``pkcs11:`` needs ``pip install 'cmkfs[hsm]'``.
"""

from .base import KeyInfo, KeyProvider, provider_for, register_provider, split_key_uri

__all__ = ["KeyInfo", "KeyProvider", "provider_for", "register_provider", "split_key_uri"]
