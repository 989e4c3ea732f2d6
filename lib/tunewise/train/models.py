"""timm models by name: checked up front, built with the trial's regularization,
pretrained weights from the hub or from a local file the user names."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import timm
import torch

from tunewise.errors import ConfigError, SetupError, did_you_mean


@lru_cache(maxsize=1)
def _all_models() -> tuple[str, ...]:
    return tuple(timm.list_models())


def check_model_name(name: str, where: str = "model") -> None:
    if not isinstance(name, str) or not timm.is_model(name):
        # timm also accepts 'name.tag' (e.g. 'convnext_tiny.fb_in22k'): check the architecture part.
        arch = name.split(".")[0] if isinstance(name, str) else name
        if isinstance(arch, str) and timm.is_model(arch):
            return
        raise ConfigError(
            f"{where}: {name!r} is not a timm model{did_you_mean(str(name), _all_models(), cutoff=0.7)}; "
            "allowed: any name in timm.list_models() (tiny test models: timm.list_models('test_*'))"
        )


def check_pretrained_file(path: str | None, where: str = "pretrained_file") -> None:
    if path and not Path(path).expanduser().is_file():
        raise ConfigError(f"{where}: {path} does not exist; allowed: a local .safetensors/.pth/.bin weights file")


HUB_PROBE_TIMEOUT_S = 3.0  # an answer from the hub's host within this, or it counts as offline
_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _hub_weights_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in _HUB_FILES)


def _offline_reason() -> str | None:
    """Why the hub cannot be reached now (None: it answered, or a proxy decides)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None  # only the proxy knows: leave it to the hub client
    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"no connection to {host}:{port} within {HUB_PROBE_TIMEOUT_S:g} s ({exc.strerror or type(exc).__name__})"
    return None


def check_hub_reachable(name: str) -> None:
    """Before timm fetches ``name``'s pretrained weights from the Hugging Face hub: when they
    are not cached and the hub is out of reach (HF_HUB_OFFLINE, or no connection within a
    few seconds), one SetupError at once, instead of the hub client's ~45 s of retries."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # no pretrained config: timm says so itself
        return
    repo_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo_id or _hub_weights_cached(repo_id):
        return
    reason = _offline_reason()
    if reason:
        raise SetupError(
            f"pretrained: could not load pretrained weights for {name!r}: they are not in the local cache and the "
            f"Hugging Face hub is out of reach ({reason}); allowed: pretrained: false, or pretrained_file: a local "
            f"weights file (e.g. --set pretrained_file=/path/to/model.safetensors, fetched where there is network with "
            f"`huggingface-cli download {repo_id} model.safetensors`)"
        )


def build_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    dropout: float = 0.0,
    drop_path: float = 0.0,
) -> torch.nn.Module:
    kwargs = {"num_classes": num_classes, "drop_rate": dropout}
    if drop_path > 0:
        kwargs["drop_path_rate"] = drop_path
    if pretrained_file:
        # timm loads the file through its own pretrained path (head re-sized to num_classes).
        kwargs["pretrained_cfg_overlay"] = {"file": str(Path(pretrained_file).expanduser())}
    if pretrained and not pretrained_file:
        check_hub_reachable(name)
    try:
        model = timm.create_model(name, pretrained=pretrained or bool(pretrained_file), **kwargs)
    except TypeError as exc:
        if "drop_path_rate" in str(exc):
            raise ConfigError(f"drop_path: model {name!r} has no stochastic depth; allowed: drop_path 0 for this model") from exc
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained_file:
            raise ConfigError(
                f"pretrained_file: could not load {pretrained_file} into {name!r} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); allowed: weights saved from this architecture"
            ) from exc
        if pretrained:
            raise SetupError(
                f"pretrained: could not load pretrained weights for {name!r} ({type(exc).__name__}: {str(exc)[:200]}); "
                "allowed: pretrained: false, or pretrained_file: a local weights file"
            ) from exc
        raise
    return model


def check_weights_match(model: torch.nn.Module, name: str, path: str) -> None:
    """timm loads pretrained files leniently (unexpected keys are only a warning), so a
    file from another architecture would silently train from scratch: refuse it."""
    from timm.models import load_state_dict

    state = load_state_dict(str(Path(path).expanduser()))
    own = model.state_dict()
    matched = sum(1 for k, v in own.items() if k in state and tuple(state[k].shape) == tuple(v.shape))
    if matched < 0.5 * len(own):
        raise ConfigError(
            f"pretrained_file: could not load {path} into {name!r}: only {matched} of its {len(own)} tensors "
            "match by name and shape; allowed: weights saved from this architecture"
        )


def model_norm(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the model's pretrained weights expect (timm's config for it)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
