"""A real SMTP server on 127.0.0.1 that records the e-mail Apprise sends to it.

`SmtpServer` runs aiosmtpd in a background thread, without TLS, and accepts
AUTH PLAIN/LOGIN over the plain connection for one user and password, so a test
can put a password in the Apprise URL and see it used. `apprise_url()` gives the
plain form, `mailto://user:password@127.0.0.1:port?mode=insecure&from=...&to=...`;
`mailtos://` would start TLS. Imports nothing from watcher.
"""

import email
import email.policy
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.real.ports import LOOPBACK, free_port
from tests.real.waiting import wait_until

DEFAULT_WAIT_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 5.0
_BIND_ATTEMPTS = 5
SENDER = "watcher@example.test"
RECIPIENT = "ops@example.test"


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One message the server accepted (250) or refused (`status` says which).

    `login` is the user the client authenticated as, or None without AUTH.
    """

    sender: str
    recipients: tuple[str, ...]
    subject: str
    body: str
    login: str | None
    status: int


class SmtpServer:
    """Records mail on 127.0.0.1; use as a context manager or call `stop()`.

    `messages` holds the mail accepted with 250; `attempts` every DATA received,
    including those refused by `fail_next()`. AUTH succeeds only for `user` and
    `password`.
    """

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._attempts: list[ReceivedMail] = []
        self._failures: list[int] = []
        self._controller = self._start()
        self.port: int = self._controller.port

    @property
    def attempts(self) -> list[ReceivedMail]:
        """Return every message received, accepted or not, oldest first."""
        with self._lock:
            return list(self._attempts)

    @property
    def messages(self) -> list[ReceivedMail]:
        """Return the messages accepted with 250, oldest first."""
        with self._lock:
            return self._accepted()

    def apprise_url(self) -> str:
        """Return the Apprise URL that mails `RECIPIENT` through this server.

        `mode=insecure` keeps the connection plain. Apprise 2.3 already sends
        `mailto://` in the clear to a host it has no provider template for, but
        its documentation says secure connections are implied, so the URL asks
        for plain SMTP explicitly.
        """
        user, password = quote(self.user, safe=""), quote(self.password, safe="")
        return (
            f"mailto://{user}:{password}@{LOOPBACK}:{self.port}"
            f"?mode=insecure&from={SENDER}&to={RECIPIENT}&format=text"
        )

    def fail_next(self, count: int, status: int = 451) -> None:
        """Refuse the next `count` messages at DATA with `status` (4xx: try later)."""
        with self._lock:
            self._failures.extend([status] * count)

    def wait_for(
        self, count: int, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> list[ReceivedMail]:
        """Block until `count` messages were accepted and return them all.

        Raises:
            AssertionError: fewer arrived within `timeout` seconds; the message
                lists every attempt that did arrive.
        """

        def failure() -> str:
            seen = [(m.status, m.subject) for m in self._attempts]
            return f"expected {count} e-mail(s) within {timeout} s, got {len(self._accepted())}; attempts: {seen!r}"

        return wait_until(
            self._arrived,
            lambda: len(self._accepted()) >= count,
            self._accepted,
            timeout=timeout,
            failure=failure,
        )

    def stop(self) -> None:
        """Stop serving and join the thread; safe to call twice."""
        if self._controller.loop.is_closed():
            return

        self._controller.stop()
        self._controller.loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # aiosmtpd handler hooks, called on the server's event loop.

    async def handle_DATA(  # noqa: N802 - the name aiosmtpd looks up
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        with self._arrived:
            status = self._failures.pop(0) if self._failures else 250
            self._attempts.append(_parse(envelope, session, status))
            self._arrived.notify_all()

        if status == 250:
            return "250 Message accepted for delivery"
        return f"{status} Refused by the test (fail_next)"

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        accepted = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(),
            auth_data.password.decode(),
        ) == (self.user, self.password)
        return AuthResult(success=accepted, handled=False, auth_data=auth_data)

    def _accepted(self) -> list[ReceivedMail]:
        return [m for m in self._attempts if m.status == 250]

    def _start(self) -> Controller:
        # The port is free when chosen but may be taken before aiosmtpd binds it.
        for attempt in range(_BIND_ATTEMPTS):
            controller = Controller(
                self,
                hostname=LOOPBACK,
                port=free_port(),
                ready_timeout=READY_TIMEOUT_SECONDS,
                authenticator=self._authenticate,
                auth_require_tls=False,
            )
            try:
                controller.start()
            except OSError:
                controller.loop.close()
                if attempt == _BIND_ATTEMPTS - 1:
                    raise
            else:
                return controller

        msg = "unreachable: the last bind attempt raises"
        raise AssertionError(msg)


def _parse(envelope: Envelope, session: Session, status: int) -> ReceivedMail:
    raw = envelope.original_content or b""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(preferencelist=("plain", "html"))
    body = part.get_content() if isinstance(part, EmailMessage) else ""
    # `_authenticate` hands aiosmtpd the LoginPassword it accepted; aiosmtpd's
    # annotations say the attribute is always None.
    auth_data: object = session.auth_data
    login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None
    return ReceivedMail(
        sender=envelope.mail_from or "",
        recipients=tuple(envelope.rcpt_tos),
        subject=str(message.get("Subject", "")),
        body=body,
        login=login,
        status=status,
    )
