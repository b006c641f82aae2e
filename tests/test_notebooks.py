"""Every notebook executes top to bottom (small-size mode, so the suite stays in budget)."""

from __future__ import annotations

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
#: The extras each notebook's install cell asks for (notebook 02 reads its curves from TensorBoard event files).
EXTRAS = {"02": "plots,tensorboard"}


def test_there_are_three_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MIRRORGRAD_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_carries_figures(path):
    notebook = nbformat.read(path, as_version=4)
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} was committed without its figures: run it fully before committing"


def _install_cell(path: pathlib.Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return next(c.source for c in notebook.cells if c.cell_type == "code")


def _run_install_cell(path, monkeypatch, cwd, source=None):
    """Runs a notebook's first cell as on a fresh runtime (mirrorgrad_jax not importable); returns the pip calls."""
    import importlib.util
    import subprocess

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mirrorgrad_jax" else real(name, *a))
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kwargs: calls.append(list(argv)))
    monkeypatch.chdir(cwd)
    if source is None:
        monkeypatch.delenv("MIRRORGRAD_SOURCE", raising=False)
    else:
        monkeypatch.setenv("MIRRORGRAD_SOURCE", source)
    exec(compile(_install_cell(path), f"{path.name}[install cell]", "exec"), {"__name__": "__main__"})
    return calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_with_nothing_to_install_from_says_in_one_line_what_to_set(path, monkeypatch, tmp_path):
    assert "github.com/mirrorgrad" not in _install_cell(path)  # an address that does not exist
    with pytest.raises(SystemExit) as stop:
        calls = _run_install_cell(path, monkeypatch, tmp_path)
        pytest.fail(f"installed from a default nobody gave: {calls}")
    message = str(stop.value.code)
    assert "\n" not in message and "MIRRORGRAD_SOURCE" in message and "wheel" in message, message


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_installs_from_a_wheel_beside_the_notebook_or_the_source_given(path, monkeypatch, tmp_path):
    wheel = tmp_path / "mirrorgrad_jax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    project = f"mirrorgrad-jax[{EXTRAS.get(path.name[:2], 'plots')}]"
    (pip,) = _run_install_cell(path, monkeypatch, tmp_path)
    assert pip[-1] == f"{project} @ {wheel.resolve().as_uri()}" and pip[1:4] == ["-m", "pip", "install"]
    (pip,) = _run_install_cell(path, monkeypatch, tmp_path, source="https://example.org/dist/mirrorgrad_jax-0.1.0-py3-none-any.whl")
    assert pip[-1] == f"{project} @ https://example.org/dist/mirrorgrad_jax-0.1.0-py3-none-any.whl"
    (tmp_path / "checkout").mkdir()
    (pip,) = _run_install_cell(path, monkeypatch, tmp_path, source="checkout")
    assert pip[-1] == f"{project} @ {(tmp_path / 'checkout').resolve().as_uri()}"


def test_every_notebook_has_the_same_install_cell_but_for_its_extras():
    """The cells differ only in the extras they install and the comment line that says why."""

    def common(path: pathlib.Path) -> str:
        source = _install_cell(path).replace(f"mirrorgrad-jax[{EXTRAS.get(path.name[:2], 'plots')}]", "mirrorgrad-jax[EXTRAS]")
        return "\n".join(line for line in source.splitlines() if "extra" not in line or not line.startswith("#"))

    assert len({common(p) for p in NOTEBOOKS}) == 1
