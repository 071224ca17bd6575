"""``${NAME}`` in a config file: the value of the environment variable NAME, substituted into the
text before it is parsed, so that secrets (tenants' key hashes, a Redis URL with its password)
come from a Kubernetes Secret or a compose ``.env`` rather than the file.  ``${NAME:-default}``
gives a default; ``$${`` is a literal ``${``.  Lines that are comments are left alone.  Unset
names without a default are reported with their line numbers."""
from __future__ import annotations

import re
from collections.abc import Mapping

_REF = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, environ: Mapping[str, str]) -> tuple[str, list[tuple[int, str]]]:
    """Return ``text`` with each reference replaced, and the (line number, name) of unset ones."""
    unset: list[tuple[int, str]] = []
    lines = text.splitlines(keepends=True)
    for n, line in enumerate(lines, start=1):
        if "${" in line and not line.lstrip().startswith("#"):
            lines[n - 1] = _REF.sub(lambda m: _value(m, n, environ, unset), line)
    return "".join(lines), unset


def _value(m: re.Match[str], line: int, environ: Mapping[str, str], unset: list[tuple[int, str]]) -> str:
    escaped, name, default = m.groups()
    if escaped:
        return m.group(0)[1:]
    if name in environ:
        return environ[name]
    if default is not None:
        return default
    unset.append((line, name))
    return ""
