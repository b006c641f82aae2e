"""Image features: the Amazon binary file byte by byte, and the ResNet path on image files."""

from __future__ import annotations

import io
import struct
import zipfile

import jax
import numpy as np
import pytest
from flax import nnx
from prepare_raw import random_resnet_weights, write_pngs

from mirrorgrad_jax.data import DatasetError
from mirrorgrad_jax.prepare import images

DIM = 4096


def _record(asin: bytes, values: np.ndarray) -> bytes:
    return asin + struct.pack(f"<{DIM}f", *values.astype(np.float32).tolist())


def test_binary_file_parsed_byte_by_byte_with_the_reference_mean(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((4, DIM)).astype(np.float32)
    path = tmp_path / "image_features_Baby.b"
    # Record 3 repeats item B2's ASIN (the last record wins, both count in the mean) and
    # record 2 belongs to an item that is not wanted.
    path.write_bytes(
        _record(b"B000000002", v[0])
        + _record(b"B00000000X", v[1])
        + _record(b"B000000001", v[2])
        + _record(b"B000000002", v[3])
    )
    result = images.read_image_features(path, ["B000000001", "B000000002", "B000000003"], chunk_records=3)
    assert result.records == 4 and result.duplicates == 1
    assert result.found.tolist() == [True, True, False]
    assert result.features[0].tobytes() == v[2].tobytes()  # exact bytes, little-endian float32
    assert result.features[1].tobytes() == v[3].tobytes()
    expected_mean = (v[0].astype(np.float64) + v[2] + v[3]) / 3
    np.testing.assert_array_equal(result.features[2], expected_mean.astype(np.float32))
    assert result.missing.tolist() == [2]


def test_record_layout_is_ten_bytes_then_float32_little_endian():
    dtype = images.record_dtype()
    assert dtype.itemsize == 10 + 4 * DIM
    raw = b"B0ABCDEFGH" + struct.pack("<f", 1.5) + bytes(4 * (DIM - 1))
    record = np.frombuffer(raw, dtype)[0]
    assert record["asin"] == b"B0ABCDEFGH" and record["feature"][0] == 1.5


@pytest.mark.parametrize(
    "content, message",
    [
        (
            lambda v: _record(b"B000000001", v)[:-100],
            r"truncated: record 1 \(at byte offset 0\) has 16294 of its 16394 bytes",
        ),
        (
            lambda v: _record(b"B000000001", v) + _record(b"B00000000\xff", v),
            r"record 2 \(at byte offset 16394\) does not start with an ASCII ASIN",
        ),
        (lambda v: _record(b"B000000001", np.full(DIM, np.nan)), r"record 1 \(ASIN B000000001\) holds NaN"),
        (lambda v: _record(b"B000000009", v), r"none of the 1 items has an image"),
        (lambda v: b"", r"is empty"),
    ],
)
def test_bad_binary_files_are_reported(tmp_path, content, message):
    path = tmp_path / "features.b"
    path.write_bytes(content(np.ones(DIM, np.float32)))
    with pytest.raises(DatasetError, match=r"features.b.*" + message):
        images.read_image_features(path, ["B000000001"])


# ---------------------------------------------------------------------------------------
# The ResNet against a direct numpy implementation of torchvision's forward pass (NCHW).
# ---------------------------------------------------------------------------------------


def _np_conv(x, w, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for a in range(kh):
        for b in range(kw):
            patch = x[:, :, a : a + stride * ho : stride, b : b + stride * wo : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, a, b])
    return out


def _np_bn(x, weights, name):
    scale = weights[f"{name}.weight"] / np.sqrt(weights[f"{name}.running_var"] + 1e-5)
    return (x - weights[f"{name}.running_mean"][:, None, None]) * scale[:, None, None] + weights[f"{name}.bias"][
        :, None, None
    ]


def _np_resnet(x, weights, blocks, bottleneck):
    relu = lambda t: np.maximum(t, 0)
    x = relu(_np_bn(_np_conv(x, weights["conv1.weight"], 2, 3), weights, "bn1"))
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ho, wo = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
    x = np.max([x[:, :, a : a + 2 * ho : 2, b : b + 2 * wo : 2] for a in range(3) for b in range(3)], axis=0)
    for s, count in enumerate(blocks):
        for b in range(count):
            p = f"layer{s + 1}.{b}"
            stride = 2 if s > 0 and b == 0 else 1
            if bottleneck:
                y = relu(_np_bn(_np_conv(x, weights[f"{p}.conv1.weight"], 1, 0), weights, f"{p}.bn1"))
                y = relu(_np_bn(_np_conv(y, weights[f"{p}.conv2.weight"], stride, 1), weights, f"{p}.bn2"))
                y = _np_bn(_np_conv(y, weights[f"{p}.conv3.weight"], 1, 0), weights, f"{p}.bn3")
            else:
                y = relu(_np_bn(_np_conv(x, weights[f"{p}.conv1.weight"], stride, 1), weights, f"{p}.bn1"))
                y = _np_bn(_np_conv(y, weights[f"{p}.conv2.weight"], 1, 1), weights, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in weights:
                x = _np_bn(_np_conv(x, weights[f"{p}.downsample.0.weight"], stride, 0), weights, f"{p}.downsample.1")
            x = relu(y + x)
    return x.mean(axis=(2, 3))


@pytest.mark.parametrize("bottleneck, blocks", [(False, (1, 2, 1, 1)), (True, (1, 1, 1, 1))])
def test_resnet_on_png_files_matches_numpy(tmp_path, bottleneck, blocks):
    pytest.importorskip("PIL")
    weights = random_resnet_weights(blocks=blocks, widths=(4, 6, 8, 8), stem=4, bottleneck=bottleneck, seed=1)
    weights_path = tmp_path / "resnet.npz"
    np.savez(weights_path, **weights)
    folder = write_pngs(tmp_path / "images", ["a", "b", "c"], size=(40, 30))
    files = [folder / f"{name}.png" for name in "abc"]
    features = images.encode_image_files(files, weights_path, batch_size=2, resize=36, crop=32)
    assert features.shape == (3, 8 * (4 if bottleneck else 1))
    pixels = np.stack([images.load_image(f, resize=36, crop=32) for f in files]).transpose(0, 3, 1, 2)
    expected = _np_resnet(
        pixels.astype(np.float64), {k: v.astype(np.float64) for k, v in weights.items()}, blocks, bottleneck
    )
    # 1e-4: float32 JAX convolutions against a float64 numpy reference.
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=1e-4)


def test_safetensors_weights_load_the_same(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    weights = random_resnet_weights(seed=2)
    safetensors_numpy.save_file(weights, str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "w.npz", **weights)
    a, config = images.load_resnet(tmp_path / "w.safetensors")
    b, _ = images.load_resnet(tmp_path / "w.npz")
    assert config.blocks == (1, 1, 1, 1) and config.feature_dim == 8 and not config.bottleneck
    leaves_a, leaves_b = jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))
    assert len(leaves_a) == len(leaves_b) == 60  # 12 convolutions, each with a batch norm of 4 arrays
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    kernel = np.asarray(a.stages[1][0].convs[0].kernel[...])  # torchvision (out, in, h, w) -> (h, w, in, out)
    np.testing.assert_array_equal(kernel, weights["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))


def test_image_loading_and_weight_errors(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    Image.new("RGB", (50, 20), (124, 116, 104)).save(tmp_path / "flat.png")  # the ImageNet mean colour
    pixels = images.load_image(tmp_path / "flat.png", resize=24, crop=16)
    assert pixels.shape == (16, 16, 3)
    np.testing.assert_allclose(pixels, 0.0, atol=0.01)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=r"broken.png: not a readable image"):
        images.load_image(tmp_path / "broken.png")
    weights = random_resnet_weights()
    del weights["layer2.0.bn1.running_var"]
    np.savez(tmp_path / "w.npz", **weights)
    with pytest.raises(DatasetError, match=r"w.npz has no tensor layer2.0.bn1.running_var"):
        images.load_resnet(tmp_path / "w.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an archive at all")
    with pytest.raises(DatasetError, match=r"junk.npz is not an .npz archive"):
        images.load_resnet(tmp_path / "junk.npz")
    with pytest.raises(DatasetError, match=r"must be a .safetensors or .npz"):
        images.load_resnet(tmp_path / "flat.png")


def test_find_item_images(tmp_path):
    pytest.importorskip("PIL")
    write_pngs(tmp_path, ["x1", "x2"])
    (tmp_path / "notes.txt").write_text("ignored")
    assert sorted(images.find_item_images(tmp_path)) == ["x1", "x2"]
    (tmp_path / "x1.JPG").write_bytes(b"")
    with pytest.raises(DatasetError, match="item 'x1' has two images"):
        images.find_item_images(tmp_path)


# ---------------------------------------------------------------------------------------
# Inputs that would exhaust memory: refused from their headers, before anything is allocated.
# ---------------------------------------------------------------------------------------


@pytest.fixture
def no_huge_resize(monkeypatch):
    """Makes any resize to more than 50 megapixels fail loudly instead of allocating gigabytes."""
    pytest.importorskip("PIL")
    from PIL import Image

    resize = Image.Image.resize

    def guarded(self, size, *args, **kwargs):
        if size[0] * size[1] > 50_000_000:
            raise AssertionError(f"asked Pillow to resize to {size[0]} x {size[1]} pixels")
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", guarded)


def _strip_png(path, width=1, height=40_000):
    from PIL import Image

    Image.new("RGB", (width, height), (10, 20, 30)).save(path)
    return path


def test_an_extreme_aspect_ratio_is_refused_before_resizing(tmp_path, no_huge_resize):
    strip = _strip_png(tmp_path / "strip.png")
    assert strip.stat().st_size < 1000  # a tiny file that would resize to 256 x 10,240,000 pixels (7.9 GB)
    with pytest.raises(DatasetError, match=r"strip.png: 1 x 40000 pixels would be resized to 256 x 10240000"):
        images.load_image(strip)
    # The same strip turned sideways, and a resize bound that the default cap allows.
    wide = _strip_png(tmp_path / "wide.png", width=40_000, height=1)
    with pytest.raises(DatasetError, match=r"wide.png: 40000 x 1 pixels would be resized"):
        images.load_image(wide)
    assert images.load_image(_strip_png(tmp_path / "ok.png", width=20, height=800), resize=24, crop=16).shape == (16, 16, 3)


def test_decompression_bombs_and_oversized_images_are_one_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from PIL import Image

    Image.new("RGB", (100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this: 100 x 100 is a "bomb"
    with pytest.raises(DatasetError, match=r"bomb.png: .*decompression bomb"):
        images.load_image(tmp_path / "bomb.png")
    monkeypatch.undo()
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 5000)  # our own cap, read from the header
    with pytest.raises(DatasetError, match=r"bomb.png: 100 x 100 pixels is more than the 5000 an image may have"):
        images.load_image(tmp_path / "bomb.png")


def _npz_declaring(path, shape, dtype="<f4", payload=b"\0" * 64, extra=None):
    """An .npz whose member ``conv1.weight`` DECLARES ``shape`` but holds ``payload`` (compressed)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("conv1.weight.npy", header.getvalue() + payload)
        for name, value in (extra or {}).items():
            buffer = io.BytesIO()
            np.save(buffer, value)
            archive.writestr(f"{name}.npy", buffer.getvalue())
    return path


def test_npz_weights_declaring_a_huge_array_are_refused_from_the_archive_metadata(tmp_path):
    bomb = _npz_declaring(tmp_path / "bomb.npz", (2**40,))
    assert bomb.stat().st_size < 1000
    with pytest.raises(DatasetError, match=r"bomb.npz: conv1.weight declares shape \(1099511627776,\) float32 \(4,398,046,511,104 bytes\), more than the [\d,]+ bytes image-model weights may hold"):
        images.load_resnet(bomb)
    # Within the cap but more than the archive holds for it: a truncated or crafted member.
    short = _npz_declaring(tmp_path / "short.npz", (64, 3, 7, 7))
    with pytest.raises(DatasetError, match=r"short.npz: conv1.weight declares shape \(64, 3, 7, 7\) float32 \(37,632 bytes\) but the archive holds only \d+ bytes for it"):
        images.load_resnet(short)
    # A member in a .npy format numpy never wrote.
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3, np.float32))
    member = bytearray(buffer.getvalue())
    member[6] = 9  # the format's major version, after b"\x93NUMPY"
    with zipfile.ZipFile(tmp_path / "v9.npz", "w") as archive:
        archive.writestr("conv1.weight.npy", bytes(member))
    with pytest.raises(DatasetError, match=r"v9.npz: conv1.weight is stored in .npy format 9.0"):
        images.load_resnet(tmp_path / "v9.npz")
    # A member whose header length says 60 MB, compressed to almost nothing: refused before it is read.
    with zipfile.ZipFile(tmp_path / "header.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("conv1.weight.npy", b"\x93NUMPY\x02\x00" + (60_000_000).to_bytes(4, "little") + b" " * 60_000_000)
    assert (tmp_path / "header.npz").stat().st_size < 200_000
    with pytest.raises(DatasetError, match=r"header.npz: conv1.weight declares a .npy header of 60,000,000 bytes, more than the 10,000 read"):
        images.load_resnet(tmp_path / "header.npz")
    # Many members, each fine, too large together.
    many = random_resnet_weights()
    np.savez(tmp_path / "w.npz", **many)
    import mirrorgrad_jax.prepare.images as module

    cap = module.MAX_WEIGHT_BYTES
    largest = max(v.nbytes for v in many.values())
    try:
        module.MAX_WEIGHT_BYTES = largest + 1  # every member fits, all of them together do not
        with pytest.raises(DatasetError, match=rf"w.npz declares \d+ bytes of tensors in all, more than the {largest + 1}"):
            images.load_resnet(tmp_path / "w.npz")
    finally:
        module.MAX_WEIGHT_BYTES = cap
    assert images.load_resnet(tmp_path / "w.npz")[1].feature_dim == 8


def test_cli_prepare_folder_refuses_bomb_inputs_in_one_line_writing_nothing(tmp_path, capsys, no_huge_resize):
    from prepare_raw import amazon_rows

    from mirrorgrad_jax.cli import main

    shop = tmp_path / "shop"
    shop.mkdir()
    rows = amazon_rows(n_users=30, n_items=15, seed=6)
    (shop / "interactions.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i, _, _ in rows))
    np.savez(tmp_path / "w.npz", **random_resnet_weights())
    _npz_declaring(tmp_path / "bomb.npz", (2**40,))
    (shop / "images").mkdir()
    item = sorted({i for _, i, _, _ in rows})[0]
    _strip_png(shop / "images" / f"{item}.png")
    out = tmp_path / "out"
    cases = [(["--image-weights", str(tmp_path / "bomb.npz")], "bomb.npz: conv1.weight declares shape"),
             (["--image-weights", str(tmp_path / "w.npz")], f"{item}.png: 1 x 40000 pixels would be resized")]  # fmt: skip
    for flags, fragment in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        code = main(["prepare", "folder", str(shop), *flags, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and fragment in err, err
        assert not out.exists()
        left = sorted(p.name for p in tmp_path.iterdir())
        # the weights are checked before any step; an image only in the image step, whose
        # earlier steps are kept for a rerun (as for any bad input found there)
        assert left == before or left == sorted(before + [".out.prepare-work"])
