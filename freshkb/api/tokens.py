"""API tokens for a laptop run with none configured: made once, kept in the data directory."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

LOCAL_TOKENS_FILE = "api-tokens.json"
LOCAL_SCOPES = ("answer", "admin", "upload")


def local_tokens(data_dir: Path) -> tuple[Path, dict[str, str]]:
    """(file, token -> scope): one `answer`, one `admin` and one `upload` token, created on
    first use (a file made before uploads existed gets its `upload` token added)."""
    path = data_dir / LOCAL_TOKENS_FILE
    tokens: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    missing = [scope for scope in LOCAL_SCOPES if scope not in tokens.values()]
    if missing:
        tokens |= {secrets.token_urlsafe(24): scope for scope in missing}
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created owner-only before the secrets are written into it.
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(json.dumps(tokens, indent=2))
    return path, dict(tokens)
