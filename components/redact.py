"""What never leaves the process in clear: credentials in URLs and values of keys named like secrets.

Everything the pipeline logs (MLflow params and tags, stage cards, Prefect artifacts) goes through `redact_tree`
or `redact_text`. A secret belongs in the environment: params.yaml values may say `${NAME}`, which
components.config expands from the environment when the params are loaded (components.config.expand_env).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# a key whose last word says it holds a secret: password, passwd, secret, token, api_key, access_key, credentials ...
SECRET_KEY = re.compile(
    r"(^|[._-])(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
    r"credentials?|auth)$",
    re.IGNORECASE,
)
# scheme://user:password@host -> scheme://user:***@host
URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")
# ?password=... or &token=... in a query string
QUERY_SECRET = re.compile(
    r"(?P<key>[?&](password|passwd|secret|token|api[_-]?key|access[_-]?key|sig|signature)=)"
    r"(?P<value>[^&\s]+)",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """`text` with URL passwords and secret query parameters masked."""
    text = URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key))


def redact_tree(value: Any, key: str = "") -> Any:
    """A copy of a JSON-like value with every secret-named key's value masked and every string redacted."""
    if isinstance(value, dict):
        return {k: redact_tree(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v, key) for v in value]
    return redact_value(key, value)


def redact_value(key: str, value: Any) -> Any:
    """One value under its key: masked when the key names a secret and a value is set, else its text redacted."""
    if key and is_secret_key(key) and value not in (None, "", "None"):
        return MASK
    return redact_text(value) if isinstance(value, str) else value
