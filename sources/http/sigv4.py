"""Who may call the Invoke API: AWS Signature Version 4, checked with botocore's own signer.

boto3 and the AWS CLI sign every request with SigV4. The access keys lambdalite accepts come from
``LAMBDALITE_ACCESS_KEYS`` (``KEY_ID:SECRET`` pairs, comma-separated) and/or
``LAMBDALITE_ACCESS_KEYS_FILE`` (the AWS credentials-file format: sections with
``aws_access_key_id`` and ``aws_secret_access_key``). A request is checked in two steps: its
headers first (:meth:`SigV4.parse`: scheme, known key, a signing time within 5 minutes), so a
stranger's body is never read, then the signature over the body (:meth:`SigV4.verify`), computed
by botocore's ``SigV4Auth`` from the same canonical request the client built. botocore is imported
only when keys are configured, so a server without them does not pay for it.

Refusals carry Lambda's error types (all 403): ``MissingAuthenticationTokenException``,
``IncompleteSignatureException``, ``UnrecognizedClientException`` (an unknown key id) and
``InvalidSignatureException`` (a wrong signature, or one more than 5 minutes from our clock).
"""

from __future__ import annotations

import calendar
import configparser
import datetime
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.errors import ConfigError
from sources.http.errors import CallerAuthError

ALGORITHM = "AWS4-HMAC-SHA256"
SKEW = 300  # seconds a signing time may be from our clock, as AWS allows
SERVICE = "lambda"
_KEY_ID = re.compile(r"[A-Za-z0-9_+=,.@-]{1,128}")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AMZ_DATE_FORM = re.compile(r"\d{8}T\d{6}Z")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

MISSING = "MissingAuthenticationTokenException"
INCOMPLETE = "IncompleteSignatureException"
UNRECOGNIZED = "UnrecognizedClientException"
INVALID = "InvalidSignatureException"
_WRONG = ("The request signature we calculated does not match the signature you provided. Check your AWS "
          "Secret Access Key and signing method. Consult the service documentation for details.")


def parse_keys(spec: str) -> dict[str, str]:
    """``KEY_ID:SECRET[,KEY_ID:SECRET...]`` as a dict; raises ConfigError naming the bad entry's place."""
    keys: dict[str, str] = {}
    for n, entry in enumerate(spec.split(","), 1):
        entry = entry.strip()
        if not entry:
            continue
        key_id, sep, secret = entry.partition(":")
        key_id, secret = key_id.strip(), secret.strip()
        if not sep or not _KEY_ID.fullmatch(key_id) or not secret:
            raise ConfigError(f"LAMBDALITE_ACCESS_KEYS: entry {n} is not KEY_ID:SECRET "
                              "(key ids are letters, digits and _+=,.@-)")
        keys[key_id] = secret
    return keys


def read_keys_file(path: Path) -> dict[str, str]:
    """The key pairs of an AWS credentials file (every section that has both keys)."""
    parser = configparser.RawConfigParser()
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise ConfigError(f"LAMBDALITE_ACCESS_KEYS_FILE: cannot read {path}: {str(e).splitlines()[0]}") from None
    keys: dict[str, str] = {}
    for section in parser.sections():
        key_id = parser.get(section, "aws_access_key_id", fallback="").strip()
        secret = parser.get(section, "aws_secret_access_key", fallback="").strip()
        if not key_id and not secret:
            continue
        if not _KEY_ID.fullmatch(key_id) or not secret:
            raise ConfigError(f"LAMBDALITE_ACCESS_KEYS_FILE: {path}: section [{section}] needs "
                              "aws_access_key_id and aws_secret_access_key")
        keys[key_id] = secret
    if not keys:
        raise ConfigError(f"LAMBDALITE_ACCESS_KEYS_FILE: {path} holds no aws_access_key_id / "
                          "aws_secret_access_key pair")
    return keys


def load_keys(spec: str, path: Path | None) -> dict[str, str]:
    """Every configured key pair (the file's and the variable's; the variable wins a clash)."""
    keys = read_keys_file(path) if path is not None else {}
    keys.update(parse_keys(spec))
    return keys


