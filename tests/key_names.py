"""Key URIs, key versions and wrap algorithms for the tests of docs/FORMAT.md 3.5:
names a header must not carry (HOSTILE) and every form the providers write
(LEGITIMATE).  Shared by the library's tests and the independent verifier's."""

from __future__ import annotations

from cmkfs.format import WrapAlgorithm
from cmkfs.providers.pkcs11 import PKCS11URI

A256GCM, RSA256, KWP, RSA1 = (
    WrapAlgorithm.A256GCM,
    WrapAlgorithm.RSA_OAEP_256,
    WrapAlgorithm.A256KWP,
    WrapAlgorithm.RSA_OAEP_SHA1,
)
AZ = "https://v.vault.azure.net/keys/x"
P11 = "pkcs11:token=t;object=o"
WRAPPED = {A256GCM: 60, RSA256: 256, KWP: 40, RSA1: 256}


HOSTILE = [
    # (key_uri, key_version, wrap_alg, why)
    ("local://k?version=\u00b2", "1", A256GCM, "query with a non-ASCII digit"),
    ("local://k?version=9", "1", A256GCM, "a version in a query: one key, many spellings"),
    ("local://k?foo=1", "1", A256GCM, "query"),
    ("local://k#frag", "1", A256GCM, "fragment"),
    ("local://k/v", "1", A256GCM, "path in a local name"),
    ("local://.k", "1", A256GCM, "name starting with a dot"),
    ("local://" + "k" * 65, "1", A256GCM, "name too long"),
    ("local://", "1", A256GCM, "empty name"),
    ("local://k\x1b[2J", "1", A256GCM, "terminal escape"),
    ("local://k\x00", "1", A256GCM, "NUL"),
    ("local://\u00e9quipe", "1", A256GCM, "non-ASCII"),
    ("local://k\u202e", "1", A256GCM, "bidi override"),
    ("local://k ", "1", A256GCM, "space"),
    ("", "1", A256GCM, "empty URI"),
    ("kms://k", "1", A256GCM, "unknown scheme"),
    ("LOCAL://k", "1", A256GCM, "scheme in the wrong case"),
    ("file:///etc/passwd", "1", A256GCM, "unknown scheme"),
    ("https://[/keys/x", "1", RSA256, "unparsable host"),
    ("https://[::1/keys/x", "1", RSA256, "unclosed IPv6 literal"),
    ("https://[fe80::1%25eth0]/keys/x", "1", RSA256, "zone identifier"),
    ("https://[v1.x]/keys/x", "1", RSA256, "IPvFuture"),
    ("https://v.vault.azure.net:99999/keys/x", "1", RSA256, "port out of range"),
    ("https://v.vault.azure.net:0/keys/x", "1", RSA256, "port zero"),
    ("https://v.vault.azure.net:08443/keys/x", "1", RSA256, "port with a leading zero"),
    ("https://v.vault.azure.net:/keys/x", "1", RSA256, "empty port"),
    ("https://v.vault.azure.net:x/keys/x", "1", RSA256, "port not a number"),
    ("https://user@v.vault.azure.net/keys/x", "1", RSA256, "user info"),
    ("https://-v.vault.azure.net/keys/x", "1", RSA256, "label starting with a dash"),
    ("https://v..net/keys/x", "1", RSA256, "empty label"),
    ("https://v_v.vault.azure.net/keys/x", "1", RSA256, "underscore in a host"),
    ("https://v.vault.azure.net./keys/x", "1", RSA256, "trailing dot"),
    ("https:///keys/x", "1", RSA256, "no host"),
    (AZ + "/0123abcd", "0123abcd", RSA256, "version segment"),
    (AZ + "/", "1", RSA256, "trailing slash"),
    (AZ + "?api-version=7.4", "1", RSA256, "query"),
    (AZ + "#x", "1", RSA256, "fragment"),
    ("https://v.vault.azure.net/secrets/x", "1", RSA256, "not a key"),
    ("https://v.vault.azure.net/keys/", "1", RSA256, "no key name"),
    ("https://v.vault.azure.net/keys/a_b", "1", RSA256, "underscore in an Azure name"),
    ("https://v.vault.azure.net/prefix/keys/x", "1", RSA256, "path before /keys/"),
    (P11 + "?module-path=/tmp/evil.so", "1", KWP, "a header must not choose a library"),
    (P11 + "?pin-source=file:/etc/shadow", "1", KWP, "a header must not choose a PIN file"),
    (P11 + "?version=1", "1", KWP, "version query"),
    (P11 + "#x", "1", KWP, "fragment"),
    ("pkcs11:object=o;token=t", "1", KWP, "attributes out of order"),
    ("pkcs11:token=t", "1", KWP, "no object"),
    ("pkcs11:token=;object=o", "1", KWP, "empty token"),
    (P11 + ";id=%01", "1", KWP, "unknown attribute"),
    (P11 + ";type=data", "1", KWP, "unknown type"),
    ("pkcs11:token=t;object=%c3%a9", "1", KWP, "lower-case percent-encoding"),
    ("pkcs11:token=t;object=%41", "1", KWP, "percent-encoding of a plain character"),
    ("pkcs11:token=t;object=%0A", "1", KWP, "control character in a label"),
    ("pkcs11:token=t;object=%C2%9B", "1", KWP, "C1 control character in a label"),
    ("pkcs11:token=t;object=%FF", "1", KWP, "label not UTF-8"),
    ("pkcs11:token=t;object=%4", "1", KWP, "truncated percent-encoding"),
    ("pkcs11:token=t;object=a/b", "1", KWP, "slash in a label"),
    ("pkcs11:token=t;object=\u00e9", "1", KWP, "raw non-ASCII label"),
    # versions
    ("local://k", "", A256GCM, "empty version"),
    ("local://k", "1\x1b]0;pwned\x07", A256GCM, "terminal escape in a version"),
    ("local://k", "\u00b2", A256GCM, "non-ASCII digit"),
    ("local://k", "01", A256GCM, "leading zero"),
    ("local://k", "1 ", A256GCM, "space"),
    ("local://k", "1\x00", A256GCM, "NUL"),
    ("local://k", "x1", A256GCM, "not decimal"),
    ("local://k", "9" * 21, A256GCM, "too long"),
    (AZ, "abc-def", RSA256, "dash in an Azure version"),
    (AZ, "a" * 65, RSA256, "Azure version too long"),
    (AZ, "", RSA256, "empty Azure version"),
    (P11, "xZZ", KWP, "not hex"),
    (P11, "xA0", KWP, "upper-case hex"),
    (P11, "x0", KWP, "odd hex"),
    (P11, "01", KWP, "leading zero"),
    (P11, "", KWP, "empty"),
    # scheme / algorithm pairs
    ("local://k", "1", KWP, "local:// wraps with A256GCM only"),
    ("local://k", "1", RSA256, "local:// wraps with A256GCM only"),
    (AZ, "1", A256GCM, "https:// wraps with RSA_OAEP_256 only"),
    (AZ, "1", RSA1, "https:// wraps with RSA_OAEP_256 only"),
    (P11, "1", A256GCM, "pkcs11: wraps with A256KWP or RSA_OAEP_SHA1"),
    (P11, "1", RSA256, "pkcs11: wraps with A256KWP or RSA_OAEP_SHA1"),
    (P11 + ";type=secret-key", "1", RSA1, "an AES key wraps with A256KWP"),
    (P11 + ";type=private", "1", KWP, "an RSA key wraps with RSA_OAEP_SHA1"),
]


