"""The parity harness (``benchmarks/parity.py``) on a stand-in, without torch or a reference checkout.

The reference's side needs torch and a checkout; everything the harness does with what
it exports is checked here: the exchange file (plain arrays, no pickle), the maps
(transposes, missing and extra keys named), the differences, the report, the command
line's refusals, and our whole side driven by a made-up export produced from our own
model and sent through the inverse map: it must report ~0, and name what was perturbed.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def parity():
    benchmarks = os.path.join(ROOT, "benchmarks")
    if benchmarks not in sys.path:  # as when run as a script: it imports parity_maps / reporting beside it
        sys.path.append(benchmarks)
    spec = importlib.util.spec_from_file_location("bench_parity", os.path.join(benchmarks, "parity.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _map(parity, **kw):
    fields = {"reference": "Toy", "source": "mg", "params": {"lin.weight": ("w", "T"), "emb": "e"}, "settings": {}}
    fields.update(kw)
    return parity.ParityMap(**fields)


def test_exchange_round_trip_and_escaping(parity, tmp_path):
    path = str(tmp_path / "x.npz")
    names = {"embedding_dict.user_emb": np.arange(6.0).reshape(2, 3), "odd name/with:chars%": np.int64(3)}
    parity.write_exchange(path, {"init": names, "batch": {"0": np.ones((3, 4), np.int64)}}, {"model": "toy", "steps": 1})
    sections, meta = parity.read_exchange(path)
    assert meta == {"model": "toy", "steps": 1}
    assert set(sections["init"]) == set(names)
    np.testing.assert_array_equal(sections["init"]["embedding_dict.user_emb"], names["embedding_dict.user_emb"])
    assert sections["batch"]["0"].dtype == np.int64
    for name in names:
        assert parity.unescape_name(parity.escape_name(name)) == name
        assert all(c.isalnum() or c in "_.-%" for c in parity.escape_name(name))


def test_exchange_refuses_objects_pickles_and_unknown_keys(parity, tmp_path):
    with pytest.raises(parity.ParityError, match="init:bad"):
        parity.write_exchange(str(tmp_path / "a.npz"), {"init": {"bad": np.array([{}], dtype=object)}}, {})
    with pytest.raises(parity.ParityError, match="unknown exchange section"):
        parity.write_exchange(str(tmp_path / "a.npz"), {"nope": {}}, {})
    pickled = str(tmp_path / "p.npz")
    np.savez(pickled, **{"init:x": np.array([{"a": 1}], dtype=object), "meta:json": np.frombuffer(b"{}", np.uint8)})
    with pytest.raises(parity.ParityError, match="not a plain-array exchange file"):
        parity.read_exchange(pickled)
    stray = str(tmp_path / "s.npz")
    np.savez(stray, weights=np.zeros(2))
    with pytest.raises(parity.ParityError, match="'weights' is not a key"):
        parity.read_exchange(stray)


def test_differences(parity):
    assert parity.relative_difference(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert parity.relative_difference(np.array([1.0, 2.1]), np.array([1.0, 2.0])) == pytest.approx(0.05)
    assert parity.relative_difference(np.zeros(2), np.zeros(2)) == 0.0
    assert parity.relative_difference(np.zeros(2), np.zeros(3)) == float("inf")
    assert parity.relative_difference(np.array([np.nan]), np.array([1.0])) == float("inf")
    base = {"a": np.array([10.0, 10.0])}
    # Displacements 1e-3 vs 1.1e-3: 10% apart, though the weights are 1e-5 apart.
    out = parity.compare_tensors({"a": np.array([10.0011, 10.0])}, {"a": np.array([10.001, 10.0])}, base)
    assert out["max"] == pytest.approx(0.1, rel=1e-6) and out["worst"] == "a"
    assert parity.compare_tensors({"a": np.ones(1)}, {"b": np.ones(1)})["max"] == float("inf")


def test_apply_map_transposes_and_names_what_does_not_fit(parity):
    pmap = _map(parity)
    ref = {"lin.weight": np.arange(6.0).reshape(2, 3), "emb": np.ones((4, 2))}
    shapes = {"w": (3, 2), "e": (4, 2)}
    out = parity.apply_map(pmap, ref, shapes)
    np.testing.assert_array_equal(out["w"], ref["lin.weight"].T)
    back = parity.invert_map(pmap, out)
    np.testing.assert_array_equal(back["lin.weight"], ref["lin.weight"])
    with pytest.raises(parity.ParityError, match="'emb'"):
        parity.apply_map(pmap, {"lin.weight": ref["lin.weight"]}, shapes)
    with pytest.raises(parity.ParityError, match=r"\['extra.bias'\] are neither mapped nor ignored"):
        parity.apply_map(pmap, {**ref, "extra.bias": np.zeros(2)}, shapes)
    assert set(parity.apply_map(_map(parity, ignore=("extra.bias",)), {**ref, "extra.bias": np.zeros(2)}, shapes)) == {"w", "e"}
    with pytest.raises(parity.ParityError, match=r"our parameter\(s\) \['b'\] get no reference tensor"):
        parity.apply_map(pmap, ref, {**shapes, "b": (2,)})
    with pytest.raises(parity.ParityError, match="'lin.weight' has shape \\(2, 3\\).*our 'w' has \\(2, 3\\)"):
        parity.apply_map(pmap, ref, {"w": (2, 3), "e": (4, 2)})
    with pytest.raises(parity.ParityError, match="our parameter 'nope'"):
        parity.apply_map(_map(parity, params={"emb": "nope"}), {"emb": ref["emb"]}, {"e": (4, 2)})
    with pytest.raises(ValueError, match="transform 'X'"):
        parity.apply_map(_map(parity, params={"emb": ("e", "X")}), ref, shapes)


def test_maps_are_well_formed(parity):
    from mirrorgrad_jax.models import available_models

    assert set(available_models()) - {"itemknncbf"} <= set(parity.PARITY_MAPS), "every trained model has its parity row"
    for name, pmap in parity.PARITY_MAPS.items():
        assert pmap.source in ("mg", "mmrec"), name
        assert (pmap.model or name) in available_models(), name
        assert pmap.zero_grad in ("torch", "zeros"), name
        pmap.param_entries()
        settings = {**pmap.settings, **pmap.ours}
        assert all(not field or field in settings for field in pmap.terms.values()), name


def _stand_in_export(parity, name, dataset, steps=3, batch=16):
    """A made-up 'reference' export: our own model's numbers, sent through the inverse map."""
    import jax
    from flax import nnx
    from mirrorgrad_jax.models import build_config, get_model

    pmap = parity.PARITY_MAPS[name]
    cls = get_model(name)
    model = cls(dataset, build_config(cls, {**pmap.settings, **pmap.ours}), rngs=nnx.Rngs(params=7))
    ours_init = {k: np.asarray(v) for k, v in parity._flat(nnx.state(model, nnx.Param)).items()}
    rng = np.random.default_rng(0)
    train = dataset.train
    rows = rng.integers(0, len(train), size=(steps, batch))
    batches = {str(i): np.stack([train[r, 0], train[r, 1], rng.integers(0, dataset.num_items, batch)]).astype(np.int64) for i, r in enumerate(rows)}
    sections = {"init": parity.invert_map(pmap, ours_init), "batch": batches, "step0": {"score_users": np.arange(8)}}
    meta = {"steps_per_epoch": 5, "steps": steps, "learning_rate": 1e-2, "learner": "adam", "weight_decay": 0.0, "clip_grad_norm": None}
    # The MG arm only (its blocks run normal steps too); a stand-in for the plain arm keeps the test fast.
    ours = parity.ours_results(name, pmap, dataset, sections, meta, float64=False, arms=("mg",))
    ours.update(final_plain=ours["final_mg"], losses_plain=ours["losses_mg"])
    jax.block_until_ready(ours["scores"])
    sections.update(
        step0={**sections["step0"], "loss": np.asarray(ours["loss"])},
        terms={k: np.asarray(v) for k, v in ours["terms"].items()},
        grad=parity.invert_map(pmap, ours["grad"]),
        scores={"block": ours["scores"]},
        final_plain=parity.invert_map(pmap, ours["final_plain"]),
        final_mg=parity.invert_map(pmap, ours["final_mg"]),
        losses={"plain": ours["losses_plain"], "mg": ours["losses_mg"]},
    )
    return pmap, sections, meta, ours


