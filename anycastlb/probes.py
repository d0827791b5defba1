"""Protocol probes' messages, pure: a DNS query and a Kerberos AS-REQ, and the verdict on an answer.

healthd (:mod:`anycastlb.healthd_main`) sends these from its asyncio loop, one
socket per check and no process per check. Only the standard library:

* DNS (RFC 1035): a query with one question and recursion desired; a resolver is
  healthy when it answers that query (same id, QR set, same question) with
  ``NOERROR``.
* Kerberos (RFC 4120): an AS-REQ for ``krbtgt/REALM@REALM`` whose client is that
  same principal, which only a KDC of the realm knows. Such a KDC answers with an
  AS-REP (MIT: a ticket sealed with the krbtgt key, useless to anyone else) or a
  KRB-ERROR refusing the client (policy, revoked, pre-authentication required:
  Heimdal, AD); either proves it read the request and knows the realm. "Client
  unknown" (what MIT krb5kdc answers for a realm it does not serve), "service
  unknown", "wrong realm" or "service unavailable" is a failure.

Both builders and readers live in the self-contained Icinga plugin
:mod:`anycastlb.plugins.check_anycastlb_udp` (``--dns``, ``--krb``), so healthd, the
plugin and the lab's probes use one of each.
"""

from __future__ import annotations

from .plugins.check_anycastlb_udp import (DNS_RCODES, DNS_TYPES, KRB_BAD_ERRORS, KRB_ERRORS,  # noqa: F401
                                          _ctx, _fields, _gstr, _int, _principal, _read, _seq, _tlv,
                                          as_req, dns_query, dns_verdict, krb_verdict)

