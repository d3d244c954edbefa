"""Hub access that fails fast and clearly: paths that look local are never sent to the hub, and a hub id read while
the hub is unreachable (offline, no network, ``HF_HUB_OFFLINE=1``) fails within seconds naming the local-file
alternative, instead of minutes of retries and a ``ConnectionError`` traceback."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from safetune.core.errors import EnvironmentProblem, MissingInputError

# public hub datasets -> the environment variable the shipped configs read a local copy from
HUB_ENV = {
    "walledai/XSTest": "SAFETUNE_XSTEST (a local xstest_prompts.csv)",
    "walledai/AdvBench": "SAFETUNE_ADVBENCH (a local harmful_behaviors.csv)",
    "walledai/HarmBench": "SAFETUNE_HARMBENCH (a local harmbench_behaviors_text_all.csv)",
    "JailbreakBench/JBB-Behaviors": "SAFETUNE_JBB_HARMFUL / SAFETUNE_JBB_BENIGN (local behaviors CSVs)",
    "PKU-Alignment/PKU-SafeRLHF": "SAFETUNE_PKU (a local PKU-SafeRLHF .jsonl)",
    "Anthropic/hh-rlhf": "SAFETUNE_HH_HELPFUL (a local helpful-base test.jsonl.gz)",
}
LOCAL_SUFFIXES = (
    ".jsonl",
    ".json",
    ".csv",
    ".tsv",
    ".parquet",
    ".gz",
    ".txt",
    ".yaml",
    ".yml",
    ".safetensors",
    ".jinja",
)
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def looks_local(path: str) -> bool:
    """A path the user meant as a file or directory: absolute, ``./``/``../``/``~``, or with a file extension."""
    p = str(path)
    if p.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(p):
        return True
    return Path(p).suffix.lower() in LOCAL_SUFFIXES or "".join(Path(p).suffixes[-2:]).lower() in LOCAL_SUFFIXES


def offline_requested() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


@lru_cache(maxsize=4)
def _reachable(endpoint: str, timeout: float) -> bool:
    url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine reach the hub (``HF_ENDPOINT``, default huggingface.co) right now? Cached per process."""
    if offline_requested():
        return False
    return _reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


def require_hub(repo_id: str, *, what: str = "dataset") -> None:
    """Raise unless ``repo_id`` may be fetched from the hub: a local-looking path that does not exist, or an
    unreachable hub, fails now with the fix."""
    if looks_local(repo_id):
        raise MissingInputError(
            f"{repo_id} does not exist (it looks like a local path, so it is not looked up on the hub).",
            hint="check the path (relative paths start from the directory you run the command in)",
        )
    if not hub_reachable():
        env = HUB_ENV.get(repo_id)
        alt = f"set {env}" if env else "point the setting at a local copy"
        raise EnvironmentProblem(
            f"{what} {repo_id!r} would be read from the Hugging Face hub, which this machine cannot reach "
            f"({'offline mode is set' if offline_requested() else 'no connection'}).",
            hint=f"use a local file instead: {alt}",
        )