def test_our_side_on_a_stand_in_export(parity, tmp_path):
    from mirrorgrad_jax.data.synthetic import make_synthetic

    dataset = make_synthetic(40, 30, interactions_per_user=6.0, modalities={"image": 8, "text": 4}, seed=1)
    pmap, sections, meta, ours = _stand_in_export(parity, "vbpr", dataset)
    # Through the exchange file, as from the reference's process.
    path = str(tmp_path / "vbpr.npz")
    parity.write_exchange(path, sections, meta)
    sections, meta = parity.read_exchange(path)
    row = parity.compare("vbpr", pmap, sections, meta, ours)
    assert row["pass"], row
    assert max(row["loss"], row["grad"], row["scores"], row["final_plain"], row["final_mg"]) < 1e-6
    assert row["terms_compared"] == ["0_BPRLoss", "1_EmbLoss"] and row["terms"] < 1e-5
    # The steps moved the weights (otherwise the trajectory columns check nothing).
    assert not np.allclose(ours["final_mg"]["proj_w"], parity.apply_map(pmap, sections["init"], {"users": (40, 32), "items": (30, 16), "proj_w": (12, 16), "proj_b": (16,)})["proj_w"])

    # A gradient the reference computed differently: the row fails and names our parameter.
    bad = {**sections, "grad": {**sections["grad"], "item_linear.bias": sections["grad"]["item_linear.bias"] * 1.01}}
    row = parity.compare("vbpr", pmap, bad, meta, ours)
    assert not row["pass"] and row["grad_worst"] == "proj_b" and row["grad"] == pytest.approx(0.01 / 1.01, rel=1e-3)
    # A different initial weight on the reference's side: our recomputed loss no longer matches.
    init = {**sections["init"], "u_embedding": sections["init"]["u_embedding"] * 1.1}
    moved = parity.ours_results("vbpr", pmap, dataset, {**sections, "init": init}, meta, float64=False, trajectory=False)
    moved.update({k: v for k, v in ours.items() if k.startswith(("final_", "losses_"))})
    row = parity.compare("vbpr", pmap, {**sections, "init": init}, meta, moved)
    assert not row["pass"] and row["loss"] > 1e-4 and row["scores"] > 1e-3
    text = parity.render([row, {"model": "lightgcn", "reference": "LightGCN", "error": "no MMRec checkout"}], _META)
    assert "| vbpr | VBPR (Mirror-Gradient) |" in text and "FAIL" in text and "NOT RUN: no MMRec checkout" in text


