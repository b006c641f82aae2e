"""What every micro-benchmark report shares: the machine line and where the text goes."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version


def machine_line() -> str:
    """``Machine: ...`` with the device, jax / jaxlib versions and XLA_FLAGS (markdown line break at the end)."""
    import jax

    return (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, device {jax.devices()[0]}, "
        f"jax {version('jax')} / jaxlib {version('jaxlib')}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '(unset)')!r}  "
    )


def emit(text: str, out: str | None) -> None:
    """Prints the report and, with ``out``, appends it to that markdown file."""
    print(text)
    if out:
        with open(out, "a") as f:
            f.write("\n" + text + "\n")
