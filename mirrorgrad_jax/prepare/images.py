"""Item image features: the Amazon binary feature file, and a Flax ResNet for image folders.

**Amazon image features** (``image_features_<Category>.b``): a sequence of records, each
a 10-byte ASCII ASIN followed by 4096 little-endian float32 values (a CNN feature of the
product photo). :func:`read_image_features` memory-maps the file, so even the largest
categories are read record by record, and keeps the records of the wanted ASINs. As in
the reference, an item without a record gets the mean of the found vectors (the mean
over every matching record; when an ASIN has several records, the last one is its
vector).

**A folder of image files** (a user's own catalogue): :func:`encode_image_files` decodes
each image with Pillow (RGB; shorter side resized to 256, centre crop 224, ImageNet mean
and standard deviation, as torchvision's ImageNet evaluation transform) and returns the
global-average-pooled features of a pretrained ResNet whose weights the user supplies
(:func:`load_resnet`: a ``.safetensors`` or ``.npz`` file with torchvision's parameter
names; ResNet-18/34/50/101/152 and narrower variants are recognised from the tensors).

**Limits.** Files are checked from their headers before anything is decoded or allocated,
so a small crafted file cannot exhaust memory: an image may hold at most
:data:`MAX_IMAGE_PIXELS` pixels (64 megapixels) and its resized copy at most
:data:`MAX_RESIZED_PIXELS` (16 megapixels: with the default shorter side of 256, an aspect
ratio up to 244:1; a 1 x 40,000 strip would otherwise become 256 x 10,240,000 pixels, 7.9
GB); Pillow's own decompression-bomb check is reported the same way. Weight files may
declare at most :data:`MAX_WEIGHT_BYTES` (2 GiB) of tensors in all, read from the ``.npz``
members' headers or the safetensors header; a tensor is loaded only once its declared
shape fits the model. Each refusal is a :class:`~mirrorgrad_jax.data.DatasetError`.

Converting torchvision's weights, once, where PyTorch is installed::

    import torchvision, safetensors.torch
    model = torchvision.models.resnet50(weights="IMAGENET1K_V2")
    safetensors.torch.save_file(model.state_dict(), "resnet50.safetensors")
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.data import DatasetError
from mirrorgrad_jax.data.mmrec import npz_members

__all__ = [
    "AMAZON_FEATURE_DIM",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MAX_RESIZED_PIXELS",
    "MAX_WEIGHT_BYTES",
    "ImageFeatures",
    "ResNetConfig",
    "ResNetFeatures",
    "check_resnet_weights",
    "encode_image_files",
    "find_item_images",
    "load_image",
    "load_resnet",
    "mean_filled",
    "read_image_features",
    "record_dtype",
]

#: Length of an Amazon image feature vector.
AMAZON_FEATURE_DIM = 4096
_ASIN_BYTES = 10
#: File name extensions :func:`find_item_images` treats as images.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: The most pixels (width x height, from the file's header) an image may hold: 64 megapixels,
#: an 8000 x 8000 photo (below Pillow's own warning threshold of about 89 megapixels).
MAX_IMAGE_PIXELS = 64_000_000
#: The most pixels an image may have after its shorter side is resized (before the crop):
#: 16 megapixels, 48 MB of RGB; with the default shorter side of 256, an aspect ratio up to 244:1.
MAX_RESIZED_PIXELS = 16_000_000
#: The most bytes of tensors an image-model weight file may declare in all: 2 GiB (the largest
#: torchvision ResNet, Wide ResNet-101-2, holds about 0.5 GB in float32).
MAX_WEIGHT_BYTES = 2 * 1024**3
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class ImageFeatures:
    """Image features aligned with the items, missing rows filled with the mean.

    Attributes:
        features: ``(num_items, D)`` float32.
        found: ``(num_items,)`` bool, whether the item had its own image.
        records: Records (or image files) read in all.
        duplicates: Wanted ASINs that had more than one record.
    """

    features: np.ndarray
    found: np.ndarray
    records: int
    duplicates: int = 0

    @property
    def missing(self) -> np.ndarray:
        """Indices of the items that got the mean vector."""
        return np.flatnonzero(~self.found)


def record_dtype(dim: int = AMAZON_FEATURE_DIM) -> np.dtype:
    """numpy dtype of one binary record: 10-byte ASIN then ``dim`` little-endian float32."""
    return np.dtype([("asin", f"S{_ASIN_BYTES}"), ("feature", "<f4", (dim,))])


def _fill_with_mean(features: np.ndarray, found: np.ndarray, total: np.ndarray, count: int, source: str) -> np.ndarray:
    if count == 0:
        raise DatasetError(f"{source}: none of the {len(found)} items has an image")
    features[~found] = (total / count).astype(np.float32)
    return features


def read_image_features(
    path: str | os.PathLike,
    asins: Sequence[str],
    *,
    dim: int = AMAZON_FEATURE_DIM,
    chunk_records: int = 4096,
    progress: bool = False,
) -> ImageFeatures:
    """Reads the Amazon binary image-feature file for the items ``asins``.

    Args:
        path: The ``.b`` file.
        asins: ASIN of each item, in item order.
        dim: Values per record (4096).
        chunk_records: Records examined at a time.
        progress: Show a progress bar.

    Returns:
        :class:`ImageFeatures`; items without a record hold the mean of the found
        vectors (the reference's rule).

    Raises:
        DatasetError: a truncated file (names the record and its byte offset), an ASIN
            field that is not printable ASCII, a non-finite value, or no record for any
            item.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist or is not a file")
    dtype = record_dtype(dim)
    size = path.stat().st_size
    n_records, tail = divmod(size, dtype.itemsize)
    if tail:
        raise DatasetError(
            f"{path} is truncated: record {n_records + 1} (at byte offset {n_records * dtype.itemsize}) "
            f"has {tail} of its {dtype.itemsize} bytes (10-byte ASIN + {dim} float32)"
        )
    if n_records == 0:
        raise DatasetError(f"{path} is empty")
    item_of = {asin.encode("ascii", "replace"): index for index, asin in enumerate(asins)}
    features = np.zeros((len(asins), dim), np.float32)
    found = np.zeros(len(asins), bool)
    total = np.zeros(dim, np.float64)
    count = duplicates = 0
    records = np.memmap(path, dtype=dtype, mode="r", shape=(n_records,))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_records, desc="image features", unit="rec")
    try:
        for start in range(0, n_records, chunk_records):
            block = records[start : start + chunk_records]
            raw = np.frombuffer(block["asin"].tobytes(), np.uint8).reshape(len(block), _ASIN_BYTES)
            bad = ((raw < 0x20) | (raw > 0x7E)) & (raw != 0)
            if bad.any():
                r = int(np.argmax(bad.any(axis=1)))
                raise DatasetError(
                    f"{path}: record {start + r + 1} (at byte offset {(start + r) * dtype.itemsize}) "
                    f"does not start with an ASCII ASIN ({bytes(raw[r])!r}); is this an Amazon image-feature file?"
                )
            for r, asin in enumerate(block["asin"].tolist()):
                item = item_of.get(asin)
                if item is None:
                    continue
                vector = np.asarray(block["feature"][r])
                if not np.isfinite(vector).all():
                    raise DatasetError(
                        f"{path}: record {start + r + 1} (ASIN {asin.decode()}) holds NaN or infinite values"
                    )
                duplicates += bool(found[item])
                features[item] = vector
                found[item] = True
                total += vector
                count += 1
            if bar is not None:
                bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
        del records
    features = _fill_with_mean(features, found, total, count, str(path))
    return ImageFeatures(features=features, found=found, records=int(n_records), duplicates=int(duplicates))


