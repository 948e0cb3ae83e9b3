"""The nodes file of `hallhub central pull` (CONTRACTS §16): TOML `[[node]] id, url, token`.

```toml
[[node]]
id = "hall-370102-01"                 # the node's id (§1)
url = "http://10.1.2.3:8780"          # its local API (§5); http(s), no user info, no query
token_file = "/etc/hallhub/pull-01"   # or token = "…": its api.pull_token
```

Every error names the file, the key (`node[2].url`, counted from 0 as in node configs) and what
is expected. A `token_file` is read afresh before each pull, so a rotated token needs no restart.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from contract.wire import is_node_id

__all__ = ["NodeSpec", "NodesFileError", "is_loopback_url", "load_nodes", "parse_nodes"]

_KEYS: Final = frozenset({"id", "url", "token", "token_file"})
_MAX_TOKEN_BYTES: Final = 4096
MAX_NODES: Final = 100_000


class NodesFileError(ValueError):
    """What is wrong in a nodes file: the key path and what to do; `str()` is one line."""

    def __init__(self, path: str, key: str, message: str) -> None:
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")
        self.path = path
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node to pull: its id, the base URL of its API and where its pull token comes from."""

    id: str
    url: str
    token: str = ""
    token_file: Path | None = None

    def read_token(self) -> str:
        """The token, from the file when one is set (`OSError`/`ValueError` if unusable now)."""
        if self.token_file is None:
            return self.token
        return _file_token(self.token_file)

    def describe(self) -> str:
        """`id (url)` for log lines; never the token."""
        return f"{self.id} ({self.url})"


def _file_token(path: Path) -> str:
    raw = path.read_bytes()[: _MAX_TOKEN_BYTES + 1]
    if len(raw) > _MAX_TOKEN_BYTES:
        raise ValueError(f"{path} is larger than {_MAX_TOKEN_BYTES} bytes; it should hold only the token")
    token = raw.decode("utf-8").strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{path} must hold the token alone on one line")
    return token


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is a loopback address or `localhost`."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise NodesFileError(where, key, 'must be the node\'s API address, e.g. "http://10.1.2.3:8780"')
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise NodesFileError(where, key, f"{value!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodesFileError(where, key, f"must be http:// or https:// with a host, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise NodesFileError(
            where, key, "must not carry user information; put the secret in token or token_file"
        )
    if parts.query or parts.fragment:
        raise NodesFileError(where, key, f"must not have a query or fragment, got {value!r}")
    if port == 0:
        raise NodesFileError(where, key, "port 0 is not a port to connect to")
    return value.rstrip("/")


def _check_node(where: str, index: int, entry: Any, base: Path) -> NodeSpec:
    key = f"node[{index}]"
    if not isinstance(entry, dict):
        raise NodesFileError(where, key, "must be a table: [[node]] with id, url and token or token_file")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise NodesFileError(
            where, f"{key}.{unknown[0]}", f"unknown key; a node has {', '.join(sorted(_KEYS))}"
        )
    node_id = entry.get("id")
    if not isinstance(node_id, str) or not is_node_id(node_id):
        raise NodesFileError(
            where, f"{key}.id", f"must be the node id, 1-64 of A-Z a-z 0-9 _ -, got {node_id!r}"
        )
    url = _check_url(where, f"{key}.url", entry.get("url"))
    token, token_file = entry.get("token"), entry.get("token_file")
    if token is not None and token_file is not None:
        raise NodesFileError(where, f"{key}.token", "set token or token_file, not both")
    if token is None and token_file is None:
        raise NodesFileError(
            where, f"{key}.token", "missing: set token or token_file (the node's api.pull_token)"
        )
    if token is not None:
        if not isinstance(token, str) or not token.strip() or any(c.isspace() for c in token.strip()):
            raise NodesFileError(where, f"{key}.token", "must be the node's pull token, a non-empty string")
        return NodeSpec(node_id, url, token=token.strip())
    if not isinstance(token_file, str) or not token_file:
        raise NodesFileError(where, f"{key}.token_file", "must be a path to a file holding the token")
    path = Path(token_file) if Path(token_file).is_absolute() else base / token_file
    try:
        _file_token(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise NodesFileError(where, f"{key}.token_file", f"cannot use {path}: {reason}") from None
    return NodeSpec(node_id, url, token_file=path)


def parse_nodes(document: dict[str, Any], where: str, base: Path) -> list[NodeSpec]:
    """Check a parsed nodes document; `where` names it in errors, `base` anchors relative files."""
    unknown = sorted(set(document) - {"node"})
    if unknown:
        raise NodesFileError(where, unknown[0], "unknown key; the file holds [[node]] tables only")
    entries: Sequence[Any] = document.get("node", [])
    if not isinstance(entries, list) or not entries:
        raise NodesFileError(where, "node", "no [[node]] tables: list at least one node to pull")
    if len(entries) > MAX_NODES:
        raise NodesFileError(where, "node", f"{len(entries)} nodes; at most {MAX_NODES} per file")
    nodes: list[NodeSpec] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        node = _check_node(where, index, entry, base)
        if node.id in seen:
            raise NodesFileError(
                where, f"node[{index}].id", f'"{node.id}" is already used by node[{seen[node.id]}]'
            )
        seen[node.id] = index
        nodes.append(node)
    return nodes


def load_nodes(path: Path) -> list[NodeSpec]:
    """Read and check a nodes file."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NodesFileError(where, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NodesFileError(where, "", f"cannot read it: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NodesFileError(where, "", f"not valid TOML: {exc}") from None
    return parse_nodes(document, where, path.parent)
