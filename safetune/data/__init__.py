"""Preference data: one adapter module per raw source, all producing :class:`PreferenceExample`."""

from __future__ import annotations

from safetune.data.mix import DataBundle, build_preference_data

__all__ = ["DataBundle", "build_preference_data"]