# ---------------------------------------------------------------------------------------
# Image folders.
# ---------------------------------------------------------------------------------------


def find_item_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Maps item id -> image file for a folder of ``<item id>.<image extension>`` files.

    Files with other extensions and hidden files are ignored.

    Raises:
        DatasetError: a missing folder, or two images for the same item.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder of images")
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if path.stem in images:
            raise DatasetError(f"{folder}: item {path.stem!r} has two images, {images[path.stem].name} and {path.name}")
        images[path.stem] = path
    return images


def load_image(path: str | os.PathLike, *, resize: int = 256, crop: int = 224) -> np.ndarray:
    """Decodes an image as torchvision's ImageNet evaluation transform does.

    RGB; the shorter side resized to ``resize`` (bilinear, Pillow); the centre
    ``crop x crop`` square; scaled to [0, 1] and normalised with the ImageNet mean/std.

    Returns:
        ``(crop, crop, 3)`` float32.

    Raises:
        DatasetError: the file cannot be decoded as an image, or it is too large to
            decode (more than :data:`MAX_IMAGE_PIXELS` pixels, or a Pillow
            decompression bomb) or to resize (more than :data:`MAX_RESIZED_PIXELS`), which
            is read from its header before anything is decoded.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:
        raise ImportError("image folders need Pillow: pip install 'mirrorgrad-jax[images]'") from err
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            size = _resized_size(path, width, height, resize)
            image = image.convert("RGB")
            image = image.resize(size, Image.BILINEAR)
            left, top = round((size[0] - crop) / 2.0), round((size[1] - crop) / 2.0)
            image = image.crop((left, top, left + crop, top + crop))
            pixels = np.asarray(image, np.float32) / 255.0
    except DatasetError:
        raise
    except Image.DecompressionBombError as err:
        raise DatasetError(f"{path}: refused by Pillow as a possible decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable image ({err})") from None
    return (pixels - _IMAGENET_MEAN) / _IMAGENET_STD


def _resized_size(path: str | os.PathLike, width: int, height: int, resize: int) -> tuple[int, int]:
    """The size after resizing the shorter side to ``resize``, once the image's and the result's pixel counts are within the limits."""
    if width < 1 or height < 1:
        raise DatasetError(f"{path}: an image of {width} x {height} pixels has nothing to encode")
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(
            f"{path}: {width} x {height} pixels is more than the {MAX_IMAGE_PIXELS} an image may have "
            "(mirrorgrad_jax.prepare.images.MAX_IMAGE_PIXELS); scale it down first"
        )
    if width <= height:  # torchvision's rule: the longer side is truncated
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    if size[0] * size[1] > MAX_RESIZED_PIXELS:
        raise DatasetError(
            f"{path}: {width} x {height} pixels would be resized to {size[0]} x {size[1]}, more than the "
            f"{MAX_RESIZED_PIXELS} pixels a resized image may have (mirrorgrad_jax.prepare.images.MAX_RESIZED_PIXELS): "
            "its aspect ratio is too extreme; crop it first"
        )
    return size


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """A ResNet's shape, read off its weights.

    Attributes:
        blocks: Residual blocks in each of the four stages.
        widths: Output channels of each stage's 3x3 convolutions (64..512 in torchvision).
        stem: Output channels of the 7x7 stem convolution.
        bottleneck: Three-convolution blocks with expansion 4 (ResNet-50 and deeper).
    """

    blocks: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    stem: int
    bottleneck: bool

    @property
    def expansion(self) -> int:
        return 4 if self.bottleneck else 1

    @property
    def feature_dim(self) -> int:
        return self.widths[-1] * self.expansion


def _conv(n_in: int, n_out: int, size: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        n_in, n_out, (size, size), strides=(stride, stride), padding=[(size // 2, size // 2)] * 2,
        use_bias=False, precision=_HIGHEST, rngs=rngs,
    )  # fmt: skip


def _norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, use_running_average=True, epsilon=1e-5, rngs=rngs)


class _Block(nnx.Module):
    def __init__(self, n_in: int, width: int, stride: int, bottleneck: bool, rngs: nnx.Rngs) -> None:
        n_out = width * (4 if bottleneck else 1)
        if bottleneck:  # torchvision's v1.5: the stride sits on the 3x3 convolution
            self.convs = nnx.List(
                [_conv(n_in, width, 1, 1, rngs), _conv(width, width, 3, stride, rngs), _conv(width, n_out, 1, 1, rngs)]
            )
        else:
            self.convs = nnx.List([_conv(n_in, width, 3, stride, rngs), _conv(width, n_out, 3, 1, rngs)])
        self.norms = nnx.List([_norm(conv.out_features, rngs) for conv in self.convs])
        # An empty list when the block keeps its shape (torchvision's "downsample" is None).
        self.shortcut = nnx.List([])
        if stride != 1 or n_in != n_out:
            self.shortcut = nnx.List([_conv(n_in, n_out, 1, stride, rngs), _norm(n_out, rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = norm(conv(y))
            if i < len(self.convs) - 1:
                y = jax.nn.relu(y)
        skip = self.shortcut[1](self.shortcut[0](x)) if len(self.shortcut) else x
        return jax.nn.relu(y + skip)


class ResNetFeatures(nnx.Module):
    """A torchvision-layout ResNet up to its global average pool (no classifier)."""

    def __init__(self, config: ResNetConfig, rngs: nnx.Rngs) -> None:
        self.stem_conv = _conv(3, config.stem, 7, 2, rngs)
        self.stem_norm = _norm(config.stem, rngs)
        stages, n_in = [], config.stem
        for stage, (count, width) in enumerate(zip(config.blocks, config.widths)):
            blocks = []
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(_Block(n_in, width, stride, config.bottleneck, rngs))
                n_in = width * config.expansion
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)

    def __call__(self, images: jax.Array) -> jax.Array:
        """``(B, H, W, 3)`` normalised images -> ``(B, feature_dim)`` pooled features."""
        x = jax.nn.relu(self.stem_norm(self.stem_conv(images)))
        x = jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
        )
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return x.mean(axis=(1, 2))


def _npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of every member of an ``.npz``, from the members' ``.npy`` headers only; the size limits checked."""
    members = npz_members(path, path, max_member_bytes=MAX_WEIGHT_BYTES, cap_note="image-model weights may hold (mirrorgrad_jax.prepare.images.MAX_WEIGHT_BYTES)")
    _check_total(path, sum(nbytes for _, _, nbytes in members.values()))
    return {name: (shape, dtype) for name, (shape, dtype, _) in members.items()}