_META = {"command": "python benchmarks/parity.py --reference /tmp/mgref", "date": "2026-12-06 10:00, 1 min", "machine": "x86_64",
         "reference": "Qrange-group/Mirror-Gradient @ abc", "ours": "flax", "data": "synthetic"}  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--reference is required"),
        (["--reference", "{tmp}"], "is not a reference checkout"),
        (["--reference", "{checkout}", "--models", "vbpr,nope"], "no parity map for nope"),
        (["--reference", "{checkout}", "--models", "bprmf"], "--mmrec (an MMRec checkout) is required for bprmf"),
    ],
)
def test_command_line_refusals(parity, tmp_path, capsys, argv, message):
    checkout = tmp_path / "ref"
    (checkout / "src" / "common").mkdir(parents=True)
    (checkout / "src" / "common" / "trainer.py").write_text("")
    argv = [a.format(tmp=tmp_path, checkout=checkout) for a in argv]
    with pytest.raises(SystemExit) as stop:
        parity.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _map_names() -> list[str]:
    benchmarks = os.path.join(ROOT, "benchmarks")
    if benchmarks not in sys.path:
        sys.path.append(benchmarks)
    import parity_maps  # the standard library only: cheap at collection

    return list(parity_maps.PARITY_MAPS)


@pytest.fixture(scope="module")
def tiny_multimodal():
    from mirrorgrad_jax.data.synthetic import make_synthetic

    return make_synthetic(40, 30, interactions_per_user=6.0, modalities={"image": 8, "text": 4}, seed=1)


