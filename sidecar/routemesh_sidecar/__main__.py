"""Entry point of the sidecar image: `routemesh-sidecar` or `python -m routemesh_sidecar`.

The only place that reads the environment (through `SidecarSettings`) and configures logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from routemesh_sidecar.app import Sidecar
from routemesh_sidecar.settings import SidecarSettings


def main() -> None:
    """Read settings, configure logging and run the sidecar until interrupted."""
    settings = SidecarSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Sidecar(settings).run_forever())


if __name__ == "__main__":
    main()
