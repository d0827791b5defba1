"""The fleet's ACME issuer: one client (certbot's ``acme`` library) for every ``tls: {acme: true}`` service.

Pure core, no Salt: the runner and the schedule on the issuer call :func:`renew` with
the issuer's ``acme`` node model and the store directory. For each certificate that is
missing, due (less lifetime left than ``renew_before``), covers other names than the
catalog asks for, or is forced, it:

1. generates a new private key on the issuer (EC P-256) and a CSR for the names;
2. orders the certificate; answers the HTTP-01 challenges from a small token server on
   the issuer's address (every LB node routes ``/.well-known/acme-challenge/`` there, so
   the CA may reach any of them);
3. checks the bundle (:func:`anycastlb.certs.check_bundle`) and only then replaces the
   stored one (0600 in a 0700 directory). A failure keeps the old bundle and is
   reported; the monitoring's expiry check warns once the old one nears its end.

The store is read by the ext_pillar (:func:`load_store`): each LB node of the service's
cluster receives the bundle in its secrets slice, and the haproxy step hot-loads it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from .certs import cert_info, check_bundle, split_bundle

ACCOUNT_KEY = "account.key"
STATE = "state.json"


class IssueError(RuntimeError):
    """The CA (or the way to it) refused an issuance; the old certificate stays."""


# ------------------------------------------------------------------ the store
def _secure_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_secret(path: Path, text: str, exclusive: bool = False) -> bool:
    """Write ``text`` atomically, 0600 from the start. ``exclusive``: only if ``path`` does not exist yet
    (the master's pillar workers may race to write the same placeholder: one wins, every reader sees it);
    returns whether this call wrote it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def load_store(directory: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """The issued certificates as the secrets store holds certificates: ``{name: {cert, key}}``."""
    out: dict[str, dict[str, str]] = {}
    base = Path(directory)
    if not base.is_dir():
        return out
    for f in sorted(base.glob("*.pem")):
        certs, keys = split_bundle(f.read_text(encoding="utf-8"))
        if certs and len(keys) == 1:
            out[f.stem] = {"cert": "\n".join(certs) + "\n", "key": keys[0] + "\n"}
    return out


# ------------------------------------------------------------------ HTTP-01 token server
class TokenServer:
    """Serves ``/.well-known/acme-challenge/<token>`` on (address, port) while a ``with`` block runs."""

    def __init__(self, address: str, port: int, path: str = "/.well-known/acme-challenge/") -> None:
        self.tokens: dict[str, str] = {}
        self.requests: list[str] = []
        tokens, seen, prefix = self.tokens, self.requests, path

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                token = self.path[len(prefix):] if self.path.startswith(prefix) else None
                body = tokens.get(token or "")
                seen.append(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/plain")
                data = (body or "not found\n").encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "TokenServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ one issuance
def _new_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _account_key(store: Path) -> Any:
    import josepy as jose
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    path = store / ACCOUNT_KEY
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_secret(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode())
    return jose.JWKRSA(key=key)


def _client(acme: dict[str, Any], store: Path, eab_hmac: str | None, verify: str | bool) -> tuple[Any, Any]:
    """An ACME client with the fleet's account (registered on first use)."""
    from acme import client, errors, messages
    key = _account_key(store)
    net = client.ClientNetwork(key, user_agent="anycastlb", verify_ssl=verify)  # type: ignore[arg-type]  # requests' verify: a CA file too
    directory = client.ClientV2.get_directory(acme["directory"], net)
    acme_client = client.ClientV2(directory, net=net)
    eab = None
    if acme.get("eab"):
        if not eab_hmac:
            raise IssueError(f"the EAB key {acme['eab']['secret']!r} is not in the secrets store (acme_eab)")
        eab = messages.ExternalAccountBinding.from_data(account_public_key=key.public_key(),
                                                        kid=acme["eab"]["key_id"], hmac_key=eab_hmac,
                                                        directory=directory)
    reg = messages.NewRegistration.from_data(email=acme["contact"], terms_of_service_agreed=True,
                                             external_account_binding=eab)
    try:
        acme_client.new_account(reg)
    except errors.ConflictError as exc:   # the key has an account already
        regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        acme_client.net.account = regr
        acme_client.net.account = acme_client.query_registration(regr)
    return acme_client, key


def issue(acme: dict[str, Any], domains: list[str], store: Path, tokens: TokenServer,
          eab_hmac: str | None = None, verify: str | bool = True, timeout: float = 90.0) -> str:
    """A new bundle (full chain, then a fresh key) for ``domains``; raises :class:`IssueError`."""
    from acme import challenges, crypto_util, messages
    from acme import errors as acme_errors
    try:
        acme_client, account_key = _client(acme, store, eab_hmac, verify)
        key_pem = _new_key_pem()
        csr = crypto_util.make_csr(key_pem.encode(), domains)
        order = acme_client.new_order(csr)
        answers = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue   # the CA reuses a recent validation of this name (Let's Encrypt: 30 days)
            http01 = [c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)]
            if not http01:
                raise IssueError(f"the CA offers no HTTP-01 challenge for {authz.body.identifier.value}")
            response, validation = http01[0].response_and_validation(account_key)
            tokens.tokens[http01[0].chall.encode("token")] = validation
            answers.append((http01[0], response))
        for chall, response in answers:
            acme_client.answer_challenge(chall, response)
        deadline = dt.datetime.now() + dt.timedelta(seconds=timeout)
        order = acme_client.poll_and_finalize(order, deadline=deadline)
    except IssueError:
        raise
    except (acme_errors.Error, OSError, ValueError) as exc:
        raise IssueError(f"{type(exc).__name__}: {str(exc)[:300]}") from None
    except Exception as exc:  # pylint: disable=broad-except  # requests' errors and the CA's problem documents
        raise IssueError(f"{type(exc).__name__}: {str(exc)[:300]}") from None
    return order.fullchain_pem.strip() + "\n" + key_pem.strip() + "\n"


def placeholder(domains: list[str], days: int = 1) -> str:
    """A self-signed bundle for ``domains``: what HAProxy binds with before the first issuance (the
    challenge path must be live on every LB node before the CA can validate). It is due at once."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    key_pem = _new_key_pem()
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
            .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM).decode() + key_pem


def ensure_placeholders(acme: dict[str, Any], store_dir: str | os.PathLike[str]) -> list[str]:
    """Write a placeholder for every ACME certificate the store lacks; the names written."""
    store = Path(store_dir)
    _secure_dir(store)
    made = []
    for entry in acme["certificates"]:
        path = store / f"{entry['name']}.pem"
        if not path.exists() and _write_secret(path, placeholder(entry["domains"]), exclusive=True):
            made.append(entry["name"])
    return made


# ------------------------------------------------------------------ the renewal pass
@dataclass
class Outcome:
    """What happened to one certificate in a renewal pass."""

    name: str
    result: str              # issued, kept, failed
    reason: str
    serial: str | None = None
    not_after: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def due(entry: dict[str, Any], bundle: str | None, renew_before_ms: int, now: dt.datetime) -> str | None:
    """Why ``entry`` needs a (new) certificate, or None when the stored one is good."""
    if bundle is None:
        return "no certificate yet"
    try:
        info = cert_info(bundle)
    except ValueError:
        return "the stored certificate cannot be read"
    if info.remaining(now) < dt.timedelta(milliseconds=renew_before_ms):
        return f"{info.remaining(now).total_seconds() / 86400:.1f} days left (renew_before " \
               f"{renew_before_ms / 86_400_000:g} days)"
    if sorted(names_of(bundle)) != sorted(entry["domains"]):
        return "the names changed"
    return None


def names_of(bundle: str) -> list[str]:
    """The DNS names of a bundle's leaf certificate."""
    from cryptography import x509
    certs, _ = split_bundle(bundle)
    cert = x509.load_pem_x509_certificate(certs[0].encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)]


def renew(acme: dict[str, Any], store_dir: str | os.PathLike[str], service: str | None = None,
          force: bool = False, eab_hmac: str | None = None, verify: str | bool = True,
          now: dt.datetime | None = None, listen: tuple[str, int] | None = None,
          issue_fn: Callable[..., str] = issue) -> list[Outcome]:
    """Renew what is due (or ``force``), one service or all; the old bundle stays on any failure."""
    store = Path(store_dir)
    _secure_dir(store)
    now = now or dt.datetime.now(dt.timezone.utc)
    wanted = [c for c in acme["certificates"] if service is None or c["service"] == service]
    todo: list[tuple[dict[str, Any], str]] = []
    outcomes: list[Outcome] = []
    for entry in wanted:
        path = store / f"{entry['name']}.pem"
        bundle = path.read_text(encoding="utf-8") if path.exists() else None
        why = "forced" if force else due(entry, bundle, acme["renew_before_ms"], now)
        if why is None:
            info = cert_info(bundle)  # type: ignore[arg-type]
            outcomes.append(Outcome(entry["name"], "kept", "not due", info.serial, f"{info.not_after:%Y-%m-%dT%H:%MZ}"))
        else:
            todo.append((entry, why))
    if not todo:
        return outcomes
    address, port = listen or (acme["challenge"]["address"], acme["challenge"]["port"])
    try:
        server = TokenServer(address, port, acme["challenge"]["path"])
    except OSError as exc:
        return outcomes + [Outcome(e["name"], "failed", f"{why}; the token server cannot listen on "
                                   f"{address}:{port}: {exc.strerror}; the old certificate stays") for e, why in todo]
    with server:
        for entry, why in todo:
            path = store / f"{entry['name']}.pem"
            try:
                bundle = issue_fn(acme, entry["domains"], store, server, eab_hmac=eab_hmac, verify=verify)
                problems = check_bundle(bundle)
                if problems:
                    raise IssueError("the issued bundle is refused: " + "; ".join(problems))
            except IssueError as exc:
                outcomes.append(Outcome(entry["name"], "failed", f"{why}; {exc}; the old certificate stays"))
                continue
            _write_secret(path, bundle)
            info = cert_info(bundle)
            outcomes.append(Outcome(entry["name"], "issued", why, info.serial, f"{info.not_after:%Y-%m-%dT%H:%MZ}"))
    _write_secret(store / STATE, json.dumps({"at": f"{now:%Y-%m-%dT%H:%M:%SZ}",
                                             "outcomes": [o.as_dict() for o in outcomes]}, indent=1) + "\n")
    return outcomes


#: Where the issuer keeps its account key and the issued bundles unless ``acme_store`` says otherwise.
DEFAULT_STORE = "/etc/anycastlb/acme"
Cmd = Callable[..., dict[str, tuple[int, Any]]]


def renew_fleet(config: dict[str, Any], cmd: Cmd, service: str | None = None, force: bool = False,
                verify: str | bool | None = None) -> dict[str, Any]:
    """The master's renewal pass (``salt-run anycastlb.renew``, and the issuer's schedule): renew what is
    due on the issuer's model, have each receiving LB node refresh its pillar and apply haproxy (a
    hot-load), and report the outcomes to the monitoring nodes (their ``acme renewal`` checks).

    ``config`` is the ext_pillar's ``anycastlb`` entry: ``catalog``, ``secrets``, ``acme_store``, and
    optionally ``acme_directory`` (another ACME directory than the catalog's, e.g. a staging CA or the
    lab's) and ``acme_ca`` (a CA file to trust for it). ``cmd`` runs an execution function on minions
    (the runner's LocalClient adapter).
    """
    from .orchestrate.lint import CACHE  # the deploy's own compilation when it runs at its end

    if not config.get("catalog"):
        return {"result": False, "comment": "the catalog cannot be compiled: no catalog configured"}
    compiled = CACHE.get(config["catalog"], config.get("secrets") or None)
    if compiled.refused is not None or compiled.fleet is None:
        return {"result": False, "comment": f"the catalog cannot be compiled: {compiled.refused}"}
    fleet, secrets = compiled.fleet, compiled.store
    issuer = next((nid for nid in fleet.nodes if fleet.nodes[nid].get("acme")), None)
    if issuer is None:
        return {"result": True, "comment": "no service asks for an ACME certificate", "outcomes": []}
    acme: dict[str, Any] = dict(fleet.nodes[issuer]["acme"] or {})
    if config.get("acme_directory"):
        acme["directory"] = config["acme_directory"]
    if verify is None:
        verify = config.get("acme_ca") or True
    if service is not None and service not in {c["service"] for c in acme["certificates"]}:
        return {"result": False, "comment": f"service {service!r} has no ACME certificate"}
    store = config.get("acme_store") or DEFAULT_STORE
    made = ensure_placeholders(acme, store)
    eab = ((secrets or {}).get("acme_eab") or {}).get(acme["eab"]["secret"]) if acme.get("eab") else None
    outcomes = renew(acme, store, service=service, force=force, eab_hmac=eab, verify=verify)
    changed = {o.name for o in outcomes if o.result == "issued"} | set(made)
    nodes = sorted({n for c in acme["certificates"] if c["name"] in changed for n in c["nodes"]})
    applied: dict[str, Any] = {}
    if nodes:
        cmd(nodes, "saltutil.refresh_pillar", {"wait": True})
        for node, (rc, ret) in sorted(cmd(nodes, "anycastlb.apply", {"daemon": "haproxy"}, wait=120).items()):
            applied[node] = ret.get("comment") if isinstance(ret, dict) else str(ret)
            if rc:
                applied[node] = f"FAILED: {applied[node]}"
        for node in set(nodes) - set(applied):
            applied[node] = "FAILED: did not answer"
    monitors = sorted(n for n, m in fleet.nodes.items() if "monitoring" in m["roles"])
    reported: dict[str, str] = {}
    if monitors:
        report = [o.as_dict() for o in outcomes]
        for node, (rc, ret) in sorted(cmd(monitors, "anycastlb.acme_report",
                                          {"outcomes": report, "issuer": issuer}).items()):
            reported[node] = "FAILED: " + str(ret)[:200] if rc else "reported"
        for node in set(monitors) - set(reported):
            reported[node] = "FAILED: did not answer"
    failed = [o for o in outcomes if o.result == "failed"] + [n for n, c in applied.items() if c.startswith("FAILED")]
    return {"result": not failed, "issuer": issuer, "placeholders": made,
            "outcomes": [o.as_dict() for o in outcomes], "applied": applied, "reported": reported,
            "comment": f"{sum(o.result == 'issued' for o in outcomes)} issued, "
                       f"{sum(o.result == 'kept' for o in outcomes)} kept, "
                       f"{sum(o.result == 'failed' for o in outcomes)} failed; haproxy applied on "
                       f"{len(applied)} node(s); reported to {len(reported)} monitoring node(s)"}


def main(argv: list[str] | None = None) -> int:
    """``python -m anycastlb.acme_issuer MODEL.json STORE [--service S] [--force] [--ca FILE]``: one renewal
    pass with the issuer's ``acme`` node model; prints the outcomes as JSON; exit 1 if any failed."""
    import argparse
    ap = argparse.ArgumentParser(prog="anycastlb.acme_issuer")
    ap.add_argument("model", help="the issuer's node model (JSON) or its acme section")
    ap.add_argument("store", help="the certificate store directory (0700)")
    ap.add_argument("--service")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--ca", help="CA file to trust for the ACME directory (a lab CA)")
    ap.add_argument("--placeholders", action="store_true", help="only write placeholders for missing ones")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.model).read_text(encoding="utf-8"))
    acme = doc.get("acme", doc) if "certificates" not in doc else doc
    if args.placeholders:
        print(json.dumps({"placeholders": ensure_placeholders(acme, args.store)}))
        return 0
    outcomes = renew(acme, args.store, service=args.service, force=args.force, verify=args.ca or True)
    print(json.dumps([o.as_dict() for o in outcomes], indent=1))
    return 1 if any(o.result == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
