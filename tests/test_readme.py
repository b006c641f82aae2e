"""The README's quickstart runs as written."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_block_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README-quickstart", "exec"), namespace)
    params = namespace["params"]
    # The block fits w on 100 steps of a consistent least-squares problem; it must have moved.
    assert float(abs(params["w"]).sum()) > 0.1
    assert "implicit penalty" in capsys.readouterr().out