def _check_total(path: Path, total: int) -> None:
    if total > MAX_WEIGHT_BYTES:
        raise DatasetError(
            f"{path} declares {total} bytes of tensors in all, more than the {MAX_WEIGHT_BYTES} image-model weights "
            "may hold (mirrorgrad_jax.prepare.images.MAX_WEIGHT_BYTES)"
        )


def _safetensors():
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as err:
        raise ImportError("reading .safetensors needs: pip install 'mirrorgrad-jax[images]'") from err
    return SafetensorError, safe_open


def _safetensors_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of every tensor of a safetensors file, from its header only."""
    error, safe_open = _safetensors()
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    total = 0
    try:
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                shape = tuple(int(d) for d in tensor.get_shape())
                dtype = _SAFETENSORS_DTYPES.get(tensor.get_dtype())
                if dtype is None:
                    raise DatasetError(f"{path}: {name} has dtype {tensor.get_dtype()}, not a numeric type this reader takes")
                total += math.prod(shape) * dtype.itemsize
                out[name] = (shape, dtype)
    except (error, OSError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"{path} is not a readable safetensors file ({err})") from None
    _check_total(path, total)
    return out


_SAFETENSORS_DTYPES = {
    code: np.dtype(name)
    for code, name in (("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("I64", "int64"), ("I32", "int32"),
                       ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"), ("BOOL", "bool"))
}  # fmt: skip


def _weight_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of every tensor of a weight file, read from its metadata; the size limits checked."""
    if not path.is_file():
        raise DatasetError(f"image model weights {path} do not exist")
    if path.suffix == ".npz":
        return _npz_shapes(path)
    if path.suffix == ".safetensors":
        return _safetensors_shapes(path)
    raise DatasetError(f"{path}: image model weights must be a .safetensors or .npz file")


