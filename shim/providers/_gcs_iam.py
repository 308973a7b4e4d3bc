"""Signing as a Google service account through the IAM Credentials API's ``signBlob``.

A module of its own because it subclasses google-auth's classes: ``gcs`` imports it, and with it
google-auth, only when a GCS bucket's default credentials hold no key.
"""

from __future__ import annotations

import base64
import json
import threading
from urllib.parse import quote

import google.auth.credentials
import google.auth.crypt
import google.auth.transport.requests

from shim._errors import SigningError

IAM_TIMEOUT = 30.0  # seconds


class IamSigning(google.auth.credentials.Signing, google.auth.crypt.Signer):
    """Signs as a service account through the IAM Credentials API's ``signBlob``, authorised
    by ambient credentials that hold no key (google-auth refreshes their access token before
    it expires). Thread-safe."""

    def __init__(
        self,
        credentials: google.auth.credentials.Credentials,
        email: str | None,
        endpoint: str,
    ) -> None:
        self._credentials = credentials
        self._email = email
        self._endpoint = endpoint
        self._request = google.auth.transport.requests.Request()
        self._lock = threading.Lock()

    def _authorize(self, method: str, url: str, headers: dict[str, str]) -> None:
        # Refreshes the token first when it has expired or is about to.
        with self._lock:
            self._credentials.before_request(self._request, method, url, headers)  # type: ignore[no-untyped-call]

    @property
    def signer_email(self) -> str:
        if self._email is None:
            self._authorize("GET", self._endpoint, {})  # a refresh names the account
            email = getattr(self._credentials, "service_account_email", None)
            if not email or email == "default":
                raise SigningError(
                    "the default credentials name no service account: set "
                    "credentials.service_account_email"
                )
            self._email = email
        return self._email

    @property
    def signer(self) -> google.auth.crypt.Signer:
        return self

    @property
    def key_id(self) -> str | None:
        return None  # IAM picks the key

    def sign(self, message: str | bytes) -> bytes:
        return self.sign_bytes(message.encode() if isinstance(message, str) else message)

    def sign_bytes(self, message: bytes) -> bytes:
        email = self.signer_email
        url = f"{self._endpoint}/v1/projects/-/serviceAccounts/{quote(email, safe='@')}:signBlob"
        headers = {"Content-Type": "application/json"}
        self._authorize("POST", url, headers)
        body = json.dumps({"payload": base64.b64encode(message).decode()}).encode()
        response = self._request(
            url=url, method="POST", body=body, headers=headers, timeout=IAM_TIMEOUT
        )
        if response.status != 200:
            raise SigningError(
                f"the IAM signBlob API answered {response.status} when signing as {email!r} "
                "(the credentials need roles/iam.serviceAccountTokenCreator on it)"
            )
        return base64.b64decode(json.loads(response.data)["signedBlob"])