@pytest.mark.parametrize("name", _map_names())
def test_every_map_covers_our_model_both_ways(parity, tiny_multimodal, name):
    """Every parameter of ours is reached by the map and comes back unchanged through the
    inverse map (transposes included); every constant the map takes from the reference is one
    of ours. A change to a model that would break its parity row fails here, without torch."""
    from flax import nnx
    from mirrorgrad_jax.models import build_config, get_model

    pmap = parity.PARITY_MAPS[name]
    cls = get_model(pmap.model or name)
    model = cls(tiny_multimodal, build_config(cls, {**pmap.settings, **pmap.ours}), rngs=nnx.Rngs(params=3))
    if pmap.ours_hook:  # as build_ours: the hook may add the variables the reference's samples go into
        parity.globals_hook(pmap.ours_hook)(model)
    ours = {k: np.asarray(v) for k, v in parity._flat(nnx.state(model, nnx.Param)).items()}
    back = parity.apply_map(pmap, parity.invert_map(pmap, ours), parity.our_param_shapes(model))
    assert set(back) == set(ours)
    for path, value in back.items():
        np.testing.assert_array_equal(value, ours[path], err_msg=f"{name}: {path}")
    constants = parity._flat(nnx.state(model, nnx.Not(nnx.Param)))
    missing = [path for path in pmap.constants.values() if path not in constants]
    assert not missing, f"{name}: the map takes {missing} from the reference, which our model does not hold"


def test_score_transform_compares_a_monotone_transform_of_our_scores(parity):
    """SLMRec's reference ranks with sigmoid(u . i), ours with u . i: the same ranking; the check
    compares sigmoid(ours) with the reference's. Exact to float64 rounding (1e-15)."""
    pmap = parity.PARITY_MAPS["slmrec"]
    assert pmap.score_transform == "sigmoid"
    scores = np.array([-3.0, 0.0, 2.0])
    np.testing.assert_allclose(parity._transformed_scores(pmap, scores), 1 / (1 + np.exp(-scores)), rtol=1e-15)
    np.testing.assert_array_equal(parity._transformed_scores(parity.PARITY_MAPS["vbpr"], scores), scores)


def test_zero_gradient_tensor_under_the_displacement_floor(parity):
    """Found on MMGCF: its projection biases cancel in ``u . (z+ - z-)``, so their gradient is 0
    in exact arithmetic and rounding noise in the reference; Adam turns that noise into
    displacements ~1e-11 of the largest one while ours stay 0. A tensor that moved on neither
    side must not fail the check; a real difference in a moving tensor still does."""
    base = {"w": np.zeros(4), "b": np.zeros(4)}
    reference = {"w": np.array([6e-3, -5e-3, 4e-3, 1e-3]), "b": np.array([-1.5e-14, 3.9e-15, 6e-15, -1.7e-15])}
    ours = {"w": reference["w"] * (1 + 1e-13), "b": np.zeros(4)}
    out = parity.compare_tensors(ours, reference, base)
    assert out["max"] < parity.TRAJECTORY_TOLERANCE
    # The floor is for displacements only: the same tensors as gradients keep the 1e-8 floor.
    assert parity.compare_tensors(ours, reference)["each"]["b"] > parity.TRAJECTORY_TOLERANCE
    ours["w"] = reference["w"] * (1 + 1e-3)
    assert parity.compare_tensors(ours, reference, base)["max"] == pytest.approx(1e-3, rel=1e-6)
