"""`routemesh-operator`: run the operator (kopf, with the handlers' own registry).

Reads `OperatorSettings` from the environment once, here, and hands them down. With
`ROUTEMESH_OPERATOR_STANDALONE=false` (the chart's default for more than one replica) replicas
coordinate through kopf peering, so only one of them handles events at a time.
"""

from __future__ import annotations

import asyncio
import logging

from routemesh_operator.handlers import run_operator
from routemesh_operator.settings import OperatorSettings


def main() -> None:
    """Run until interrupted."""
    settings = OperatorSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(run_operator(settings))


if __name__ == "__main__":
    main()
