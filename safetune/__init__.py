"""safetune: DPO safety fine-tuning with a per-category safety evaluation."""

__version__ = "0.1.0"

from pathlib import Path as _Path

# Hydra configs live at the repository top level (conf/); installed editable, this resolves there.
CONF_DIR = str(_Path(__file__).resolve().parent.parent / "conf")
