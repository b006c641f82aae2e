"""Per-model maps of the step-level parity check (``benchmarks/parity.py``, issue 30).

One :class:`ParityMap` per model says how the reference's model corresponds to this
project's: which reference class (and which checkout: the Mirror-Gradient repository or
MMRec) builds it, the settings both sides get, which reference ``state_dict`` entry
becomes which of our parameters (and whether it is transposed), and what had to be made
deterministic so the two sides compute the same thing.

This module imports only the standard library at its top: the reference's process (its
own Python, with torch and without JAX) imports it too.

Adding a model
--------------

1. Read the reference model (``src/models/<name>.py`` of the checkout) and ours
   (``models/<name>.py``). List the reference's ``state_dict()`` keys: every key is either
   a parameter (it goes in ``params``) or a buffer / constant (``constants`` when our
   model holds the same tensor as a :class:`~mirrorgrad_jax.models.Constant` that must be
   taken from the reference, e.g. a frozen random table; ``ignore`` when it is derived
   from the data and both sides compute it, with the reason in ``notes``).
2. Add an entry to :data:`PARITY_MAPS` keyed by our registry name::

       "mymodel": ParityMap(
           reference="MyModel",              # the reference's class / config name
           source="mmrec",                   # or "mg" (Mirror-Gradient checkout)
           settings={"embedding_size": 16, "reg_weight": 1e-3},   # both configs, same names
           params={
               "user_embedding.weight": "users",          # reference key -> our param path
               "proj.weight": ("proj_w", "T"),            # (path, "T"): transposed (torch Linear)
           },
           deterministic="what was switched off or exported, on which side",
       ),

   Our parameter paths are the dotted paths of ``nnx.state(model, nnx.Param)``
   (``encoder.layers.0.kernel``); ``python benchmarks/parity.py --list-params MODEL``
   prints them with their shapes. Every reference parameter and every one of ours must
   be mapped, or the check stops and names the key.
3. Randomness that cannot be shared: either switch it off on both sides through
   ``settings`` / ``ours`` / ``reference_settings`` (dropout 0, ...), or export it from
   the reference (``constants``), or give the map a ``reference_hook`` / ``ours_hook``
   (functions of this module, named by string, run after the model is built: the place
   to zero a dropout rate the config cannot reach or to copy an exported sample in).
   Say which in ``deterministic``.
4. Run ``python benchmarks/parity.py --reference /tmp/mgref --mmrec /tmp/mmrecref
   --models mymodel`` and add the row to ``benchmarks/results/parity.md`` (``--out``).
   If a tolerance is missed, first check the harness (same batch, same init, float64,
   nothing random left), then report the port difference: which term / parameter, how
   large.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["PARITY_MAPS", "TRANSFORMS", "ParityMap"]

#: What a ``params`` entry may do to a reference tensor before it becomes ours.
TRANSFORMS = ("", "T")


@dataclasses.dataclass(frozen=True)
class ParityMap:
    """How one reference model corresponds to ours.

    Attributes:
      reference: the reference's model class (and config file) name, e.g. ``"VBPR"``.
      source: ``"mg"`` (the Mirror-Gradient checkout, ``--reference``) or ``"mmrec"``
        (the MMRec checkout, ``--mmrec``).
      params: reference ``state_dict`` key -> our parameter path, or ``(path, "T")`` for a
        2-d tensor stored transposed (torch ``Linear.weight`` is ``(out, in)``).
      settings: model settings both sides get under the same name.
      ours: settings of our config only (names the reference does not share).
      reference_settings: settings of the reference's config only.
      constants: reference ``state_dict`` key (a buffer), or ``"attr:<dotted.attribute>"``
        of the reference model, -> our :class:`~mirrorgrad_jax.models.Constant` path: a
        tensor taken from the reference (frozen random tables, sampled graphs).
      terms: the loss terms compared one by one: the reference's recorded term (its loss
        modules' outputs at step 0, named ``<call index>_<class>``, e.g. ``1_EmbLoss``) ->
        the field of OUR config that weights it (the reference's loss being ``base +
        sum(weight * term)``), or ``""`` for the base term. Our term is read off our own
        loss with that weight set to 0 (``(L - L_0) / weight``; the base term: every listed
        weight 0), so no line of our loss is re-implemented here.
      ignore: reference ``state_dict`` keys that are neither mapped nor taken (buffers
        both sides derive from the data); say why in ``notes``.
      reference_hook / ours_hook: names of functions of this module run on the freshly
        built model (``hook(model)``; the reference's gets ``torch`` as a second
        argument) before weights are loaded.
      deterministic: what was made deterministic, on which side, or why nothing needed to be.
      notes: anything else a reader of the parity table should know.
      score_transform: ``""`` or ``"sigmoid"``: applied to OUR scores before they are compared,
        for a reference whose ``full_sort_predict`` returns a monotone transform of what our
        ``scores`` returns (SLMRec ranks with ``sigmoid(u . i)``, ours with ``u . i``).
      reference_build_dtype: torch's default dtype while the reference's constructor runs
        (``"float64"``; ``"float32"`` for a constructor that mixes its float32 features with
        tensors it creates at the default dtype, as SMORE's ``max_pool_fusion`` does). The model
        is cast to float64 right after either way.
      data_hook: name of a function of this module run as ``hook(folder)`` on the model's own
        copy of the data folder (``.../baby``) before the reference builds: files the reference
        reads that the common folder lacks (DA-MRS's ``item_graph_dict_2.npy``).
      model: our registry name when the entry's key is not one (a second row of the same
        model under other conditions, e.g. ``"lattice-zeros"``).
      zero_grad: what the reference's ``optimizer.zero_grad()`` does: ``"torch"`` (as its
        torch does: ``None`` gradients from torch 2.0, ours ``zero_grad="none"``) or
        ``"zeros"`` (made to write zeros, as the reference's pinned torch 1.13 did; ours
        ``zero_grad="zeros"``, the project's default). It matters only for a model with
        first-batch parameters (LATTICE's graph learner).
    """

    reference: str
    source: str
    params: Mapping[str, Any]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    ours: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reference_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    constants: Mapping[str, str] = dataclasses.field(default_factory=dict)
    terms: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    reference_hook: str | None = None
    ours_hook: str | None = None
    deterministic: str = "nothing random in the loss"
    notes: str = ""
    score_transform: str = ""
    reference_build_dtype: str = "float64"
    data_hook: str | None = None
    model: str | None = None
    zero_grad: str = "torch"

    def param_entries(self) -> list[tuple[str, str, str]]:
        """``(reference key, our path, transform)`` for every mapped parameter.

        Raises:
          ValueError: an entry that is neither a path nor ``(path, transform)`` with a known transform.
        """
        out = []
        for ref_key, target in self.params.items():
            if isinstance(target, str):
                path, transform = target, ""
            elif isinstance(target, (tuple, list)) and len(target) == 2 and all(isinstance(t, str) for t in target):
                path, transform = target
            else:
                raise ValueError(f"{self.reference}: params[{ref_key!r}] must be a path or (path, transform), got {target!r}")
            if transform not in TRANSFORMS:
                raise ValueError(f"{self.reference}: params[{ref_key!r}] has transform {transform!r}; known: {TRANSFORMS}")
            out.append((ref_key, path, transform))
        return out


def _projections(prefix: str = "") -> dict[str, Any]:
    """The reference's modality projections (``image_embedding`` / ``image_trs``, ``text_*``), the
    ``nn.Embedding`` of raw features and the ``nn.Linear`` onto the latent space, -> ours:
    ``<prefix>image_emb``, ``<prefix>image_trs_w`` (transposed) and ``<prefix>image_trs_b``."""
    out: dict[str, Any] = {}
    for role in ("image", "text"):
        out[f"{role}_embedding.weight"] = f"{prefix}{role}_emb"
        out[f"{role}_trs.weight"] = (f"{prefix}{role}_trs_w", "T")
        out[f"{role}_trs.bias"] = f"{prefix}{role}_trs_b"
    return out


#: Small sizes: the check runs in seconds per model on a CPU, in float64 on both sides.
_SMALL = {"embedding_size": 16}
#: BPR + reg_weight * EmbLoss, the loss of most MMRec baselines.
_BPR_EMB = {"0_BPRLoss": "", "1_EmbLoss": "reg_weight"}

#: LATTICE's reference parameters -> ours (two rows use them).
_LATTICE_PARAMS = {
    "user_embedding.weight": "users",
    "item_id_embedding.weight": "items",
    "modal_weight": "graph_learner.modal_weight",
    **_projections('graph_learner.'),
}

#: LATTICE under the reference's torch (2.x: zero_grad sets None, Adam skips the graph learner
#: after an epoch's first batch; ours zero_grad="none"); its "lattice-zeros" twin below.
_LATTICE = ParityMap(
    reference="LATTICE",
    source="mg",
    settings={**_SMALL, "feat_embed_dim": 16, "knn_k": 10, "lambda_coeff": 0.9, "n_layers": 1, "reg_weight": 1e-3},
    # weight_size: two LightGCN layers (our n_ui_layers = 2); learning_rate: the yaml has a grid.
    reference_settings={"cf_model": "lightgcn", "weight_size": [16, 16], "learning_rate": 0.001},
    # The reference divides its L2 term by the CONFIG batch size: keep equal to --batch-size (256).
    ours={"n_ui_layers": 2, "reg_batch_size": 256},
    params=_LATTICE_PARAMS,
    terms={"0_BPRTermLoss": "", "1_L2TermLoss": "reg_weight"},
    reference_hook="lattice_frozen_graphs_reference_hook",
    constants={f"attr:_parity_{role}_{part}": f"graph_learner.{role}_knn_{part}" for role in ("image", "text") for part in ("idx", "val")},
    deterministic=("nothing random; the frozen raw-feature kNN graphs are the reference's, exported (float32-built on both sides otherwise); "
                   "the learned item graph is rebuilt with gradient in the first calculate_loss after "
                   "pre_epoch_processing (ours: first_batch_loss at step 0 and batch 0 of the N steps) and reused detached; "
                   "torch 2's zero_grad(set_to_none) -> ours zero_grad='none' (the graph learner skipped on steps 1..N-1)"),
    notes=("terms recorded by parameter-free modules around the reference's bpr_loss (mf_loss; emb_loss / reg_weight). "
           "Both sides build the frozen kNN graphs in float32 (the reference's raw features are float32): the same "
           "neighbour lists, values 3.4e-7 apart, which Adam's first step turns into ~1e-4 on entries whose gradient is "
           "near eps; hence they are exported. Over epoch 0 in full, the rebuild and 4 batches of epoch 1 (a diagnostic "
           "beside this check): 2.2e-13"),
)

PARITY_MAPS: dict[str, ParityMap] = {
    "vbpr": ParityMap(
        reference="VBPR",
        source="mg",
        settings={**_SMALL, "reg_weight": 1e-3},
        # Our default projects each distinct batch item once; "all_items" is the reference's
        # order of operations (the same model; chosen so the check compares like with like).
        ours={"projection": "all_items"},
        params={
            "u_embedding": "users",
            "i_embedding": "items",
            "item_linear.weight": ("proj_w", "T"),
            "item_linear.bias": "proj_b",
        },
        terms=_BPR_EMB,
        deterministic="nothing random: the reference's F.dropout runs with p=0.0 (identity)",
    ),
    "bprmf": ParityMap(
        reference="BPR",
        source="mmrec",
        settings={**_SMALL, "reg_weight": 1e-3},
        params={"user_embedding.weight": "users", "item_embedding.weight": "items"},
        terms=_BPR_EMB,
        deterministic="nothing random: the reference's F.dropout runs with p=0.0 (identity)",
    ),
    "lightgcn": ParityMap(
        reference="LightGCN",
        source="mmrec",
        settings={**_SMALL, "n_layers": 2, "reg_weight": 1e-3},
        params={"embedding_dict.user_emb": "users", "embedding_dict.item_emb": "items"},
        terms=_BPR_EMB,
        deterministic="nothing random in the loss (full graph, no dropout)",
    ),
    "layergcn": ParityMap(
        reference="LayerGCN",
        source="mg",
        # dropout 0.1: the pruned, re-normalised training graph is exercised (the reference's
        # own torch.multinomial sample, exported); n_layers 4 is the reference's only grid value.
        settings={**_SMALL, "n_layers": 4, "reg_weight": 1e-3, "dropout": 0.1},
        params={"user_embeddings": "users", "item_embeddings": "items"},
        constants={
            "attr:parity_masked_rows": "masked_rows",
            "attr:parity_masked_cols": "masked_cols",
            "attr:parity_masked_values": "masked_values",
        },
        terms={"0_L2Loss": "reg_weight"},
        reference_hook="layergcn_export_sample",
        deterministic="the epoch's pruned training graph (reference: torch.multinomial over 1/sqrt(d_u d_i), 10% of the "
        "edges dropped, re-normalised) exported from the reference and loaded as ours",
        notes="the reference computes BPR inline (no loss module), so only L2Loss is recorded as a term; the total covers BPR. "
        "Scores: both recompute the representation on the full A_sym with the current weights",
    ),
    "dualgnn": ParityMap(
        reference="DualGNN",
        source="mg",
        # The reference hard-codes dim_latent = 64 (MLP width 256) whatever embedding_size says.
        settings={"embedding_size": 64, "reg_weight": 1e-3, "aggr_mode": "add"},
        # DualGNN.yaml makes learning_rate a grid; the overall default is taken.
        reference_settings={"learning_rate": 0.001},
        params={
            "weight_u": "weight_u",
            "weight_i": "weight_i",
            "v_gcn.preference": "gcn_image.pref",
            "v_gcn.MLP.weight": ("gcn_image.mlp_w", "T"),
            "v_gcn.MLP.bias": "gcn_image.mlp_b",
            "v_gcn.MLP_1.weight": ("gcn_image.mlp1_w", "T"),
            "v_gcn.MLP_1.bias": "gcn_image.mlp1_b",
            "t_gcn.preference": "gcn_text.pref",
            "t_gcn.MLP.weight": ("gcn_text.mlp_w", "T"),
            "t_gcn.MLP.bias": "gcn_text.mlp_b",
            "t_gcn.MLP_1.weight": ("gcn_text.mlp1_w", "T"),
            "t_gcn.MLP_1.bias": "gcn_text.mlp1_b",
        },
        constants={"attr:parity_user_graph": "user_nbr_idx", "attr:user_weight_matrix": "user_nbr_weights"},
        ignore=("MLP_v.weight", "MLP_t.weight", "MLP_user.weight", "MLP_user.bias"),
        reference_hook="dualgnn_export_sample",
        ours_hook="dualgnn_wide_edge_norm",
        deterministic="the epoch's user-graph sample (topk_sample: 40 neighbours per user, random padding, softmax "
        "weights) exported from the reference and loaded as ours; our GCN edge weights recomputed in float64 (hook)",
        notes="MLP_v, MLP_t, MLP_user are registered by the reference but used by no forward pass (no gradient; Adam "
        "skips them): not created here, ignored. Scores: both rank with the representation cached by the last "
        "training forward (stale evaluation), here the step-0 forward",
    ),
    "freedom": ParityMap(
        reference="FREEDOM",
        source="mg",
        # reg_weight 1e-3 (grid max) so the modality BPR terms weigh in; dropout 0.8 (grid) prunes 80% of the edges.
        settings={**_SMALL, "knn_k": 10, "n_mm_layers": 1, "n_ui_layers": 2, "mm_image_weight": 0.1, "dropout": 0.8, "reg_weight": 1e-3},
        reference_settings={"feat_embed_dim": 16},
        params={
            "user_embedding.weight": "users",
            "item_id_embedding.weight": "items",
            **_projections(),
        },
        constants={"attr:_parity_masked_rows": "masked_rows", "attr:_parity_masked_cols": "masked_cols", "attr:_parity_masked_values": "masked_values"},
        terms={"0_BPRTermLoss": "", "1_ModalBPRSumLoss": "reg_weight"},
        reference_hook="freedom_reference_hook",
        deterministic=("the degree-sensitive edge sample (torch.multinomial in pre_epoch_processing) is exported: the reference's "
                       "pruned, re-normalised graph (coalesced rows/cols/values) replaces ours; the N steps stay in epoch 0 (no resample)"),
        notes=("terms recorded by parameter-free modules the hook puts around the reference's bpr_loss method: the id BPR, "
               "and the text + image BPR sum (ours can only weigh them together); the kNN graph is rebuilt on both sides, not exported. "
               "Across an epoch boundary (diagnostic, /tmp/parity_work/h_proto/h_2ep.py: epoch 0 in full, pre_epoch_processing, "
               "4 batches of epoch 1, its new sample fed to ours): 2.6e-6 MG off, 2.1e-6 MG on (26% without feeding the sample)"),
    ),
    "bm3": ParityMap(
        reference="BM3",
        source="mg",
        settings={**_SMALL, "n_layers": 1, "dropout": 0.3, "reg_weight": 0.1, "cl_weight": 2.0},
        params={
            "user_embedding.weight": "users",
            "item_id_embedding.weight": "items",
            "predictor.weight": ("predictor_w", "T"),
            "predictor.bias": "predictor_b",
            **_projections(),
        },
        constants={f"attr:_parity_keep_{role}": f"parity_keep_{role}" for role in ("users", "items", "text", "image")},
        terms={"1_AlignLoss": "", "0_CLSumLoss": "cl_weight", "2_EmbLoss": "reg_weight"},
        reference_hook="bm3_reference_hook",
        ours_hook="bm3_ours_hook",
        deterministic=("the target dropout (always on, 4 F.dropout calls per loss: users, items, text, image) uses FIXED keep "
                       "masks on both sides: drawn once by the reference's hook (torch RNG, p = 0.3), exported, and applied at "
                       "every call (step 0, the N steps, MG's second pass) as x * mask / (1 - p); ours gathers the same rows"),
        notes=("terms: EmbLoss (a module) and two sums recorded by parameter-free modules around the reference's "
               "cosine_similarity: the 4 modality alignment terms (cl_weight) and loss_ui + loss_iu (base)"),
    ),
    "mgcn": ParityMap(
        reference="MGCN",
        source="mg",
        # reg_weight 1e-3 (the yaml's 1e-4 x 10) and cl 0.1 (grid max) so both terms weigh in.
        settings={**_SMALL, "n_ui_layers": 2, "n_layers": 1, "knn_k": 10, "reg_weight": 1e-3},
        reference_settings={"cl_loss": 0.1},
        # The reference divides its L2 term by the CONFIG batch size: keep equal to --batch-size (256).
        ours={"cl_weight": 0.1, "reg_batch_size": 256},
        params={
            "user_embedding.weight": "users",
            "item_id_embedding.weight": "items",
            **_projections(),
            "query_common.0.weight": ("query_common_w1", "T"),
            "query_common.0.bias": "query_common_b1",
            "query_common.2.weight": ("query_common_w2", "T"),
            **{f"{gate}.0.weight": (f"{gate}_w", "T") for gate in ("gate_v", "gate_t", "gate_image_prefer", "gate_text_prefer")},
            **{f"{gate}.0.bias": f"{gate}_b" for gate in ("gate_v", "gate_t", "gate_image_prefer", "gate_text_prefer")},
        },
        terms={"0_BPRTermLoss": "", "1_L2TermLoss": "reg_weight", "2_InfoNCESumLoss": "cl_weight"},
        reference_hook="mgcn_reference_hook",
        deterministic="nothing random in the loss (no dropout, no sampling); the kNN graphs are rebuilt on both sides from the raw features, not exported",
        notes=("terms recorded by parameter-free modules around the reference's bpr_loss (mf_loss; emb_loss / reg_weight) and "
               "InfoNCE (items + users); ours sets reg_batch_size = 256 = the harness's batch size (the reference's config batch size). "
               "The graphs are built on both sides (float32 in both): same neighbour lists and entries, values 1.2e-7 (user-item) "
               "and 4.7e-7 (kNN) apart, hence ~6e-5 after 6 steps; with the reference's four graphs exported (diagnostic, "
               "/tmp/parity_work/h_proto): 1.1e-13 gradients, 3.3e-13 after 6 steps"),
    ),
    "lattice": _LATTICE,
    # LATTICE as the reference ran it (PyTorch 1.13: zero_grad writes zeros, Adam keeps moving
    # the graph learner on its momentum), against the project's default zero_grad="zeros".
    "lattice-zeros": dataclasses.replace(
        _LATTICE,
        model="lattice",
        zero_grad="zeros",
        deterministic=("as the lattice row; the reference's optimizer.zero_grad() made to write zeros (torch 1.13, its pinned "
                       "environment) -> ours zero_grad='zeros' (the default): the graph learner keeps moving on Adam's momentum"),
        notes="",
    ),
    "selfcfed_lgn": ParityMap(
        reference="SELFCFED_LGN",
        source="mg",
        # dropout 0.2 and n_layers 2: both random paths (edge dropout, target dropout) and two layers run.
        settings={**_SMALL, "n_layers": 2, "dropout": 0.2, "reg_weight": 1e-3},
        params={
            "online_encoder.embedding_dict.user_emb": "users",
            "online_encoder.embedding_dict.item_emb": "items",
            "predictor.weight": ("predictor_w", "T"),
            "predictor.bias": "predictor_b",
        },
        terms={"0_L2Loss": "reg_weight", "1_AlignTermLoss": ""},
        reference_hook="selfcfed_fixed_sample_reference",
        ours_hook="selfcfed_fixed_sample_ours",
        deterministic="the edge dropout (its random rate and its mask over the 2E stored entries) and the targets' dropout "
        "masks: one fixed sample (numpy, fixed seed) used by both sides at every call (step 0, every step, both MG passes)",
        notes="the random draws themselves (rate ~ U[0,1), Bernoulli masks) are not compared, only what the model does "
        "with a sample. Align term = total - reg_weight * L2Loss on the reference's side",
    ),
    "grcn": ParityMap(
        reference="GRCN",
        source="mg",
        settings={**_SMALL, "latent_embedding": 16, "n_layers": 3, "reg_weight": 1e-3},
        reference_settings={"learning_rate": 0.001},  # GRCN.yaml makes it a grid
        params={
            "id_gcn.id_embedding": "id_emb",
            "v_gcn.preference": "cgcn_image.pref",
            "v_gcn.MLP.weight": ("cgcn_image.mlp_w", "T"),
            "v_gcn.MLP.bias": "cgcn_image.mlp_b",
            "t_gcn.preference": "cgcn_text.pref",
            "t_gcn.MLP.weight": ("cgcn_text.mlp_w", "T"),
            "t_gcn.MLP.bias": "cgcn_text.mlp_b",
            "model_specific_conf": "conf",
        },
        terms={"0_BPRTermLoss": "", "1_RegTermLoss": "reg_weight"},
        reference_hook="grcn_terms_reference",
        deterministic="nothing random: the reference's dropout_adj runs with p=0 (identity)",
        notes="routing='reference' (the reference's routing loop only re-normalises the preferences). Terms read off the "
        "reference's calculate_loss with reg_weight set to 0 (a second forward without gradient), as ours. Scores: both "
        "rank with the representation cached by the step-0 forward (stale evaluation)",
    ),
    "mmgcn": ParityMap(
        reference="MMGCN",
        source="mg",
        settings={**_SMALL, "reg_weight": 1e-3},
        reference_settings={"learning_rate": 0.001},  # MMGCN.yaml makes it a grid
        params={
            "v_gcn.MLP.weight": ("gcn_image.mlp.w", "T"),
            "v_gcn.MLP.bias": "gcn_image.mlp.b",
            **{
                f"{ref}.{r_layer}{layer}{suffix}": target
                for ref, ours in (("v_gcn", "gcn_image"), ("t_gcn", "gcn_text"))
                for layer in (1, 2, 3)
                for r_layer, o_layer in (("linear_layer", "lin"), ("g_layer", "gate"))
                for suffix, target in ((".weight", (f"{ours}.{o_layer}{layer}.w", "T")), (".bias", f"{ours}.{o_layer}{layer}.b"))
            },
            **{f"{ref}.conv_embed_{layer}.weight": f"{ours}.conv{layer}" for ref, ours in (("v_gcn", "gcn_image"), ("t_gcn", "gcn_text")) for layer in (1, 2, 3)},
        },
        constants={"attr:id_embedding": "id_emb", "attr:v_gcn.preference": "gcn_image.pref", "attr:t_gcn.preference": "gcn_text.pref"},
        terms={"0_BPRTermLoss": "", "1_RegTermLoss": "reg_weight"},
        reference_hook="mmgcn_terms_reference",
        deterministic="nothing random in the loss; the frozen random tensors (id_embedding, both preferences: plain "
        "tensors the reference never optimises) exported from the reference and loaded as ours",
        notes="the regulariser reads only the frozen tensors: it changes the loss value, not the gradients. Terms read off "
        "with reg_weight set to 0 on both sides. Scores: stale (the step-0 forward's representation) on both",
    ),
    "slmrec": ParityMap(
        reference="SLMRec",
        source="mg",
        settings={"ssl_temp": 0.1, "ssl_alpha": 0.01, "temp": 0.2},
        ours={"embedding_size": 16, "n_layers": 3},
        # the reference's names for d and the layer count; its yaml makes these grids
        reference_settings={"recdim": 16, "layer_num": 3, "reg": 1e-4, "learning_rate": 0.001},
        params={
            "embedding_user.weight": "user_embedding",
            "embedding_item.weight": "item_embedding",
            **{
                f"{ref}.{part}": ((f"{ours}.weight", "T") if part == "weight" else f"{ours}.bias")
                for ref, ours in (
                    ("v_dense", "v_dense"), ("t_dense", "t_dense"), ("embedding_user_after_GCN", "user_fusion"),
                    ("embedding_item_after_GCN", "item_fusion"), ("g_i_iv", "g_i_iv"), ("g_v_iv", "g_v_iv"),
                    ("g_iv_iva", "g_iv_iva"), ("g_iva_ivat", "g_iva_ivat"), ("g_t_ivat", "g_t_ivat"),
                )
                for part in ("weight", "bias")
            },
        },
        ignore=("g_a_iva.weight", "g_a_iva.bias"),
        terms={"0_CrossEntropyLoss": "", "3_SSLTermLoss": "ssl_alpha"},
        constants={"attr:v_feat": "image", "attr:t_feat": "text", "attr:_parity_adj_values": "adj_values"},
        reference_hook="slmrec_reference_hook",
        score_transform="sigmoid",
        deterministic="nothing random: ssl_task FAC (the reference's config; its FD / FM augmentations are not used). The "
        "row-normalised features and the A_pre values, which the reference computes in float32 at build time, exported",
        notes="g_a_iva is registered by the reference and used by no forward pass (no gradient): not created here, ignored. "
        "Terms: the in-batch InfoNCE (the first CrossEntropyLoss call) and the FAC sum L_v + L_t (compute_ssl). Scores: the "
        "reference ranks with sigmoid(u.i), ours with u.i (monotone); compared after the sigmoid. Without the exported features / graph values (each side's own float32 "
        "rounding): loss 7e-10, gradients 6e-8, after 6 steps 2e-6 (2026-12-06). g_v_iv.bias and g_t_ivat.bias have a "
        "gradient that is zero in exact arithmetic (a per-row shift of the FAC logits): rounding noise on both sides",
    ),
    "dragon": ParityMap(
        reference="DRAGON",
        source="mg",
        # The reference hard-codes dim_latent = 64 (MLP width 256) whatever embedding_size says.
        settings={"embedding_size": 64, "reg_weight": 1e-3, "knn_k": 10, "mm_image_weight": 0.1, "n_mm_layers": 1, "aggr_mode": "add"},
        reference_settings={"learning_rate": 0.001},  # DRAGON.yaml makes it a grid
        params={
            "weight_u": "weight_u",
            **{
                f"{ref}.{part}": target
                for ref, ours in (("v_gcn", "gcn_image"), ("t_gcn", "gcn_text"))
                for part, target in (
                    ("preference", f"{ours}.pref"), ("MLP.weight", (f"{ours}.mlp_w", "T")), ("MLP.bias", f"{ours}.mlp_b"),
                    ("MLP_1.weight", (f"{ours}.mlp1_w", "T")), ("MLP_1.bias", f"{ours}.mlp1_b"),
                )
            },
        },
        constants={"attr:parity_user_graph": "user_nbr_idx", "attr:user_weight_matrix": "user_nbr_weights"},
        ignore=("MLP_v.weight", "MLP_t.weight", "MLP_user.weight", "MLP_user.bias", "weight_i", "image_embedding.weight",
                "text_embedding.weight", "image_trs.weight", "image_trs.bias", "text_trs.weight", "text_trs.bias"),
        terms={"0_BPRTermLoss": "", "1_RegTermLoss": "reg_weight"},
        reference_hook="dragon_export_sample",
        ours_hook="dragon_wide_constants",
        deterministic="the epoch's user-graph sample (40 neighbours per user, random padding, softmax weights) exported "
        "from the reference and loaded as ours; our GCN edge weights and mm_adj values recomputed in float64 (hook)",
        notes="image/text_embedding (used only to build mm_adj), image/text_trs, MLP_v, MLP_t, MLP_user and weight_i are "
        "registered by the reference and used by no forward pass (no gradient; Adam skips them): not created here, ignored. "
        "Without the float64 hook (float32-built constants widened): step 0 ~5e-8, after 6 steps 4.4e-4 (Adam's "
        "per-element normalisation magnifies the 1e-8 differences of near-zero gradient entries). Scores: both recompute "
        "the forward (the MG reference's full_sort_predict)",
    ),
    "mvgae": ParityMap(
        reference="MVGAE",
        source="mg",
        settings={**_SMALL, "n_layers": 1},
        # The reference's KL weight is config["beta"], which MG's beta (3) overrides in every arm of this check.
        ours={"kl_weight": 3.0, "kl_weight_from_mg_beta": False, "conv_dropout": 0.0},
        reference_settings={"learning_rate": 0.001},  # MVGAE.yaml makes it a grid
        params={
            f"{ref}.{r_name}.{part}": ((f"{ours}.{o_name}_w", "T") if part == "weight" and transposed else f"{ours}.{o_name}_{part[0]}")
            for ref, ours in (("v_gcn", "image_gcn"), ("t_gcn", "text_gcn"), ("c_gcn", "collab_gcn"))
            for r_name, o_name, transposed in (
                ("MLP", "mlp", True), ("conv_embed_1", "conv1", False), ("conv_embed_4", "conv4", False), ("conv_embed_5", "conv5", False),
                ("g_layer1", "g1", True), ("g_layer4", "g4", True), ("g_layer5", "g5", True), ("linear_layer4", "lin4", True),
                ("linear_layer5", "lin5", True),
            )
            for part in ("weight", "bias")
        },
        constants={
            "attr:v_gcn.preference": "image_gcn.pref",
            "attr:t_gcn.preference": "text_gcn.pref",
            "attr:c_gcn.preference": "collab_gcn.pref",
            "attr:collaborative": "collab_gcn.features",
        },
        ignore=tuple(
            f"{ref}.{name}.{part}"
            for ref in ("v_gcn", "t_gcn", "c_gcn")
            for name in ("linear_layer1", "conv_embed_2", "linear_layer2", "g_layer2")
            for part in ("weight", "bias")
        ),
        terms={"0_ReconSumLoss": "", "1_KLSumLoss": "kl_weight"},
        reference_hook="mvgae_fixed_noise_reference",
        ours_hook="mvgae_fixed_noise_ours",
        deterministic="conv dropout (p=0.1, training only) switched off on both sides (ours conv_dropout=0; the reference's "
        "F.dropout made the identity); the reparameterisation noise one fixed (4, N, d) table (numpy, fixed seed) used by "
        "both sides at every call (z_pd, z_v, z_t, z_c); the frozen random tensors (preferences, collaborative table) exported",
        notes="linear_layer1 (output discarded), and with n_layers=1 conv_embed_2 / linear_layer2 / g_layer2, are registered "
        "by the reference and unused (no gradient): not created here, ignored. Our mean-aggregation weights 1/(deg+1) "
        "recomputed in float64 (hook; without it, float32-rounded: gradients 3e-8, after 6 steps 4e-6, 2026-12-06). Terms: sum of the four reconstructions, sum of the four KLs. Scores: stale "
        "sigmoid(pd_mu) of the step-0 forward on both",
    ),
    "smore": ParityMap(
        reference="SMORE",
        source="mmrec",
        settings={**_SMALL, "n_ui_layers": 2, "n_layers": 1, "image_knn_k": 5, "text_knn_k": 5, "reg_weight": 1e-3, "dropout_rate": 0.1},
        # The reference divides its L2 term by the CONFIG batch size (train_batch_size, the check's 256).
        ours={"cl_weight": 0.1, "reg_batch_size": 256},
        reference_settings={"cl_loss": 0.1},
        reference_build_dtype="float32",
        params={
            "user_embedding.weight": "users",
            "item_id_embedding.weight": "items",
            **_projections(),
            **{f"{g}.0.weight": (f"{g}_w", "T") for g in ("gate_v", "gate_t", "gate_f", "gate_image_prefer", "gate_text_prefer", "gate_fusion_prefer")},
            **{f"{g}.0.bias": f"{g}_b" for g in ("gate_v", "gate_t", "gate_f", "gate_image_prefer", "gate_text_prefer", "gate_fusion_prefer")},
            **{f"query_{m}.0.weight": (f"query_{m}_w1", "T") for m in "vt"},
            **{f"query_{m}.0.bias": f"query_{m}_b1" for m in "vt"},
            **{f"query_{m}.2.weight": (f"query_{m}_w2", "T") for m in "vt"},
            **{f"{v}_complex_weight": f"{v}_complex_weight" for v in ("image", "text", "fusion")},
        },
        constants={
            **{f"attr:_parity_{v}_knn_val": f"{v}_knn_val" for v in ("image", "text", "fusion")},
            "attr:_parity_adj_values": "adj_values",
            "attr:_parity_r_values": "r_values",
            "attr:_parity_gate_masks": "parity_gate_masks",
        },
        terms={"0_BPRLoss": "", "1_EmbLoss": "reg_weight", "2_InfoNCELoss": "cl_weight"},
        reference_hook="smore_fixed_masks_reference",
        ours_hook="smore_fixed_masks_ours",
        deterministic="preference-gate dropout (dropout_rate 0.1, a grid value): three fixed (N, d) masks EXPORTED and used at "
        "every training forward on both sides (MG's second pass included); nothing else random. The graph values the "
        "reference builds in float32 (kNN lists, max-pool fusion, user-item graph and its R block) exported",
        notes="The reference's constructor is run under torch's float32 default (max_pool_fusion fails under float64). Without "
        "the exported graph values (both sides build them in float32, 4e-7 apart, same patterns and slot order): gradients "
        "3e-7, after 6 steps 2.2e-5 (2026-12-06). With dropout_rate 0 instead of the masks: the same agreement. Terms: "
        "mf_loss, emb_loss / reg_weight, the sum of the two InfoNCE calls",
    ),
    "lgmrec": ParityMap(
        reference="LGMRec",
        source="mmrec",
        settings={**_SMALL, "n_ui_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 1, "hyper_num": 4, "keep_rate": 1.0, "alpha": 0.3,
                  "cl_weight": 1e-2, "reg_weight": 1e-3},
        reference_settings={"feat_embed_dim": 16, "cf_model": "lightgcn"},
        params={
            "user_embedding.weight": "users",
            "item_id_embedding.weight": "items",
            "item_image_trs": "image_trs",
            "v_hyper": "image_hyper",
            "item_text_trs": "text_trs",
            "t_hyper": "text_hyper",
        },
        ignore=("image_embedding.weight", "text_embedding.weight"),
        constants={
            "attr:_parity_adj_values": "adj_values",
            "attr:_parity_inv_user_degree": "inv_user_degree",
            "attr:_parity_gumbel_items": "parity_gumbel_items",
            "attr:_parity_gumbel_users": "parity_gumbel_users",
        },
        terms={"0_BPRLoss": "", "1_RegLoss": "reg_weight", "2_HclLoss": "cl_weight"},
        reference_hook="lgmrec_fixed_noise_reference",
        ours_hook="lgmrec_fixed_noise_ours",
        deterministic="Gumbel noise: four fixed tables EXPORTED and added by both sides' gumbel_softmax at every forward, "
        "training and ranking (the reference samples noise under eval() too; ours eval_gumbel_noise=True, the default); "
        "hyperedge dropout off (keep_rate 1: inline in our forward, not replaceable). The float32 graph values and "
        "1/(deg + 1e-7) exported",
        notes="image/text_embedding: the frozen feature tables (both read the same file). Terms: bpr, the reg term "
        "(non-squared norms), the sum of the two ssl_triple_loss calls. Also run with the noise switched off on both sides "
        "(lgmrec_reference_hook / lgmrec_ours_hook, eval_gumbel_noise=False): the same agreement. Not covered: the noise "
        "law (torch -log(Exp(1)), ours jax.random.gumbel: the same distribution) and the dropout masks (Bernoulli(keep_rate), "
        "scaled 1/keep_rate)",
    ),
    "pgl": ParityMap(
        reference="PGL",
        source="mmrec",
        settings={**_SMALL, "knn_k": 5, "mm_image_weight": 0.1, "n_mm_layers": 1, "n_ui_layers": 2, "dropout": 0.2, "reg_weight": 0.1,
                  "mode": "local"},
        reference_settings={"feat_embed_dim": 16},
        params={
            "user_image.weight": "user_image",
            "user_text.weight": "user_text",
            **_projections(),
        },
        constants={
            **{f"attr:_parity_edge_{p}": f"sub_{p}" for p in ("rows", "cols", "values")},
            "attr:_parity_full_values": "full_values",
            "attr:_parity_cl_masks": "parity_cl_masks",
        },
        terms={"0_BPRLoss": "", "1_InfoNCELoss": "reg_weight"},
        reference_hook="pgl_fixed_masks_reference",
        ours_hook="pgl_fixed_masks_ours",
        deterministic="the local edge sample EXPORTED (the reference's torch.multinomial draw of its first "
        "pre_epoch_processing, coalesced, in float64; its trajectory builds redraw the same one under init_seed); the four "
        "contrastive-view dropouts (dropout 0.2, the grid value): four fixed masks EXPORTED, used at every training forward "
        "on both sides; reg_weight 0.1 so the InfoNCE term counts (the grid's 0 skips it)",
        notes="mode='local' (the only grid value); 'global' needs sparsesvd (a stand-in here). The kNN lists' values "
        "w / (k + 1e-7) computed in float64 on our side (hook), as the reference's process does (without: gradients "
        "1e-8, after 6 steps 3e-6, 2026-12-06); A_sym's values exported. Also run with reg_weight 0 and dropout 0.2 (the "
        "reference's defaults; cl * 0 is then exact) and with dropout 0: the same agreement",
    ),
    "mmgcf": ParityMap(
        reference="MMGCF",
        source="mmrec",
        settings={**_SMALL, "feat_embed_dim": 16, "n_ui_layers": 2, "reg_weight": 1e-3, "fusion_mode": "mean", "weighting": "equal",
                  "dropout": 0.2},
        params={
            "user_embedding.weight": "users",
            "item_id_embedding.weight": "items",
            "image_trs.weight": ("image_trs_w", "T"),
            "image_trs.bias": "image_trs_b",
            "text_trs.weight": ("text_trs_w", "T"),
            "text_trs.bias": "text_trs_b",
        },
        ignore=("image_embedding.weight", "text_embedding.weight"),
        constants={**{f"attr:_parity_edge_{p}": f"masked_{p}" for p in ("rows", "cols", "values")}, "attr:_parity_full_values": "full_values"},
        terms={"0_BPRLoss": "", "1_EmbLoss": "reg_weight"},
        reference_hook="mmgcf_reference_hook",
        deterministic="the per-epoch edge sample EXPORTED (the reference's torch.multinomial draw, which it builds in "
        "float32 after the float64 cast: cast, coalesced); nothing else random",
        notes="The projection biases add the same vector to every item and cancel in u.(z+ - z-): zero gradient "
        "(reference: ~1e-19 rounding noise), compared under the noise floor. Also run (2026-12-06, prototype "
        "driver) with concat+alpha, concat+equal, sum+normalized and dropout 0: the same agreement (concat: the reference's "
        "unused concat layers ignored)",
    ),
    "damrs": ParityMap(
        reference="DAMRS",
        source="mmrec",
        settings={**_SMALL, "n_mm_layers": 1, "n_ui_layers": 2, "knn_k": 5, "kl_weight": 1.0, "neighbor_weight": 0.1},
        # DAMRS.yaml gives learning_rate as a one-value grid ([0.001]): the scalar for the export.
        reference_settings={"feat_embed_dim": 16, "learning_rate": 0.001},
        params={"user_embedding.weight": "users", "item_id_embedding.weight": "items"},
        ignore=("image_embedding.weight", "text_embedding.weight", "image_trs.weight", "image_trs.bias", "text_trs.weight", "text_trs.bias"),
        constants={f"attr:_parity_{g}_values": f"{g}_values" for g in ("adj", "image", "text", "session")},
        terms={"0_BPRLoss": "", "1_NeighbourLoss": "neighbor_weight", "2_KLLoss": "kl_weight"},
        reference_hook="damrs_reference_hook",
        data_hook="damrs_item_graph_file",
        deterministic="nothing random (torch.unique's order does not enter the means; `_random` is never called); the "
        "four graphs' values exported (the reference computes them in float64, ours in float32)",
        notes="item_graph_dict_2.npy written into the folder from our build_behaviour_graph (data hook); on this data it "
        "equals, counts included, what the authors' own build_iib_graph.gen_item_matrix + torch.topk(2) write (360 edges, "
        "checked 2026-12-06). image_trs / text_trs are built by the reference and never used (no gradient): ignored. "
        "neighbor_weight 0.1 (yaml 0.001) so that term counts. Terms: the weighted BPR, the mean of the three "
        "neighbour-discrimination terms, the KL term (read off the total)",
    ),
}


def layergcn_export_sample(net, torch) -> None:
    """LayerGCN (reference): after each ``pre_epoch_processing``, keeps the pruned graph as plain attributes.

    Coalesced, so its entries are sorted by (row, col) as our ``masked_*`` arrays are.
    """
    original = net.pre_epoch_processing

    def pre_epoch_and_keep():
        original()
        adj = net.masked_adj.coalesce()
        net.parity_masked_rows = adj.indices()[0].to(torch.int32)
        net.parity_masked_cols = adj.indices()[1].to(torch.int32)
        net.parity_masked_values = adj.values()

    net.pre_epoch_processing = pre_epoch_and_keep


def dualgnn_export_sample(net, torch) -> None:
    """DualGNN (reference): exports the user-graph sample and keeps the state_dict names of the gradients.

    * After each ``pre_epoch_processing`` the sample (a list of lists there) is kept as an
      int tensor ``parity_user_graph`` (the weights are already a tensor, ``user_weight_matrix``).
    * The reference's forward does ``self.v_preference = self.v_gcn.preference`` (the same
      Parameter), which registers it a second time, on the model itself: ``named_parameters()``
      then names its gradient ``v_preference`` and ``state_dict()`` holds it twice. After each
      forward the same tensor is kept as a plain attribute instead, so every tensor keeps its
      ``state_dict`` name. Naming only: the optimizer holds the same Parameter objects either way.
    """
    original = net.pre_epoch_processing

    def pre_epoch_and_keep():
        original()
        net.parity_user_graph = torch.tensor(net.epoch_user_graph, dtype=torch.int32)

    net.pre_epoch_processing = pre_epoch_and_keep
    forward = net.forward

    def forward_without_second_names(interaction):
        out = forward(interaction)
        for name in ("v_preference", "t_preference"):
            parameter = net._parameters.pop(name, None)
            if parameter is not None:
                object.__setattr__(net, name, parameter)
        return out

    net.forward = forward_without_second_names


def dualgnn_wide_edge_norm(model) -> None:
    """DualGNN (ours): the GCN edge weights ``(d_src d_dst)^-1/2`` again, in the widened dtype.

    ``symmetric_edge_norm`` computes them in float32 (so does the reference in a real run), and
    the float64 widening keeps that rounding, while the float64 reference computes them in
    float64 (``degree(..., dtype=x_j.dtype)``). Same formula; without this hook the check reads
    the float32 rounding: loss 1.4e-8, gradients 6.5e-8, scores 5.2e-8 (2026-12-06).
    """
    import jax.numpy as jnp
    import numpy as np

    senders, receivers = np.asarray(model.senders[...]), np.asarray(model.receivers[...])
    degree = np.bincount(senders, minlength=model.num_users + model.num_items).astype(np.float64)
    norm = 1.0 / np.sqrt(degree[senders] * degree[receivers])
    model.edge_norm.set_value(jnp.asarray(norm, model.edge_norm[...].dtype))




def _b_recorder(net, torch, attribute: str, class_name: str):
    """A parameter-free module ``class_name`` (ending in "Loss") registered on ``net``: the export's
    forward hooks record whatever passes through it as a term; it changes nothing else."""
    recorder = type(class_name, (torch.nn.Module,), {"forward": lambda self, x: x})()
    setattr(net, attribute, recorder)
    return recorder


def _b_export_sampled_graph(net, attribute: str) -> None:
    """After every ``pre_epoch_processing``: the sparse ``net.<attribute>`` as dense, coalesced (row-major
    sorted, our (row, col) order) ``_parity_masked_rows`` / ``_cols`` / ``_values``, for ``constants``."""
    original = net.pre_epoch_processing

    def pre_epoch_processing():
        original()
        adj = getattr(net, attribute).coalesce()
        net._parity_masked_rows = adj.indices()[0].clone()
        net._parity_masked_cols = adj.indices()[1].clone()
        net._parity_masked_values = adj.values().clone()

    net.pre_epoch_processing = pre_epoch_processing


def freedom_reference_hook(net, torch) -> None:
    """FREEDOM: exports the pruned graph of pre_epoch_processing; records the BPR terms (id, modality sum)."""
    _b_export_sampled_graph(net, "masked_adj")
    base = _b_recorder(net, torch, "_parity_bpr", "BPRTermLoss")
    modal = _b_recorder(net, torch, "_parity_modal", "ModalBPRSumLoss")
    per_loss = 1 + (net.t_feat is not None) + (net.v_feat is not None)  # bpr_loss calls per calculate_loss
    state = {"calls": 0, "modal": 0.0}
    original = net.bpr_loss

    def bpr_loss(*args):
        value = original(*args)
        k = state["calls"] % per_loss
        state["calls"] += 1
        if k == 0:
            base(value.detach())
            state["modal"] = 0.0
        else:
            state["modal"] = state["modal"] + value.detach()
            if k == per_loss - 1:
                modal(state["modal"])
        return value

    net.bpr_loss = bpr_loss


def bm3_reference_hook(net, torch) -> None:
    """BM3: fixed dropout masks for the targets (exported); records the cosine terms' sums."""
    import sys

    module = sys.modules[type(net).__module__]
    real_f = module.__dict__.setdefault("_parity_real_F", module.F)
    real_cos = module.__dict__.setdefault("_parity_real_cosine_similarity", module.cosine_similarity)
    d = net.embedding_dim
    roles = ["users", "items"] + [r for r, f in (("text", net.t_feat), ("image", net.v_feat)) if f is not None]
    rows = {"users": net.n_users}
    masks = {r: torch.bernoulli(torch.full((rows.get(r, net.n_items), d), 1.0 - net.dropout, dtype=torch.float64)) for r in roles}
    for role, mask in masks.items():
        setattr(net, f"_parity_keep_{role}", mask)
    calls = {"dropout": 0, "cosine": 0, "sum": 0.0}

    def dropout(x, p=0.5, training=True, inplace=False):
        role = roles[calls["dropout"] % len(roles)]  # calculate_loss drops out users, items, text, image in this order
        calls["dropout"] += 1
        if tuple(x.shape) != tuple(masks[role].shape):
            raise RuntimeError(f"BM3 hook: dropout call for {role} got shape {tuple(x.shape)}")
        return x * masks[role] / (1.0 - p)

    class PatchedF:
        def __getattr__(self, name):
            return dropout if name == "dropout" else getattr(real_f, name)

    module.F = PatchedF()
    modal = 2 * (len(roles) - 2)  # cosine calls of the modality terms, then loss_ui and loss_iu
    cl_sum = _b_recorder(net, torch, "_parity_cl", "CLSumLoss")
    align = _b_recorder(net, torch, "_parity_align", "AlignLoss")

    def cosine_similarity(*args, **kwargs):
        value = real_cos(*args, **kwargs)
        k = calls["cosine"] % (modal + 2)
        calls["cosine"] += 1
        calls["sum"] = (0.0 if k in (0, modal) else calls["sum"]) + (1.0 - value.detach().mean())
        if k == modal - 1:
            cl_sum(calls["sum"])
        elif k == modal + 1:
            align(calls["sum"])
        return value

    module.cosine_similarity = cosine_similarity


def bm3_ours_hook(model) -> None:
    """BM3: our targets use the reference's fixed keep masks (Constants ``parity_keep_*``, filled from the export)."""
    import jax.numpy as jnp
    from mirrorgrad_jax.models.interface import Constant

    d = model.config.embedding_size
    model.parity_keep_users = Constant(jnp.zeros((model.num_users, d)))
    for role in ("items",) + tuple(model.modalities):
        setattr(model, f"parity_keep_{role}", Constant(jnp.zeros((model.num_items, d))))

    class FixedMaskBM3(type(model)):
        def _keep_masks(self, key, users, items):
            keep = [self.parity_keep_users[...][users], self.parity_keep_items[...][items]]
            keep += [getattr(self, f"parity_keep_{role}")[...][items] for role in self.modalities]
            return [k > 0.5 for k in keep]

    model.__class__ = FixedMaskBM3


def mgcn_reference_hook(net, torch) -> None:
    """MGCN: records the BPR term, the unweighted L2 term and the InfoNCE sum (items + users)."""
    bpr, l2, cl = (_b_recorder(net, torch, f"_parity_{n}", c) for n, c in (("bpr", "BPRTermLoss"), ("l2", "L2TermLoss"), ("cl", "InfoNCESumLoss")))
    original_bpr, original_nce = net.bpr_loss, net.InfoNCE
    state = {"calls": 0, "sum": 0.0}

    def bpr_loss(*args):
        mf_loss, emb_loss, reg_loss = original_bpr(*args)
        bpr(mf_loss.detach())
        l2(emb_loss.detach() / net.reg_weight)
        return mf_loss, emb_loss, reg_loss

    def info_nce(*args):
        value = original_nce(*args)
        state["sum"] = (value.detach() if state["calls"] % 2 == 0 else state["sum"] + value.detach())
        state["calls"] += 1
        if state["calls"] % 2 == 0:  # calculate_loss calls it twice: items, then users
            cl(state["sum"])
        return value

    net.bpr_loss, net.InfoNCE = bpr_loss, info_nce


def lattice_reference_hook(net, torch) -> None:
    """LATTICE: records the BPR term and the unweighted L2 term of its bpr_loss method."""
    bpr, l2 = (_b_recorder(net, torch, f"_parity_{n}", c) for n, c in (("bpr", "BPRTermLoss"), ("l2", "L2TermLoss")))
    original = net.bpr_loss

    def bpr_loss(*args):
        mf_loss, emb_loss, reg_loss = original(*args)
        bpr(mf_loss.detach())
        l2(emb_loss.detach() / net.reg_weight)
        return mf_loss, emb_loss, reg_loss

    net.bpr_loss = bpr_loss


def lattice_frozen_graphs_reference_hook(net, torch) -> None:
    """LATTICE: the terms (:func:`lattice_reference_hook`) and the frozen raw-feature kNN graphs, exported.

    Both sides build those graphs in float32 (the reference's features are float32): the
    same neighbour lists, values ~3e-7 apart, which Adam's first step turns into ~1e-4 on
    entries whose gradient is near its ``eps``. The reference's own graph (its dense
    normalised ``{role}_original_adj``, exactly ``knn_k`` non-zeros per row) is exported as
    ``(I, k)`` lists, ``_parity_{role}_idx`` / ``_parity_{role}_val``, for our
    ``graph_learner.{role}_knn_idx`` / ``_val``; a row whose top-k would pick a zero is refused.
    """
    lattice_reference_hook(net, torch)
    for role in ("image", "text"):
        dense = getattr(net, f"{role}_original_adj").double()
        val, idx = torch.topk(dense, net.knn_k, dim=-1)
        if bool((val == 0).any()) or int((dense != 0).sum()) != dense.shape[0] * net.knn_k:
            raise RuntimeError(f"LATTICE {role}_original_adj does not hold exactly knn_k non-zeros per row")
        setattr(net, f"_parity_{role}_idx", idx.clone())
        setattr(net, f"_parity_{role}_val", val.clone())




#: Seed of the fixed samples group C's hooks draw (the same numbers on both sides).
_C_SAMPLE_SEED = 20261206
#: Rows of the fixed target-dropout masks; a batch uses the first B.
_C_MAX_BATCH = 4096


class _CModuleProxy:
    """A module seen through one model's global name: every attribute the real module's, except the overrides."""

    def __init__(self, real, **overrides):
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _c_recorder(net, torch, attribute: str, class_name: str):
    """A parameter-free module ``class_name`` (ending in "Loss") on ``net``: the export records what passes through it."""
    recorder = type(class_name, (torch.nn.Module,), {"forward": lambda self, x: x})()
    setattr(net, attribute, recorder)
    return recorder


def _c_terms_by_zeroing(net, torch, weight: str = "reg_weight") -> None:
    """Records the base term and the ``weight``-weighted term of a loss computed inline (no loss modules).

    At the first ``calculate_loss`` of the model: the loss again with ``net.<weight>`` = 0, in a
    second forward without gradient on a copy of the batch, gives the base term (``BPRTermLoss``);
    ``(loss - base) / weight`` the weighted one (``RegTermLoss``): read off exactly as our side
    reads its own. The second forward re-caches the same representation (same weights).
    """
    base_term = _c_recorder(net, torch, "_parity_base_term", "BPRTermLoss")
    weighted_term = _c_recorder(net, torch, "_parity_weighted_term", "RegTermLoss")
    original = net.calculate_loss
    state = {"first": True}

    def calculate_loss(interaction):
        spare = interaction.clone()  # DRAGON's forward shifts the item ids of its batch in place
        loss = original(interaction)
        if state["first"]:
            state["first"] = False
            value = getattr(net, weight)
            with torch.no_grad():
                setattr(net, weight, 0.0)
                try:
                    base = original(spare)
                finally:
                    setattr(net, weight, value)
            base_term(base.detach().reshape(()))
            weighted_term(((loss.detach() - base) / value).reshape(()))
        return loss

    net.calculate_loss = calculate_loss


def _c_selfcfed_sample(rows, cols, dim: int, rate: float):
    """SELFCFED_LGN's fixed sample: ``(rho, edge keep mask in the caller's entry order, keep_u, keep_i)``.

    The edge mask is drawn in (row, col) order and placed at the caller's positions, so each
    side may store the entries of ``A_sym`` in its own order.
    """
    import numpy as np

    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    rng = np.random.default_rng(_C_SAMPLE_SEED)
    rho = float(rng.uniform(0.05, 0.6))
    keep = np.empty(len(rows), bool)
    keep[np.lexsort((cols, rows))] = rng.random(len(rows)) >= rho
    targets = rng.random((2, _C_MAX_BATCH, dim)) >= rate
    return rho, keep, targets[0], targets[1]


def selfcfed_fixed_sample_reference(net, torch) -> None:
    """SELFCFED_LGN (reference): the fixed edge-dropout and target-dropout sample; records the align term.

    ``sparse_dropout`` keeps the fixed entries and scales them by ``1 / (1 - rho)`` (its own
    formula, the random rate it is called with ignored); the module's ``F.dropout`` applies the
    fixed masks, users first then items (its call order in ``forward``).
    """
    import sys

    enc = net.online_encoder
    indices = enc.sparse_norm_adj._indices().cpu().numpy()
    rho, keep, keep_u, keep_i = _c_selfcfed_sample(indices[0], indices[1], net.latent_size, net.dropout)
    mask = torch.from_numpy(keep)

    def fixed_sparse_dropout(x, rate, noise_shape):
        kept = torch.sparse_coo_tensor(x._indices()[:, mask], x._values()[mask], x.shape)
        return kept * (1.0 / (1 - rho))

    enc.sparse_dropout = fixed_sparse_dropout
    masks = (torch.from_numpy(keep_u), torch.from_numpy(keep_i))
    calls = [0]

    def dropout(x, p=0.5, training=True, inplace=False):
        keep_rows = masks[calls[0] % 2][: x.shape[0]].to(x.dtype)
        calls[0] += 1
        return x * keep_rows / (1 - p) if training else x

    sys.modules[type(net).__module__].F = _CModuleProxy(torch.nn.functional, dropout=dropout)
    align = _c_recorder(net, torch, "_parity_align", "AlignTermLoss")
    l2 = {}
    net.reg_loss.register_forward_hook(lambda _mod, _inp, out: l2.update(value=out.detach()))
    original = net.calculate_loss

    def calculate_loss(interaction):
        loss = original(interaction)
        align((loss.detach() - net.reg_weight * l2["value"]).reshape(()))
        return loss

    net.calculate_loss = calculate_loss


def selfcfed_fixed_sample_ours(model) -> None:
    """SELFCFED_LGN (ours): ``edge_dropout`` and ``target_keep_masks`` return the fixed sample (the key is ignored)."""
    import jax.numpy as jnp
    import numpy as np

    rows, cols = np.asarray(model.adj_rows[...]), np.asarray(model.adj_cols[...])
    rho, keep, keep_u, keep_i = _c_selfcfed_sample(rows, cols, model.config.embedding_size, model.config.dropout)
    values = jnp.asarray(model.adj_values[...])
    dropped = jnp.where(jnp.asarray(keep), values / (1.0 - rho), 0.0)
    ku, ki = jnp.asarray(keep_u), jnp.asarray(keep_i)
    # Instance attributes: nnx keeps them through split / merge, so the jitted steps use them too.
    object.__setattr__(model, "edge_dropout", lambda key: (dropped, jnp.asarray(rho, values.dtype)))
    object.__setattr__(model, "target_keep_masks", lambda key, batch_size: (ku[:batch_size], ki[:batch_size]))


def grcn_terms_reference(net, torch) -> None:
    """GRCN (reference): records the BPR and regulariser terms (read off with reg_weight = 0)."""
    _c_terms_by_zeroing(net, torch)


def mmgcn_terms_reference(net, torch) -> None:
    """MMGCN (reference): records the BPR and regulariser terms (read off with reg_weight = 0)."""
    _c_terms_by_zeroing(net, torch)


def slmrec_reference_hook(net, torch) -> None:
    """SLMRec (reference): keeps its graph values for export; records the FAC sum L_v + L_t (``compute_ssl``).

    Its ``A_pre`` is computed in float32 (scipy on float32 ratings), ours in float64 and then
    rounded: a quarter of the entries differ by one float32 ulp. The values, coalesced (sorted
    by (row, col), our order), are exported as ``_parity_adj_values``. The InfoNCE term is its
    first CrossEntropyLoss call.
    """
    net._parity_adj_values = net.norm_adj.coalesce().values().clone()
    ssl = _c_recorder(net, torch, "_parity_ssl", "SSLTermLoss")
    original = net.compute_ssl

    def compute_ssl(users, items):
        value = original(users, items)
        ssl(value.detach().reshape(()))
        return value

    net.compute_ssl = compute_ssl


def dragon_export_sample(net, torch) -> None:
    """DRAGON (reference): the user-graph sample exported and the preference aliases undone (as DualGNN's), terms recorded."""
    dualgnn_export_sample(net, torch)
    _c_terms_by_zeroing(net, torch)


def dragon_wide_constants(model) -> None:
    """DRAGON (ours): the GCN edge weights and the ``mm_adj`` values again, in float64.

    Both are built in float32 (``symmetric_edge_norm``; ``knn_item_graph``'s ``1 / (k + 1e-7)``,
    which float32 rounds to 1/k), and the float64 widening keeps that rounding, while the float64
    reference computes them in float64. Same formulas; the neighbour lists are unchanged.
    """
    import jax.numpy as jnp
    import numpy as np

    dualgnn_wide_edge_norm(model)
    k, w = int(model.config.knn_k), float(model.config.mm_image_weight)
    shape = tuple(model.mm_val[...].shape)
    if shape != (model.num_items, 2 * k):
        raise ValueError(f"DRAGON hook: mm_val has shape {shape}, expected the image + text lists {(model.num_items, 2 * k)}")
    value = 1.0 / np.sqrt((k + 1e-7) * (k + 1e-7))
    wide = np.concatenate([np.full((model.num_items, k), w * value), np.full((model.num_items, k), (1.0 - w) * value)], axis=1)
    model.mm_val.set_value(jnp.asarray(wide))


def _c_mvgae_noise(num_nodes: int, dim: int):
    import numpy as np

    return np.random.default_rng(_C_SAMPLE_SEED + 1).standard_normal((4, num_nodes, dim))


def mvgae_fixed_noise_reference(net, torch) -> None:
    """MVGAE (reference): conv dropout off; ``randn_like`` a fixed table (calls: z_pd, z_v, z_t, z_c); terms recorded."""
    import sys

    noise = torch.from_numpy(_c_mvgae_noise(net.n_users + net.n_items, net.dim_x))
    calls = [0]

    def randn_like(t, *args, **kwargs):
        out = noise[calls[0] % 4].to(t.dtype)
        calls[0] += 1
        return out

    def dropout(x, p=0.5, training=True, inplace=False):
        return x

    module = sys.modules[type(net).__module__]
    module.torch = _CModuleProxy(torch, randn_like=randn_like)
    module.F = _CModuleProxy(torch.nn.functional, dropout=dropout)
    recon_term = _c_recorder(net, torch, "_parity_recon", "ReconSumLoss")
    kl_term = _c_recorder(net, torch, "_parity_kl", "KLSumLoss")
    sums = {"recon": 0.0, "kl": 0.0}
    recon_loss, kl_loss, calculate_loss = net.recon_loss, net.kl_loss, net.calculate_loss

    def recon(*args):
        value = recon_loss(*args)
        sums["recon"] = sums["recon"] + value.detach()
        return value

    def kl(*args):
        value = kl_loss(*args)
        sums["kl"] = sums["kl"] + value.detach()
        return value

    def loss(interaction):
        sums.update(recon=0.0, kl=0.0)
        value = calculate_loss(interaction)
        recon_term(sums["recon"].reshape(()))
        kl_term(sums["kl"].reshape(()))
        return value

    net.recon_loss, net.kl_loss, net.calculate_loss = recon, kl, loss


def mvgae_fixed_noise_ours(model) -> None:
    """MVGAE (ours): the same fixed noise table; the mean-aggregation weights ``1 / (deg + 1)`` again in float64."""
    import jax.numpy as jnp
    import numpy as np

    noise = jnp.asarray(_c_mvgae_noise(model.num_users + model.num_items, model.config.embedding_size))
    object.__setattr__(model, "reparameterisation_noise", lambda key: noise)
    degree = np.rint(1.0 / np.asarray(model.graph.inv_count[...], np.float64) - 1.0)  # exact small integers
    model.graph.inv_count.set_value(jnp.asarray(1.0 / (degree + 1.0)))




def _d_recorder(net, torch, attribute: str, class_name: str):
    """An identity submodule whose class name ends in ``Loss``: the export's forward hooks record what passes through it."""
    setattr(net, attribute, type(class_name, (torch.nn.Module,), {"forward": lambda self, x: x})())
    return getattr(net, attribute)


def _d_export_values(net, attribute: str, name: str) -> None:
    """The values of the sparse graph ``net.<attribute>`` in row-major order (ours hold it sorted by (row, col))."""
    setattr(net, f"_parity_{name}", getattr(net, attribute).coalesce().values().clone())


def _d_wrap_edge_sample(net, torch, attribute: str) -> None:
    """After each ``pre_epoch_processing``: the sampled graph ``net.<attribute>`` in float64 and coalesced (sorted
    by (row, col), as ours), its rows, cols and values kept as ``_parity_edge_*`` (exported as constants)."""
    original = net.pre_epoch_processing

    def pre_epoch_processing():
        original()
        graph = getattr(net, attribute).coalesce()
        graph = torch.sparse_coo_tensor(graph.indices(), graph.values().to(torch.float64), graph.shape).coalesce()
        setattr(net, attribute, graph)
        net._parity_edge_rows, net._parity_edge_cols = (graph.indices()[i].clone() for i in (0, 1))
        net._parity_edge_values = graph.values().clone()

    net.pre_epoch_processing = pre_epoch_processing


#: The parity subclasses of our models, one per (model class, purpose): created once, so that graphdefs compare equal.
_D_SUBCLASSES: dict = {}


def _d_as_parity_subclass(model, purpose: str, methods) -> None:
    """Turns ``model`` into an instance of a subclass of its class that overrides ``methods(base)``.

    Our hooks change the behaviour of the hooked instance only (its copies through nnx.split /
    merge included, the class being part of the graphdef): nothing of the process is patched
    for good, so other instances (other tests, other models) are left alone.
    """
    base = type(model)
    if getattr(base, "_parity_purpose", None) == purpose:
        return
    key = (base, purpose)
    if key not in _D_SUBCLASSES:
        _D_SUBCLASSES[key] = type(f"{base.__name__}Parity{purpose.title()}", (base,), {"_parity_purpose": purpose, **methods(base)})
    model.__class__ = _D_SUBCLASSES[key]


def _d_with_module_function(base, name: str, replacement, method: str):
    """``base.<method>`` run with ``base``'s module function ``name`` replaced by ``replacement(self, original)``
    for the duration of the call only (at trace time)."""
    import sys

    def wrapped(self, *args, **kwargs):
        module = sys.modules[base.__module__]
        original = getattr(module, name)
        setattr(module, name, replacement(self, original))
        try:
            return getattr(base, method)(self, *args, **kwargs)
        finally:
            setattr(module, name, original)

    return {method: wrapped}


def smore_reference_hook(net, torch) -> None:
    """SMORE: the float32-built graph values as our lists / COO, and the three loss terms recorded.

    The kNN graphs' uncoalesced COO keeps torch.topk's order, which is our slot order (same
    neighbours, same order: checked); the fusion graph is laid out as ours (image slots, then the
    text slots, 0 where the text neighbour is also an image one) from the reference's max-pooled matrix.
    """
    n = net.n_items
    neighbours = {}
    for view in ("image", "text"):
        adj = getattr(net, f"{view}_original_adj")
        rows, cols = adj._indices()
        k = rows.numel() // n
        if not bool((rows.view(n, k) == torch.arange(n).view(n, 1)).all()):
            raise AssertionError(f"SMORE's {view} graph is not in kNN row order")
        neighbours[view] = cols.view(n, k)
        setattr(net, f"_parity_{view}_knn_val", adj._values().view(n, k).clone())
    dense = net.fusion_adj.to_dense()
    row = torch.arange(n).view(n, 1)
    idx_v, idx_t = neighbours["image"], neighbours["text"]
    also_image = (idx_t.unsqueeze(2) == idx_v.unsqueeze(1)).any(dim=2)
    text_part = torch.where(also_image, torch.zeros_like(dense[row, idx_t]), dense[row, idx_t])
    net._parity_fusion_knn_val = torch.cat([dense[row, idx_v], text_part], 1)
    adj = net.norm_adj.coalesce()
    net._parity_adj_values = adj.values().clone()
    net._parity_r_values = adj.values()[adj.indices()[0] < net.n_users].clone()

    record_bpr, record_emb, record_cl = (_d_recorder(net, torch, f"_parity_{t}", c) for t, c in
                                         (("bpr", "BPRLoss"), ("emb", "EmbLoss"), ("cl", "InfoNCELoss")))  # fmt: skip
    bpr_loss, info_nce, calculate_loss = net.bpr_loss, net.InfoNCE, net.calculate_loss
    calls = []

    def bpr(*args):
        mf, emb, reg = bpr_loss(*args)
        record_bpr(mf)
        record_emb(emb / net.reg_weight)
        return mf, emb, reg

    def nce(*args):
        calls.append(info_nce(*args))
        return calls[-1]

    def calc(interaction):
        calls.clear()
        out = calculate_loss(interaction)
        record_cl(sum(calls))
        return out

    net.bpr_loss, net.InfoNCE, net.calculate_loss = bpr, nce, calc


def lgmrec_reference_hook(net, torch) -> None:
    """LGMRec: Gumbel noise off (``F.gumbel_softmax`` -> ``softmax(logits / tau)`` in this process), the float32
    graph values and ``1 / (deg + 1e-7)`` exported, the three loss terms recorded."""

    def noise_free(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
        if hard:
            raise AssertionError("LGMRec calls gumbel_softmax with hard=False")
        return torch.softmax(logits / tau, dim=dim)

    torch.nn.functional.gumbel_softmax = noise_free
    _d_export_values(net, "norm_adj", "adj_values")
    net._parity_inv_user_degree = net.num_inters[: net.n_users].clone()
    record_bpr, record_reg, record_hcl = (_d_recorder(net, torch, f"_parity_{t}", c) for t, c in
                                          (("bpr", "BPRLoss"), ("reg", "RegLoss"), ("hcl", "HclLoss")))  # fmt: skip
    bpr_loss, ssl, reg_loss, calculate_loss = net.bpr_loss, net.ssl_triple_loss, net.reg_loss, net.calculate_loss
    calls = []

    def ssl_(*args):
        calls.append(ssl(*args))
        return calls[-1]

    def calc(interaction):
        calls.clear()
        out = calculate_loss(interaction)
        record_hcl(sum(calls))
        return out

    net.bpr_loss = lambda *args: record_bpr(bpr_loss(*args))
    net.reg_loss = lambda *args: record_reg(reg_loss(*args))
    net.ssl_triple_loss, net.calculate_loss = ssl_, calc


def lgmrec_ours_hook(model) -> None:
    """LGMRec: our Gumbel noise off, training included: during this instance's ``forward`` the module's
    ``gumbel_softmax`` ignores its key (ranking: ``eval_gumbel_noise=False`` does the same)."""

    def methods(base):
        return _d_with_module_function(base, "gumbel_softmax", lambda self, original: lambda logits, tau, key: original(logits, tau, None), "forward")

    _d_as_parity_subclass(model, "noise_free", methods)


def pgl_reference_hook(net, torch) -> None:
    """PGL: the local edge sample and A_sym's values exported, the two loss terms recorded.

    ``mm_adj`` (w * image + (1 - w) * text) is coalesced by the sparse sum, which merges entries both graphs
    hold, so it cannot be laid out as our (I, 2k) lists: :func:`pgl_ours_hook` computes those in float64.
    """
    _d_wrap_edge_sample(net, torch, "sub_graph")
    _d_export_values(net, "norm_adj", "full_values")
    record_bpr, record_cl = (_d_recorder(net, torch, f"_parity_{t}", c) for t, c in (("bpr", "BPRLoss"), ("cl", "InfoNCELoss")))
    bpr_loss, info_nce, calculate_loss = net.bpr_loss, net.InfoNCE, net.calculate_loss
    calls = []

    def nce(*args):
        calls.append(info_nce(*args))
        return calls[-1]

    def calc(interaction):
        calls.clear()
        out = calculate_loss(interaction)
        record_cl(sum(calls) / 2)
        return out

    net.bpr_loss = lambda *args: record_bpr(bpr_loss(*args))
    net.InfoNCE, net.calculate_loss = nce, calc


def pgl_ours_hook(model) -> None:
    """PGL: our binary kNN lists' values in float64 (``w / (k + 1e-7)`` in the image slots, ``(1 - w) / (k + 1e-7)``
    in the text ones), as the reference's process computes them; ours builds them in float32."""
    import jax.numpy as jnp
    import numpy as np
    from mirrorgrad_jax.models.interface import Constant

    k, w = model.config.knn_k, model.config.mm_image_weight
    narrow = np.asarray(model.mm_val[...], np.float64)
    degree = k + 1e-7
    wide = np.broadcast_to(np.where(np.arange(2 * k) < k, w, 1.0 - w) / np.sqrt(degree * degree), narrow.shape)
    if not np.allclose(wide, narrow, rtol=1e-6, atol=0.0):
        raise AssertionError("PGL's kNN lists are not laid out as [image slots, text slots]")
    model.mm_val = Constant(jnp.asarray(wide))


def mmgcf_reference_hook(net, torch) -> None:
    """MMGCF: the edge sample and A_sym's values exported, BPR recorded, the inline L2 term read off the total."""
    _d_wrap_edge_sample(net, torch, "masked_adj")
    _d_export_values(net, "norm_adj", "full_values")
    record_bpr, record_reg = (_d_recorder(net, torch, f"_parity_{t}", c) for t, c in (("bpr", "BPRLoss"), ("reg", "EmbLoss")))
    bpr_loss, calculate_loss = net.bpr_loss, net.calculate_loss
    calls = []

    def bpr(*args):
        calls.append(bpr_loss(*args))
        return record_bpr(calls[-1])

    def calc(interaction):
        calls.clear()
        out = calculate_loss(interaction)
        record_reg((out - calls[0]) / net.reg_weight)
        return out

    net.bpr_loss, net.calculate_loss = bpr, calc


def damrs_reference_hook(net, torch) -> None:
    """DA-MRS: the four graphs' values exported; the weighted BPR, the mean neighbour term and the KL term recorded."""
    for attribute, name in (("norm_adj", "adj_values"), ("image_adj", "image_values"), ("text_adj", "text_values"), ("session_adj", "session_values")):
        _d_export_values(net, attribute, name)
    record_bpr, record_nd, record_kl = (_d_recorder(net, torch, f"_parity_{t}", c) for t, c in
                                        (("bpr", "BPRLoss"), ("nd", "NeighbourLoss"), ("kl", "KLLoss")))  # fmt: skip
    bpr_loss, discrimination, calculate_loss = net.bpr_loss, net.neighbor_discrimination, net.calculate_loss
    calls = {"bpr": [], "nd": []}

    def bpr(*args):
        calls["bpr"].append(bpr_loss(*args))
        return record_bpr(calls["bpr"][-1])

    def nd(*args, **kwargs):
        calls["nd"].append(discrimination(*args, **kwargs))
        return calls["nd"][-1]

    def calc(interaction):
        calls["bpr"].clear()
        calls["nd"].clear()
        out = calculate_loss(interaction)
        neighbour = sum(calls["nd"]) / 3.0
        record_nd(neighbour)
        record_kl((out - calls["bpr"][0] - net.neighbor_weight * neighbour) / net.kl_weight)
        return out

    net.bpr_loss, net.neighbor_discrimination, net.calculate_loss = bpr, nd, calc


def damrs_item_graph_file(folder: str) -> None:
    """Writes ``item_graph_dict_2.npy`` (``{item: [neighbours, counts]}``, the authors' build_iib_graph.py format)
    from the folder's train split with our :func:`~mirrorgrad_jax.models.damrs.build_behaviour_graph`."""
    import os

    import numpy as np
    from mirrorgrad_jax.models.damrs import build_behaviour_graph

    from mirrorgrad_jax.data import load_mmrec

    dataset = load_mmrec(folder, verbose=False)
    rows, cols, counts = build_behaviour_graph(dataset.train, dataset.num_items, 2)
    graph = {int(i): [cols[rows == i].tolist(), counts[rows == i].tolist()] for i in np.unique(rows)}
    np.save(os.path.join(folder, "item_graph_dict_2.npy"), np.array(graph, dtype=object), allow_pickle=True)


#: Rows of PGL's fixed contrastive-view masks (cut to the batch's rows on both sides).
_D_MAX_BATCH = 4096


def _d_fixed_dropout(torch, masks, period: int):
    """An ``nn.Dropout`` stand-in: in training, call ``c`` multiplies by ``masks[c % period]`` (cut to the rows of
    its input); in eval mode the identity, as ``nn.Dropout``."""

    class FixedDropout(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            if not self.training:
                return x
            mask = masks[self.calls % period][: x.shape[0]]
            self.calls += 1
            return x * mask

    return FixedDropout()


def _d_keep_masks(torch, shape, p: float, seed: int = 20261206):
    """Inverted-dropout multipliers ``{0, 1 / (1 - p)}`` from a private generator (the global RNG is left alone)."""
    keep = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) >= p
    return keep.to(torch.float64) / (1.0 - p)


def smore_fixed_masks_reference(net, torch) -> None:
    """SMORE with dropout: :func:`smore_reference_hook`, and its ``nn.Dropout`` (called on the image, text and fusion
    preference gates, in that order) replaced by three fixed ``(N, d)`` masks, exported."""
    smore_reference_hook(net, torch)
    masks = _d_keep_masks(torch, (3, net.n_users + net.n_items, net.embedding_dim), net.dropout_rate)
    net.dropout = _d_fixed_dropout(torch, masks, 3)
    net._parity_gate_masks = masks


def smore_fixed_masks_ours(model) -> None:
    """SMORE with dropout: our three gate masks are the Constant ``parity_gate_masks`` (filled from the export),
    whatever the key (this instance's ``dropout_multipliers`` overridden)."""
    import jax.numpy as jnp
    from mirrorgrad_jax.models.interface import Constant

    model.parity_gate_masks = Constant(jnp.zeros((3, model.num_users + model.num_items, model.config.embedding_size)))
    _d_as_parity_subclass(model, "fixed_masks", lambda base: {"dropout_multipliers": lambda self, key: self.parity_gate_masks[...]})


def pgl_fixed_masks_reference(net, torch) -> None:
    """PGL with dropout: :func:`pgl_reference_hook`, and ``dropoutf`` (called on the user rows twice, then the
    positive item rows twice) replaced by four fixed ``(rows, 2d)`` masks, exported."""
    pgl_reference_hook(net, torch)
    masks = _d_keep_masks(torch, (4, _D_MAX_BATCH, 2 * net.embedding_dim), net.dropoutf.p)
    net.dropoutf = _d_fixed_dropout(torch, masks, 4)
    net._parity_cl_masks = masks


def pgl_fixed_masks_ours(model) -> None:
    """PGL with dropout: :func:`pgl_ours_hook`, and during this instance's ``loss_terms`` the module's ``_dropout``
    (called for user view 1, 2, item view 1, 2, in that order) multiplies by its Constant ``parity_cl_masks``."""
    import jax.numpy as jnp
    from mirrorgrad_jax.models.interface import Constant

    pgl_ours_hook(model)
    model.parity_cl_masks = Constant(jnp.zeros((4, _D_MAX_BATCH, 2 * model.config.embedding_size)))

    def fixed_masks(self, original):
        calls = [0]

        def fixed(key, x, rate):
            mask = self.parity_cl_masks[...][calls[0] % 4][: x.shape[0]]
            calls[0] += 1
            return x * mask

        return fixed

    _d_as_parity_subclass(model, "fixed_masks", lambda base: _d_with_module_function(base, "_dropout", fixed_masks, "loss_terms"))


def lgmrec_fixed_noise_reference(net, torch) -> None:
    """LGMRec: :func:`lgmrec_reference_hook`, then ``F.gumbel_softmax`` adds FIXED standard Gumbel noise instead of a
    fresh draw: call ``c`` (image items, image users, text items, text users: the order of every forward, training
    and ranking alike) gets table ``c % 4``, exported as ``_parity_gumbel_items (2, I, K)`` / ``_parity_gumbel_users (2, U, K)``."""
    lgmrec_reference_hook(net, torch)
    generator = torch.Generator().manual_seed(20261206)

    def gumbel(rows):
        uniform = torch.rand((2, rows, net.hyper_num), generator=generator, dtype=torch.float64)
        return -torch.log(-torch.log(uniform))

    net._parity_gumbel_items, net._parity_gumbel_users = gumbel(net.n_items), gumbel(net.n_users)
    tables = [net._parity_gumbel_items[0], net._parity_gumbel_users[0], net._parity_gumbel_items[1], net._parity_gumbel_users[1]]
    calls = [0]

    def fixed_noise(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
        if hard:
            raise AssertionError("LGMRec calls gumbel_softmax with hard=False")
        noise = tables[calls[0] % 4]
        calls[0] += 1
        return torch.softmax((logits + noise) / tau, dim=dim)

    torch.nn.functional.gumbel_softmax = fixed_noise


def lgmrec_fixed_noise_ours(model) -> None:
    """LGMRec: during this instance's ``forward`` the module's ``gumbel_softmax`` adds the exported fixed noise
    (its Constants ``parity_gumbel_items`` / ``parity_gumbel_users``) by call order, whatever the key: training
    and ranking (``eval_gumbel_noise=True``, the default) alike."""
    import jax.numpy as jnp
    from mirrorgrad_jax.models.interface import Constant

    k = model.config.hyper_num
    model.parity_gumbel_items = Constant(jnp.zeros((2, model.num_items, k)))
    model.parity_gumbel_users = Constant(jnp.zeros((2, model.num_users, k)))

    def fixed_noise(self, original):
        calls = [0]

        def fixed(logits, tau, key):
            c = calls[0] % 4
            calls[0] += 1
            table = (self.parity_gumbel_items if c % 2 == 0 else self.parity_gumbel_users)[...][c // 2]
            return original(logits + table, tau, None)

        return fixed

    _d_as_parity_subclass(model, "fixed_noise", lambda base: _d_with_module_function(base, "gumbel_softmax", fixed_noise, "forward"))


