"""API tokens for a laptop run with none configured: made once, kept in the data directory."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

LOCAL_TOKENS_FILE = "api-tokens.json"


def local_tokens(data_dir: Path) -> tuple[Path, dict[str, str]]:
    """(file, token -> scope): one `answer` and one `admin` token, created on first use."""
    path = data_dir / LOCAL_TOKENS_FILE
    if path.is_file():
        tokens = json.loads(path.read_text())
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tokens = {secrets.token_urlsafe(24): "answer", secrets.token_urlsafe(24): "admin"}
        # Created owner-only before the secrets are written into it.
        path.touch(mode=0o600)
        path.write_text(json.dumps(tokens, indent=2))
    return path, dict(tokens)
