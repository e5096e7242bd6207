"""The policy model as a generation backend: the one place that turns a ``base_model`` manifest
(plus an optional adapter) into something that completes chats.

Assets, checks and the evaluation stage all generate with the policy under different adapters
(base, SFT, RL); building it here keeps them on the same loader and the same artifacts home.
"""

from __future__ import annotations

from .backends import Backend, BackendSpec, make_backend
from .settings import home


def policy_backend(base_model: dict | str, adapter: str | None = None, exact: bool = False) -> Backend:
    """The policy base (a manifest with ``path``, or the path itself), optionally under a PEFT adapter.
    ``exact``: float32 whatever the profile's CPU dtype — for a base compared with an adapter (which is
    always float32: ``modelio.inference_options``)."""
    path = base_model["path"] if isinstance(base_model, dict) else base_model
    return make_backend(BackendSpec(model=path, adapter=adapter, exact=exact), home())


def checkpoint_backends(base_model: dict, sft_adapter: dict, rl_adapter: dict) -> dict[str, Backend]:
    """The three policies every evaluation compares: ``base``, ``sft`` and ``rl``, in one dtype."""
    return {
        "base": policy_backend(base_model, exact=True),
        "sft": policy_backend(base_model, sft_adapter["path"]),
        "rl": policy_backend(base_model, rl_adapter["path"]),
    }