def _azure_block_uri(uri: str) -> str:
    from cmkfs.providers.azure_keyvault import parse_key_uri

    vault, name, _ = parse_key_uri(uri)
    return f"{vault}/keys/{name}"  # what AzureKeyVaultProvider.wrap writes


LEGITIMATE = [
    ("local://k", "1", A256GCM),
    ("local://Sales_2025.q1-x", "12", A256GCM),
    ("local://-k", "5000", A256GCM),
    ("local://" + "k" * 64, "9" * 20, A256GCM),
    (_azure_block_uri("https://contoso.vault.azure.net/keys/sales/0123abcd"), "0123456789abcdef" * 2, RSA256),
    (_azure_block_uri("https://contoso.vault.azure.net/keys/sales/"), "V1", RSA256),
    (_azure_block_uri("https://127.0.0.1:8443/keys/k"), "abc", RSA256),
    (_azure_block_uri("https://hsm.managedhsm.azure.net/keys/k-1"), "1", RSA256),
    (_azure_block_uri("https://Contoso.Vault.Azure.CN:443/keys/K"), "1", RSA256),
    ("https://[::1]:8443/keys/k", "1", RSA256),
    ("https://[2001:db8::ffff:1.2.3.4]/keys/k", "1", RSA256),
    ("https://local.invalid/keys/" + "a" * 127, "b" * 64, RSA256),
    (P11, "1", KWP),
    (P11, "0", RSA1),
    (P11, "x", KWP),
    (P11, "x" + "0a" * 127, KWP),
    (P11 + ";type=secret-key", "2", KWP),
    (P11 + ";type=private", "3", RSA1),
    (P11 + ";type=public", "3", RSA1),
    (PKCS11URI(token="my token;1", object="\u00e9quipe finance=100% a/b?c#d~").canonical, "1", KWP),
    (PKCS11URI(token="t", object="[a]@!$'()*+,:-._~").canonical, "x00ff", RSA1),
]
