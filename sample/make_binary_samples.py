"""Write the sample's DOCX and PDF (run once; the outputs are committed).

.venv/bin/python sample/make_binary_samples.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from fixtures_files import write_docx, write_pdf  # noqa: E402


def main() -> None:
    """Write sample/policies/gear-care-guide.docx and sample/policies/rental-terms.pdf."""
    write_docx(
        HERE / "policies" / "gear-care-guide.docx",
        "Gear care guide",
        [
            "Dry a tent completely before storing it; packing it wet causes mildew, which the "
            "warranty does not cover.",
            "Wash down sleeping bags only with a down-specific soap, on a gentle cycle, and "
            "tumble dry on low heat with clean tennis balls.",
            "Re-apply waterproofing to boots every season. Northbeam stores re-waterproof boots "
            "bought from us free of charge.",
        ],
    )
    write_pdf(
        HERE / "policies" / "rental-terms.pdf",
        [
            [
                "Northbeam Gear Rental Terms",
                "Rentals are available for tents, packs, snowshoes and avalanche beacons.",
                "A rental day runs from store opening to store opening the next day.",
            ],
            [
                "Deposits and damage",
                "A refundable deposit of 150 dollars is held on a credit card for each rental.",
                "Normal wear is free. Damage beyond normal wear is charged at repair cost,",
                "up to the replacement value of the item.",
            ],
            [
                "Late returns",
                "Late rentals are charged one extra rental day per day late.",
                "After 7 days late the item is treated as lost and its value is charged.",
            ],
        ],
    )


if __name__ == "__main__":
    main()