def _read_tensors(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The tensors ``names`` of a weight file whose metadata :func:`_weight_shapes` checked."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in names}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise DatasetError(f"{path}: not a numeric .npz archive ({err})") from None
    error, safe_open = _safetensors()
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {name: handle.get_tensor(name) for name in names}
    except (error, OSError, ValueError) as err:
        raise DatasetError(f"{path} is not a readable safetensors file ({err})") from None


def _infer_config(shapes: dict[str, tuple[tuple[int, ...], np.dtype]], path: Path) -> ResNetConfig:
    if "conv1.weight" not in shapes:
        raise DatasetError(f"{path} has no conv1.weight; expected torchvision ResNet parameter names")
    bottleneck = "layer1.0.conv3.weight" in shapes
    blocks, widths = [], []
    for stage in range(1, 5):
        count = 0
        while f"layer{stage}.{count}.conv1.weight" in shapes:
            count += 1
        if count == 0:
            raise DatasetError(f"{path} has no layer{stage}.0.conv1.weight; not a four-stage ResNet")
        blocks.append(count)
        conv2 = shapes.get(f"layer{stage}.0.conv2.weight")
        if conv2 is None or not conv2[0]:
            raise DatasetError(f"{path} has no layer{stage}.0.conv2.weight with a shape; not a torchvision ResNet")
        widths.append(int(conv2[0][0]))
    if not shapes["conv1.weight"][0]:
        raise DatasetError(f"{path}: conv1.weight is a scalar; not a torchvision ResNet")
    return ResNetConfig(tuple(blocks), tuple(widths), int(shapes["conv1.weight"][0][0]), bottleneck)


def _torchvision_name(path: tuple[Any, ...]) -> tuple[str, str]:
    """The torchvision name of an NNX variable path, and how to convert the tensor."""
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[
        path[-1]
    ]
    kind = "conv" if path[-1] == "kernel" else "plain"
    if path[0] == "stem_conv":
        return f"conv1.{leaf}", kind
    if path[0] == "stem_norm":
        return f"bn1.{leaf}", kind
    _, stage, block, part, index, _ = path
    prefix = f"layer{stage + 1}.{block}"
    if part == "shortcut":
        return f"{prefix}.downsample.{index}.{leaf}", kind
    return f"{prefix}.{'conv' if part == 'convs' else 'bn'}{index + 1}.{leaf}", kind


def load_resnet(weights_path: str | os.PathLike) -> tuple[ResNetFeatures, ResNetConfig]:
    """Builds a :class:`ResNetFeatures` from torchvision-named weights.

    Args:
        weights_path: ``.safetensors`` or ``.npz`` (read without pickle) holding a
            torchvision ResNet ``state_dict`` (``conv1.weight``, ``bn1.running_mean``,
            ``layer1.0.conv1.weight``...; ``fc.*`` and ``num_batches_tracked`` are
            ignored). Convolution kernels are ``(out, in, h, w)`` as in PyTorch.

    Returns:
        ``(model, config)``.

    Raises:
        DatasetError: a missing file, tensors missing or of the wrong shape, or a file
            that declares more than :data:`MAX_WEIGHT_BYTES` (every shape is read from the
            file's metadata and checked before a tensor is loaded).
    """
    path = Path(weights_path)
    shapes = _weight_shapes(path)
    config = _infer_config(shapes, path)
    abstract = nnx.eval_shape(lambda: ResNetFeatures(config, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    wanted = []
    for var_path, variable in nnx.to_flat_state(state):
        name, kind = _torchvision_name(var_path)
        if name not in shapes:
            raise DatasetError(f"{path} has no tensor {name}")
        stored = shapes[name][0]
        fitted = (stored[2], stored[3], stored[1], stored[0]) if kind == "conv" and len(stored) == 4 else stored
        expected = tuple(variable.get_value().shape)
        if fitted != expected:
            raise DatasetError(f"{path}: {name} has shape {stored}, which does not fit {expected}")
        wanted.append((var_path, variable, name, kind))
    weights = _read_tensors(path, [name for _, _, name, _ in wanted])
    filled = []
    for var_path, variable, name, kind in wanted:
        array = np.asarray(weights[name], np.float32)
        if kind == "conv" and array.ndim == 4:
            array = array.transpose(2, 3, 1, 0)  # (out, in, h, w) -> (h, w, in, out)
        filled.append((var_path, variable.replace(jnp.asarray(array))))
    return nnx.merge(graphdef, nnx.from_flat_state(filled)), config


def check_resnet_weights(weights_path: str | os.PathLike) -> ResNetConfig:
    """Checks a weight file for :func:`load_resnet` from its metadata alone (no tensor is read).

    ``prepare folder`` calls it before any step runs, so bad weights are reported at once.

    Returns:
        The ResNet's shape, as the tensors' names and shapes give it.

    Raises:
        DatasetError: as :func:`load_resnet`.
    """
    path = Path(weights_path)
    return _infer_config(_weight_shapes(path), path)


def encode_image_files(
    paths: Sequence[str | os.PathLike],
    weights_path: str | os.PathLike,
    *,
    batch_size: int = 32,
    resize: int = 256,
    crop: int = 224,
    progress: bool = False,
) -> np.ndarray:
    """Global-average-pooled ResNet features of image files.

    Args:
        paths: Image files.
        weights_path: The ResNet weights (see :func:`load_resnet`).
        batch_size: Images per device batch (the last batch is padded, so one shape
            is compiled).
        resize: Shorter side after resizing.
        crop: Side of the centre crop.
        progress: Show a progress bar.

    Returns:
        ``(len(paths), feature_dim)`` float32.
    """
    model, config = load_resnet(weights_path)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state: Any, images: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(images)

    out = np.zeros((len(paths), config.feature_dim), np.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), desc="images", unit="img")
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        batch = np.zeros((batch_size, crop, crop, 3), np.float32)
        for slot, path in enumerate(chunk):
            batch[slot] = load_image(path, resize=resize, crop=crop)
        out[start : start + len(chunk)] = np.asarray(forward(state, jnp.asarray(batch)))[: len(chunk)]
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out


def mean_filled(features: np.ndarray, found: np.ndarray, source: str) -> np.ndarray:
    """``features`` with the rows of items without an image set to the mean of the others."""
    found = np.asarray(found, bool)
    total = features[found].astype(np.float64).sum(axis=0)
    return _fill_with_mean(np.array(features, np.float32), found, total, int(found.sum()), source)