@dataclass(frozen=True, slots=True)
class Signed:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header, checked for form."""

    key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str


def refuse(error_type: str, message: str) -> CallerAuthError:
    return CallerAuthError(error_type, message)


class SigV4:
    """Checks SigV4-signed requests against a set of access keys."""

    def __init__(self, keys: dict[str, str], clock: Callable[[], float] = time.time) -> None:
        # botocore is a runtime dependency, imported here only: a server with no keys never loads it.
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        self._auth, self._request, self._credentials = SigV4Auth, AWSRequest, Credentials
        self.keys = dict(keys)
        self.clock = clock

    def parse(self, authorization: str, amz_date: str) -> Signed:
        """Check the header's form, the key id and the signing time; raises :class:`CallerAuthError`."""
        if not authorization:
            raise refuse(MISSING, "Missing Authentication Token")
        scheme, _, rest = authorization.partition(" ")
        if scheme != ALGORITHM:
            raise refuse(INCOMPLETE, f"Authorization header requires the {ALGORITHM} scheme "
                                     "(or Bearer when LAMBDALITE_HTTP_TOKEN is set)")
        fields: dict[str, str] = {}
        for part in rest.split(","):
            name, _, value = part.strip().partition("=")
            fields[name] = value.strip()
        missing = [f for f in ("Credential", "SignedHeaders", "Signature") if not fields.get(f)]
        if missing:
            raise refuse(INCOMPLETE, f"Authorization header requires '{missing[0]}' parameter. "
                                     f"Authorization={authorization[:200]}")
        scope = fields["Credential"].split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            raise refuse(INCOMPLETE, "Credential should be scoped to a valid region, service and aws4_request: "
                                     f"{fields['Credential'][:200]!r}")
        key_id, date, region, service, _ = scope
        if service != SERVICE:
            raise refuse(INVALID, f"Credential should be scoped to correct service: '{SERVICE}'.")
        if key_id not in self.keys:
            raise refuse(UNRECOGNIZED, "The security token included in the request is invalid.")
        headers = tuple(fields["SignedHeaders"].split(";"))
        if "host" not in headers or "x-amz-date" not in headers:
            raise refuse(INCOMPLETE, "SignedHeaders must include host and x-amz-date")
        signed_at = _epoch(amz_date)
        if signed_at is None:
            raise refuse(INCOMPLETE, "X-Amz-Date is missing or not in the form YYYYMMDDTHHMMSSZ")
        if date != amz_date[:8]:
            raise refuse(INVALID, f"Date in Credential scope does not match YYYYMMDD from X-Amz-Date: {date}")
        now = self.clock()
        if signed_at < now - SKEW:
            raise refuse(INVALID, f"Signature expired: {amz_date} is now earlier than {_stamp(now - SKEW)} "
                                  f"({_stamp(now)} - 5 min.)")
        if signed_at > now + SKEW:
            raise refuse(INVALID, f"Signature not yet current: {amz_date} is still later than "
                                  f"{_stamp(now + SKEW)} ({_stamp(now)} + 5 min.)")
        return Signed(key_id, date, region, service, headers, fields["Signature"], amz_date)

    def verify(self, signed: Signed, method: str, raw_path: bytes, query: bytes,
               headers: Iterable[tuple[bytes, bytes]], body: bytes) -> str:
        """The caller's key id when ``signed.signature`` is right for this request; else raises.

        The request is rebuilt from the bytes as they came (path still percent-encoded, the query
        as sent, only the signed headers) and botocore computes the signature the client computed.
        """
        wanted = set(signed.signed_headers)
        chosen: dict[str, str] = {}
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            if name in wanted:
                value = raw_value.decode("latin-1")
                chosen[name] = f"{chosen[name]},{value}" if name in chosen else value
        if set(chosen) != wanted:
            absent = ", ".join(sorted(wanted - set(chosen)))
            raise refuse(INCOMPLETE, f"signed headers missing from the request: {absent}")
        content_sha = chosen.get("x-amz-content-sha256")
        actual = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
        if content_sha is not None and content_sha != actual:
            raise refuse(INVALID, "The provided 'x-amz-content-sha256' header does not match what was computed.")
        url = f"http://{chosen['host']}{raw_path.decode('latin-1')}" + (f"?{query.decode('latin-1')}" if query else "")
        request: Any = self._request(method=method, url=url, headers=chosen, data=body)
        request.context["timestamp"] = signed.amz_date
        auth = self._auth(self._credentials(signed.key_id, self.keys[signed.key_id]), signed.service, signed.region)
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        if not hmac.compare_digest(expected.encode(), signed.signature.encode()):
            raise refuse(INVALID, _WRONG)
        return signed.key_id


def _epoch(amz_date: str) -> int | None:
    """Seconds since the epoch of an ``X-Amz-Date`` (``20261206T091500Z``); None when malformed.
    (A fifth of ``time.strptime``'s time: this runs on every signed request.)"""
    if not _AMZ_DATE_FORM.fullmatch(amz_date):
        return None
    try:
        when = datetime.datetime(int(amz_date[:4]), int(amz_date[4:6]), int(amz_date[6:8]),
                                 int(amz_date[9:11]), int(amz_date[11:13]), int(amz_date[13:15]))
    except ValueError:  # the 31st of February
        return None
    return calendar.timegm(when.timetuple())


def _stamp(when: float) -> str:
    return time.strftime(_AMZ_DATE, time.gmtime(when))
