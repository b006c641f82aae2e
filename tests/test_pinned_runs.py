"""Pinned seeded runs: restructuring the code must not move a single number.

Each case trains a model for two epochs on ``synthetic-small`` through the command line
(``mirrorgrad train``, the way the README runs it) and compares the per-epoch training
losses and the per-epoch valid and test metrics with the values recorded in
``tests/pinned/runs.json`` before the library was re-laid into subpackages. The batch
size (200: nine full batches and a last batch of 20) makes every epoch take the scanned
MG blocks and a mirrored last batch; LATTICE adds its first-batch path and the no-MG
VBPR case the plain scan.

Tolerance: losses to 1e-6 relative (the same program on the same CPU gives the same bits;
the margin covers a CPU whose vector width sums float32 in another order, and the suite's
unoptimized build, see conftest.py, which moves three cases by at most 1.5e-7), metrics
(rounded to four decimals by the protocol) exactly. ``--record`` runs outside pytest, so
it records with every optimization on, as the recorded values were.

The checkpoint written by the DualGNN case before the move is committed under
``tests/pinned/dualgnn-best.ckpt``: it must still load and evaluate to the recorded
metrics. A change that moves a model's numbers ON PURPOSE re-records its case
(``python tests/test_pinned_runs.py --record CASE``) in the same commit and says why:

* lattice, re-recorded when TrainConfig.zero_grad became "zeros" by default (PyTorch
  1.13's optimizer.zero_grad(), the reference's environment): the graph learner now moves
  on its Adam momentum after the first batch of every epoch instead of being skipped.
* freedom, lattice, slmrec, re-recorded when ``ranking_metrics`` began to add the users in
  order, as the reference's ``mean(axis=0)`` does, instead of pairwise: precision@20, a
  multiple of 1/(20 users) that often lies exactly half-way between two 4-decimal values,
  now rounds as the reference rounds it (0.0118 -> 0.0117 and the like, 7 values in all;
  the losses and every other metric are unchanged).
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from mirrorgrad_jax.cli import main

PINNED = pathlib.Path(__file__).resolve().parent / "pinned"
RUNS = PINNED / "runs.json"
CHECKPOINT = PINNED / "dualgnn-best.ckpt"

#: case name -> the train command's arguments after ``--model``.
CASES = {
    "vbpr": ["vbpr"],
    "vbpr-no-mg": ["vbpr", "--no-mg"],
    "freedom": ["freedom"],
    "lattice": ["lattice"],
    "dualgnn": ["dualgnn"],
    "slmrec": ["slmrec"],
}
COMMON = ["--dataset", "synthetic-small", "--epochs", "2", "--batch-size", "200", "--seed", "999", "--quiet"]


def _run(case: str, folder: pathlib.Path, checkpoint_dir: pathlib.Path | None = None) -> dict:
    out = folder / f"{case}.json"
    argv = ["train", "--model", *CASES[case], *COMMON, "--results", str(out)]
    if checkpoint_dir is not None:
        argv += ["--checkpoint-dir", str(checkpoint_dir)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    (run,) = report["runs"][0]["seeds"]
    return {
        "loss": [h["loss"] for h in run["history"]],
        "valid": [h["valid"] for h in run["history"]],
        "test": [h["test"] for h in run["history"]],
        "best_epoch": run["best_epoch"],
        "test_at_best": run["test_at_best"],
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_seeded_run_gives_the_pinned_numbers(case, tmp_path):
    pinned = json.loads(RUNS.read_text())[case]
    got = _run(case, tmp_path)
    assert got["loss"] == pytest.approx(pinned["loss"], rel=1e-6), f"{case}: training losses moved"
    assert got["valid"] == pinned["valid"], f"{case}: valid metrics moved"
    assert got["test"] == pinned["test"], f"{case}: test metrics moved"
    assert got["best_epoch"] == pinned["best_epoch"]
    assert got["test_at_best"] == pinned["test_at_best"]


def test_checkpoint_written_before_the_move_evaluates_to_its_numbers(capsys):
    pinned = json.loads(RUNS.read_text())["dualgnn"]["test_at_best"]
    assert main(["evaluate", str(CHECKPOINT), "--metrics", "recall,ndcg,precision,map"]) == 0
    test_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test "))
    words = test_line.split()[1:]
    printed = dict(zip(words[::2], (float(v) for v in words[1::2])))
    assert printed == {k: pytest.approx(v, abs=5e-5) for k, v in pinned.items()}  # printed to 4 decimals


def _record(cases: list[str]) -> None:
    """Re-records the named cases with the code as it is now (the checkpoint written before the move stays)."""
    import tempfile

    unknown = sorted(set(cases) - set(CASES))
    if unknown or not cases:
        sys.exit(f"name the cases to re-record, of {sorted(CASES)}; unknown: {unknown}")
    runs = json.loads(RUNS.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            runs[case] = _run(case, pathlib.Path(tmp))
            print(f"{case}: losses {runs[case]['loss']}")
    RUNS.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--record"]:
        sys.exit("usage: python tests/test_pinned_runs.py --record CASE [CASE ...]")
    _record(sys.argv[2:])
