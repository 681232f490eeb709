"""Does a question naming a product retrieve that product's manual? Document names on and off.

    .venv/bin/python bench/named_retrieval.py [--shared DIR] [--work DIR] [--json]

Ingests ../shared/corpus/policies/outdoor-manuals (20 product manuals, two or three per category
with near-identical warranty, return and caution sections) and benefits-pdfs beside them into a
throw-away index, then asks six questions per product, each naming it ("What is the return
policy for the <product>?"; the product names are read from the manuals, no question is written
here), and reports how often the product's own manual is the first hit and in the top 5:
with the document-name ordering (core/document_names.py) and without it (NAME_SHARE -1: no
document left behind), on the same index in one process. The questions are templates of this
bench, not an evaluation set: they measure the one thing they vary, which manual a named
product's question reaches. The dev cases (bench/answer_quality.py) are the control: questions
of every kind, where the ordering must not cost anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throwaway import use_throwaway_environment  # noqa: E402

TEMPLATES = (
    "What is the return policy for the {}?",
    "What does the warranty cover on the {}?",
    "How do I set up or use the {}?",
    "What cautions apply to the {}?",
    "What do reviewers say about the {}?",
    "What material is the {} made of?",
)


def products(manuals: Path) -> dict[str, str]:
    """Each manual's file name and its product: the line after the heading, up to the comma."""
    found = {}
    for path in sorted(manuals.glob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        found[path.name] = lines[1].split(",")[0].strip()
    return found


def ranks(service: Any, named: dict[str, str], k: int) -> list[int | None]:
    """For each (product, template), the rank of the first hit from the product's manual."""
    found = []
    for file, product in named.items():
        for template in TEMPLATES:
            hits, _ = service.retrieve(template.format(product), None, k)
            keys = [Path(hit.document_key).name for hit in hits]
            found.append(keys.index(file) + 1 if file in keys else None)
    return found


def share(found: list[int | None], k: int) -> float:
    return round(100 * sum(1 for r in found if r is not None and r <= k) / len(found), 1)


def measure(corpus: Path, work: Path) -> dict[str, Any]:
    """Ingest, then the ranks with names off and on."""
    use_throwaway_environment(work)
    config = work / "sources.yaml"
    config.write_text(
        "sources:\n"
        + "".join(
            f"  - name: {name}\n    kind: documents\n    location: {corpus / name}\n"
            "    owner: bench\n    freshness:\n      max_age: 3650d\n"
            for name in ("outdoor-manuals", "benefits-pdfs")
        ),
        encoding="utf-8",
    )
    os.environ["FRESHKB_CONFIG"] = str(config)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    from freshkb.core import document_names
    from freshkb.core.config import Settings
    from freshkb.flows.ingest import ingest_all
    from freshkb.serving.runtime import build_runtime
    from freshkb.store import server

    settings = Settings()
    server.up(settings)
    try:
        reports = ingest_all(str(config))
        failed = [(r.source, r.error) for r in reports if r.status != "completed"]
        if failed:
            raise RuntimeError(f"ingest failed: {failed}")
        service = build_runtime(Settings()).service
        named = products(corpus / "outdoor-manuals")
        share_on = document_names.NAME_SHARE
        document_names.NAME_SHARE = -1.0
        off = ranks(service, named, 5)
        document_names.NAME_SHARE = share_on
        on = ranks(service, named, 5)
    finally:
        server.down(settings)
    return {
        "questions": len(on),
        "products": len(named),
        "names_off": {"hit_at_1": share(off, 1), "hit_at_5": share(off, 5)},
        "names_on": {"hit_at_1": share(on, 1), "hit_at_5": share(on, 5)},
        "name_share": share_on,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--work", type=Path, help="keep the index here (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    corpus = args.shared / "corpus" / "policies"
    if not (corpus / "outdoor-manuals").is_dir():
        print(f"{corpus / 'outdoor-manuals'}: not found; pass --shared DIR", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="freshkb-names-"))
    try:
        result = measure(corpus, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['questions']} questions naming one of {result['products']} products")
    print(f"{'':14s} {'manual first':>13s} {'in top 5':>9s}")
    for label in ("names_off", "names_on"):
        row = result[label]
        print(f"{label:14s} {row['hit_at_1']:12.1f}% {row['hit_at_5']:8.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
