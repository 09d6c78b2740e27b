"""Credentials out of every text cd4ml shows: HTTP answers, log lines, error messages.

A tracking URI or database URL may carry `user:password@`, a `?password=` or `token=`
parameter, and MLflow's errors quote the URL they called; anything that can hold such a text
goes through `redact` before it is answered or logged.
"""

from __future__ import annotations

import os
import re

MASK = "***"
# scheme://user:password@host — up to the last '@' before the path, so an unescaped '@' in a
# password is masked too
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/?#]*@")
# password=..., sslpassword=..., token=..., api_key=..., in a query string or a libpq DSN
_SECRET_PARAMETER = re.compile(
    r"(?i)\b([\w.-]*(?:password|passwd|pwd|secret|token|api_?key|access_?key|credentials?)=)[^&\s'\",;)]+"
)
# secrets that travel beside the URI rather than inside it
SECRET_VARIABLES = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "CD4ML_ADMIN_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "PGPASSWORD",
)


def redact(text: object) -> str:
    """`text` with URL credentials, secret parameters and the values of SECRET_VARIABLES masked."""
    shown = _SECRET_PARAMETER.sub(rf"\1{MASK}", _USERINFO.sub(rf"\1{MASK}@", str(text)))
    for name in SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= 4:  # a one-letter "secret" would mask half the message
            shown = shown.replace(value, MASK)
    return shown
