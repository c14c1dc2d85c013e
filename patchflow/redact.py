"""The one redaction point: no password reaches a terminal, a log, the history or a host's stream.

Two nets, both applied by :func:`redact`:

* **shapes**: the password of every URL in the text (``scheme://user:SECRET@host``) and every
  ``password=SECRET`` (a libpq connection string or URL query parameter), whatever the password;
* **known values**: every secret this process has seen (:func:`remember`), in the forms it can
  take in a message: as written, percent-decoded, percent-encoded. libpq repeats a malformed
  password in its error text without any URL around it (``invalid percent-encoded token:
  "s3cr%zz"``); only the known value catches that.

:func:`patchflow.config.load_settings` remembers the passwords of ``DATABASE_URL`` and
``PATCHFLOW_DATABASE_ADMIN_URL``, ``PGPASSWORD`` and every ``.env`` / environment value whose name
says it is a secret (``*PASSWORD*``, ``*SECRET*``, ``*TOKEN*``, ``*_KEY``, ``*CREDENTIALS*``). The
consoles (:mod:`patchflow.console`) write through :class:`RedactingStream`; the operation log and
the history redact each line before it is written.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

MASK = "***"
#: The shortest value remembered as a secret (shorter ones would mask ordinary words).
MIN_SECRET = 4
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|_KEY$|^KEY$|CREDENTIAL|PRIVATE", re.IGNORECASE)
# the password runs to the last "@" of the URL (a hostile one may hold "@", ":" or "/" unescaped)
# bounded repetitions: a long line without a URL must not cost quadratic time
URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^\s:/@'\"]{0,256}:)(?P<secret>[^\s'\"]{1,512})(?=@)"
)
PARAM_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&#'\"]+)", re.IGNORECASE)

_known: set[str] = set()
_pattern: re.Pattern[str] | None = None
_lock = threading.Lock()


def mask_url(url: str) -> str:
    """Hide the password of a URL: ``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``,
    and a libpq ``password=`` query parameter (``?password=secret`` -> ``?password=***``)."""
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def url_secrets(url: str) -> list[str]:
    """The password(s) in ``url`` as written (userinfo, ``password=``), found by shape even when the
    URL is malformed (a bad ``%`` escape)."""
    found = [m.group("secret") for m in URL_PASSWORD.finditer(url)]
    found += [m.group("secret").strip("'") for m in PARAM_PASSWORD.finditer(url)]
    return found


def remember(values: Iterable[str]) -> None:
    """Treat each of ``values`` (and its percent-decoded and -encoded forms) as a secret from now on;
    values shorter than :data:`MIN_SECRET` characters are ignored."""
    global _pattern
    with _lock:
        for value in values:
            for form in {value, unquote(value), quote(value, safe="")}:
                if len(form) >= MIN_SECRET:
                    _known.add(form)
        if _known:
            alternatives = "|".join(re.escape(v) for v in sorted(_known, key=len, reverse=True))
            _pattern = re.compile(alternatives)


def _shown_words(url: str) -> set[str]:
    """The parts of ``url`` printed anyway (user, host, database, path): a password equal to one of
    them (``primeflow:primeflow@db/primeflow``) hides nothing, and masking it would mask every
    path and name holding that word."""
    try:
        parts = urlsplit(url)
        words = {parts.username or "", parts.hostname or "", *parts.path.split("/")}
    except ValueError:
        return set()
    return {w for w in words if w}


def remember_settings(url: str, admin_url: str, environ: Mapping[str, str], dotenv: Mapping[str, str]) -> None:
    """Remember the secrets of a checkout's settings (see the module docstring); a password that is
    also its URL's user, host or database name is not one (:func:`_shown_words`)."""
    values = url_secrets(url) + url_secrets(admin_url)
    for mapping in (dotenv, environ):
        for name, value in mapping.items():
            if not value:
                continue
            if SECRET_NAME.search(name) and not _plain(value):
                values.append(value)
            elif name.endswith("NOTIFY_URLS"):  # Apprise URLs carry their tokens in the path
                for url in value.split(","):
                    values += [url.strip(), *(part for part in url.split("://", 1)[-1].split("/") if len(part) >= 8)]
            elif "://" in value or "password=" in value.lower():
                values += url_secrets(value)
    urls = [
        url,
        admin_url,
        *(v for m in (dotenv, environ) for k, v in m.items() if v and "://" in v and not k.endswith("NOTIFY_URLS")),
    ]
    shown = set().union(*(_shown_words(u) for u in urls))
    remember(v for v in values if v not in shown)


def _plain(value: str) -> bool:
    """A value no secret is made of (a number, a boolean): ``ACCESS_TOKEN_TTL=3600``."""
    return value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "") or value.strip().isdigit()


def redact_value(value: Any) -> Any:
    """``value`` (a JSON-like structure: dicts, lists, strings) with :func:`redact` applied to every
    string in it, keys and structure unchanged (a history record before it is written)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_value(item) for item in value]
    return value


def redact(text: str) -> str:
    """``text`` with every password shape and every remembered secret replaced by ``***``."""
    if not text:
        return text
    text = URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    text = PARAM_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    pattern = _pattern
    return pattern.sub(MASK, text) if pattern is not None else text


def forget_all() -> None:
    """Forget every remembered secret (tests)."""
    global _pattern
    with _lock:
        _known.clear()
        _pattern = None


#: The most characters of one line from a host shown on the operator's terminal.
MAX_SHOWN = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` safe to print on the operator's terminal: every control character but the tab (ESC,
    BEL, CR, backspace, the C1 range) shown as ``\\x1b``, so a host or a service cannot set the
    title, clear the screen or overwrite a line; cut after ``limit`` characters, saying how many
    more there were. (Text that came from a host, a service or a patch goes through here.)"""
    safe = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(safe) > limit:
        safe = f"{safe[:limit]} ... ({len(safe) - limit} more characters)"
    return safe


class RedactingStream:
    """A text stream that writes :func:`redact` of everything written to it to ``target()`` (the
    consoles' ``sys.stdout`` and ``sys.stderr``, looked up at each write: a test may replace them).
    Everything else (``isatty``, ``fileno``, ``encoding``) is the target's."""

    def __init__(self, target: Callable[[], IO[str]]) -> None:
        self._target = target

    def write(self, text: str) -> int:
        self._target().write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)
