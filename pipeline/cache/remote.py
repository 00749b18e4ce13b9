"""The shared cache: a backend of the store that speaks the Bazel HTTP cache protocol.

    GET/HEAD/PUT <url>/ac/<key>       kiln's action entry (JSON; HMAC-signed with a key)
    GET/HEAD/PUT <url>/cas/<sha256>   the bytes

so existing servers work unchanged: bazel-remote (started with --disable_http_ac_validation:
kiln's entries are not Bazel protobufs) or nginx with its DAV module. The remote is trusted no
more than the local disk: a blob streams to a temp file while it is hashed and is kept only
when the digest matches; an entry must be whole, and signed when a signing key is set.
Anything wrong is a miss, never an error. A server that is down or refuses the token costs
one warning (the same text from every stage, so the console says it once), and the run goes
on with local builds.

Settings: KILN_REMOTE=<url>, KILN_REMOTE_TOKEN (sent as 'Authorization: Bearer'),
KILN_REMOTE_MODE=read|write (default read: developers read, CI on main writes),
KILN_REMOTE_SIGNING_KEY. url and mode may also be in targets.yaml's `remote:`; the
environment wins. Secrets come only from the environment.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..stage import ConfigError
from .digest import canonical

TIMEOUT_S = (5, 60)          # connect, read
MODES = ("read", "write")


@dataclass(frozen=True)
class RemoteSettings:
    url: str
    mode: str = "read"
    token: str | None = None
    signing_key: str | None = None

    def __repr__(self) -> str:   # never print the secrets
        return f"RemoteSettings({self.url!r}, mode={self.mode!r})"


def settings(config_remote: Mapping, environ: Mapping[str, str]) -> RemoteSettings | None:
    """The remote to use, or None. The environment wins over targets.yaml's `remote:`."""
    url = environ.get("KILN_REMOTE") or config_remote.get("url")
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"KILN_REMOTE={url}: expected an http:// or https:// URL")
    mode = environ.get("KILN_REMOTE_MODE") or config_remote.get("mode") or "read"
    if mode not in MODES:
        raise ConfigError(f"KILN_REMOTE_MODE={mode}: expected 'read' or 'write'")
    return RemoteSettings(url.rstrip("/"), mode, environ.get("KILN_REMOTE_TOKEN") or None,
                          environ.get("KILN_REMOTE_SIGNING_KEY") or None)


class RemoteUnavailable(Exception):
    """The server cannot be used this run (down, or refuses us): the message says why once."""


@functools.lru_cache(maxsize=None)
def connect(remote: RemoteSettings) -> "Remote":
    """One client per process and settings, so a server found down is not retried by every
    stage of the run."""
    return Remote(remote)


class Remote:
    def __init__(self, remote: RemoteSettings):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry
        self.settings = remote
        self.session = requests.Session()
        retry = Retry(total=2, connect=1, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504),
                      allowed_methods={"GET", "HEAD", "PUT"}, raise_on_status=False)
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, HTTPAdapter(max_retries=retry, pool_maxsize=16))
        if remote.token:
            self.session.headers["Authorization"] = f"Bearer {remote.token}"
        self._unavailable: str | None = None
        self._lock = threading.Lock()
        self._bad_blobs: set[str] = set()   # served with other bytes: overwrite, never skip

    @property
    def writes(self) -> bool:
        return self.settings.mode == "write"

    # --- the protocol ---------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs):
        """The response, or None for 'not there'. Raises RemoteUnavailable when the server
        cannot be used: unreachable, or refusing the token (checked once per run)."""
        import requests
        if self._unavailable:
            raise RemoteUnavailable(self._unavailable)
        try:
            response = self.session.request(method, f"{self.settings.url}/{path}",
                                            timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as err:
            self._give_up(f"remote cache {self.settings.url} is unreachable "
                          f"({type(err).__name__}); building locally this run")
        if response.status_code in (401, 403):
            self._give_up(f"remote cache {self.settings.url} refused the token (HTTP "
                          f"{response.status_code}): check KILN_REMOTE_TOKEN; building locally "
                          "this run")
        if response.status_code == 404 or (method == "HEAD" and response.status_code != 200):
            return None
        if response.status_code >= 400:
            raise RemoteError(f"remote cache {self.settings.url}: {method} /{path.split('/')[0]}/"
                              f" answered HTTP {response.status_code}")
        return response

    def _give_up(self, message: str):
        with self._lock:
            self._unavailable = self._unavailable or message
        raise RemoteUnavailable(self._unavailable)

    def get_entry(self, key: str) -> dict | None:
        """The entry stored under key if present and (with a signing key) validly signed."""
        response = self._request("GET", f"ac/{key}")
        if response is None:
            return None
        try:
            stored = json.loads(response.content)
        except ValueError:
            return None
        if self.settings.signing_key is None:
            return stored if isinstance(stored, dict) else None
        if not (isinstance(stored, dict) and isinstance(stored.get("hmac"), str)
                and hmac.compare_digest(stored["hmac"], self._sign(key, stored.get("entry")))):
            raise RemoteError(f"remote cache entry {key[:12]} has no valid signature; rejected")
        return stored["entry"] if isinstance(stored["entry"], dict) else None

    def put_entry(self, key: str, entry: dict) -> None:
        body = entry if self.settings.signing_key is None else \
            {"entry": entry, "hmac": self._sign(key, entry)}
        self._request("PUT", f"ac/{key}", data=canonical(body).encode())

    def _sign(self, key: str, entry) -> str:
        # the key is signed too: a signed entry cannot be replayed under another action
        message = canonical({"key": key, "entry": entry}).encode()
        return hmac.new(self.settings.signing_key.encode(), message, hashlib.sha256).hexdigest()

    def open_blob(self, digest: str):
        """The streaming response for blob digest, or None when the server has none; the
        caller hashes what it reads (store.write_verified) and keeps it only on a match."""
        return self._request("GET", f"cas/{digest}", stream=True)

    def mark_bad(self, digest: str) -> None:
        """The server gave other bytes for digest: the next upload overwrites them."""
        with self._lock:
            self._bad_blobs.add(digest)

    def put_blob(self, digest: str, data: Path | bytes) -> None:
        """Upload a file's bytes (or bytes) under their digest, unless the server has them."""
        if digest not in self._bad_blobs and self._request("HEAD", f"cas/{digest}") is not None:
            return   # already there: content-addressed, so the same bytes
        if isinstance(data, bytes):
            self._request("PUT", f"cas/{digest}", data=data)
            return
        with open(data, "rb") as body:
            self._request("PUT", f"cas/{digest}", data=body)


class RemoteError(Exception):
    """One request went wrong (a bad answer, a bad signature): that lookup or upload is a miss."""
