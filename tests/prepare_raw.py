"""Small raw files in the real Amazon / user-catalogue formats, for the prepare tests.

Everything is generated from a seed, so each test builds exactly the files it needs.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def amazon_rows(
    n_users: int = 40, n_items: int = 25, per_user: int = 8, seed: int = 0
) -> list[tuple[str, str, float, int]]:
    """Rating rows with Amazon-looking ids; some users and items are too small for a 5-core."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        user = f"A{u:03d}XYZ{(u * 7919) % 1000:03d}"
        count = int(rng.integers(2, per_user + 6))
        for i in rng.choice(n_items, size=min(count, n_items), replace=False):
            rows.append(
                (user, f"B00{int(i):07d}", float(rng.integers(1, 6)), int(1_300_000_000 + rng.integers(0, 10**8)))
            )
    order = rng.permutation(len(rows))
    return [rows[k] for k in order]


def write_ratings(path: Path, rows: list[tuple[str, str, float, int]]) -> Path:
    """The Amazon ratings-only CSV: ``user,item,rating,timestamp``, no header."""
    path.write_text("".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    return path


def metadata_record(asin: str, k: int) -> dict:
    """A metadata record in the 2014 dump's shape; some fields missing on purpose."""
    record = {
        "asin": asin,
        "title": f"Soft baby blanket model {k}",
        "price": 9.99 + k,
        "imUrl": f"http://example.invalid/{asin}.jpg",
        "related": {"also_bought": ["B000000001", "B000000002"]},
        "salesRank": {"Baby": 1000 + k},
        "categories": [["Baby", "Nursery", f"Blankets {k % 3}"], ["Baby", "Gifts"]],
    }
    if k % 4:
        record["brand"] = "Acme" if k % 4 == 1 else ("" if k % 4 == 2 else "N/A")
    if k % 5:
        record["description"] = f'Warm, soft\nand washable ({k}). It\'s "great".'
    return record


def write_metadata(path: Path, records: list[dict]) -> Path:
    """``meta_*.json.gz``: one Python dict display (``repr``) per line, gzipped."""
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(repr(record) + "\n")
    return path


def write_image_features(path: Path, asins: list[str], dim: int = 4096, seed: int = 0) -> tuple[Path, np.ndarray]:
    """The Amazon binary feature file: 10-byte ASIN + ``dim`` little-endian float32 each."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(asins), dim)).astype(np.float32)
    with open(path, "wb") as handle:
        for asin, vector in zip(asins, vectors):
            handle.write(asin.encode("ascii"))
            handle.write(struct.pack(f"<{dim}f", *vector.tolist()))
    return path, vectors


def write_pngs(folder: Path, names: list[str], size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """A folder of small random RGB PNGs named ``<name>.png``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def random_resnet_weights(
    blocks=(1, 1, 1, 1), widths=(4, 8, 8, 8), stem: int = 4, bottleneck: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """A randomly initialised torchvision-named ResNet ``state_dict`` (numpy arrays)."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}

    def conv(name: str, n_out: int, n_in: int, k: int) -> None:
        weights[name] = (rng.standard_normal((n_out, n_in, k, k)) * np.sqrt(2.0 / (n_in * k * k))).astype(np.float32)

    def bn(name: str, n: int) -> None:
        weights[f"{name}.weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
        weights[f"{name}.bias"] = rng.normal(0, 0.1, n).astype(np.float32)
        weights[f"{name}.running_mean"] = rng.normal(0, 0.1, n).astype(np.float32)
        weights[f"{name}.running_var"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
        weights[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    conv("conv1.weight", stem, 3, 7)
    bn("bn1", stem)
    expansion = 4 if bottleneck else 1
    n_in = stem
    for s, (count, width) in enumerate(zip(blocks, widths)):
        for b in range(count):
            prefix = f"layer{s + 1}.{b}"
            stride = 2 if s > 0 and b == 0 else 1
            if bottleneck:
                conv(f"{prefix}.conv1.weight", width, n_in, 1)
                conv(f"{prefix}.conv2.weight", width, width, 3)
                conv(f"{prefix}.conv3.weight", width * 4, width, 1)
                for j, n in ((1, width), (2, width), (3, width * 4)):
                    bn(f"{prefix}.bn{j}", n)
            else:
                conv(f"{prefix}.conv1.weight", width, n_in, 3)
                conv(f"{prefix}.conv2.weight", width, width, 3)
                bn(f"{prefix}.bn1", width)
                bn(f"{prefix}.bn2", width)
            if stride != 1 or n_in != width * expansion:
                conv(f"{prefix}.downsample.0.weight", width * expansion, n_in, 1)
                bn(f"{prefix}.downsample.1", width * expansion)
            n_in = width * expansion
    weights["fc.weight"] = rng.standard_normal((10, n_in)).astype(np.float32)
    weights["fc.bias"] = np.zeros(10, np.float32)
    return weights
