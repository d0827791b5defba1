"""Protocol probes' messages, pure: a DNS query and a Kerberos AS-REQ, and the verdict on an answer.

healthd (:mod:`anycastlb.healthd_main`) sends these from its asyncio loop, one
socket per check and no process per check. Only the standard library:

* DNS (RFC 1035): a query with one question and recursion desired; a resolver is
  healthy when it answers that query (same id, QR set, same question) with
  ``NOERROR``. The builder and reader live in the self-contained Icinga plugin
  :mod:`anycastlb.plugins.check_anycastlb_udp` (``--dns``), so both use one.
* Kerberos (RFC 4120): an AS-REQ for ``krbtgt/REALM@REALM`` from a client that
  does not exist (``anycastlb-healthcheck``). A KDC that serves the realm answers
  with a KRB-ERROR (client unknown, pre-authentication required ...) or an AS-REP;
  either proves it read the request and knows the realm. An error saying the
  realm or ``krbtgt`` is unknown, or the service is unavailable, is a failure.
"""

from __future__ import annotations

import secrets
import time

from .plugins.check_anycastlb_udp import DNS_RCODES, DNS_TYPES, dns_query, dns_verdict  # noqa: F401

# ------------------------------------------------------------------ DER (the subset Kerberos needs)


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _len(len(body)) + body


def _int(n: int) -> bytes:
    body = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return _tlv(0x02, body)


def _ctx(n: int, body: bytes) -> bytes:
    """An explicit context tag ``[n]``."""
    return _tlv(0xA0 | n, body)


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _gstr(text: str) -> bytes:
    return _tlv(0x1B, text.encode("ascii"))  # GeneralString (KerberosString, Realm)


def _principal(name_type: int, *parts: str) -> bytes:
    return _seq(_ctx(0, _int(name_type)), _ctx(1, _seq(*(_gstr(p) for p in parts))))


def _read(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """One TLV at ``pos``: ``(tag, body, next position)``; ValueError when truncated."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    else:
        length = first
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos:pos + length], pos + length


def _fields(body: bytes) -> dict[int, bytes]:
    """The explicitly tagged fields of a SEQUENCE body: ``{n: inner TLV body}``."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(body):
        tag, inner, pos = _read(body, pos)
        if tag & 0xE0 == 0xA0:
            _t, value, _ = _read(inner)
            out[tag & 0x1F] = value
    return out


KRB_CLIENT = "anycastlb-healthcheck"
#: Errors that say the KDC does not serve the realm (or cannot serve at all).
KRB_BAD_ERRORS = {7: "KDC_ERR_S_PRINCIPAL_UNKNOWN", 29: "KDC_ERR_SVC_UNAVAILABLE", 68: "KDC_ERR_WRONG_REALM"}
KRB_ERRORS = {6: "KDC_ERR_C_PRINCIPAL_UNKNOWN", 24: "KDC_ERR_PREAUTH_FAILED", 25: "KDC_ERR_PREAUTH_REQUIRED",
              14: "KDC_ERR_ETYPE_NOSUPP", 18: "KDC_ERR_CLIENT_REVOKED", **KRB_BAD_ERRORS}


def as_req(realm: str, nonce: int | None = None, now: float | None = None) -> bytes:
    """A DER AS-REQ for ``krbtgt/REALM@REALM`` from ``anycastlb-healthcheck@REALM``."""
    nonce = secrets.randbelow(2**31) if nonce is None else nonce
    till = time.strftime("%Y%m%d%H%M%SZ", time.gmtime((time.time() if now is None else now) + 3600))
    body = _seq(
        _ctx(0, _tlv(0x03, b"\x00" + bytes([0x40, 0x81, 0x00, 0x10]))),  # forwardable, renewable, canonicalize...
        _ctx(1, _principal(1, KRB_CLIENT)),                              # NT-PRINCIPAL
        _ctx(2, _gstr(realm)),
        _ctx(3, _principal(2, "krbtgt", realm)),                         # NT-SRV-INST
        _ctx(5, _tlv(0x18, till.encode("ascii"))),                       # GeneralizedTime
        _ctx(7, _int(nonce)),
        _ctx(8, _seq(_int(18), _int(17), _int(23))),                     # aes256, aes128, rc4
    )
    req = _seq(_ctx(1, _int(5)), _ctx(2, _int(10)), _ctx(4, body))
    return _tlv(0x6A, req)  # [APPLICATION 10]


def krb_verdict(realm: str, answer: bytes) -> tuple[bool, str]:
    """Whether ``answer`` (without a stream's 4-byte length) shows a KDC serving ``realm``, and why."""
    if not answer or answer[0] not in (0x6B, 0x7E):  # [APPLICATION 11] AS-REP, [APPLICATION 30] KRB-ERROR
        return False, f"not a Kerberos answer (tag 0x{answer[0]:02x})" if answer else "empty Kerberos answer"
    try:
        tag, body, _ = _read(answer)
        stag, seq, _ = _read(body)
        if stag != 0x30:
            raise ValueError("not a SEQUENCE")
        f = _fields(seq)
        if tag == 0x6B:  # KDC-REP: pvno [0] 5, msg-type [1] 11
            if f.get(0) != b"\x05" or f.get(1) != b"\x0b":
                raise ValueError("AS-REP without pvno 5 and msg-type 11")
            return True, "AS-REP"
        code = int.from_bytes(f[6], "big", signed=True) if 6 in f else None
        their_realm = f[9].decode("ascii", "replace") if 9 in f else ""
    except (ValueError, IndexError) as exc:
        return False, f"malformed Kerberos answer: {exc}"
    if code is None:
        return False, "KRB-ERROR without an error code"
    name = KRB_ERRORS.get(code, f"error {code}")
    if code in KRB_BAD_ERRORS:
        return False, f"KDC answers {name}"
    if their_realm != realm:
        return False, f"KDC answers for realm {their_realm!r}, not {realm!r} ({name})"
    return True, f"KDC of {realm} answers ({name})"
