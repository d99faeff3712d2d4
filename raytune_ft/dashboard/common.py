"""What every page shares: the sidebar settings (read with defaults, so a page also runs alone, as
in tests), the translated label lookup, and the one Jobs API address (the panel's local Ray unless
the user gave a cluster)."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from .i18n import LANGUAGES, TEXT
from .jobs import local_ray_address

__all__ = ["ADDRESS_ENV", "SETTINGS", "jobs_address", "setting", "t"]

ADDRESS_ENV = "RAYTUNE_FT_DASHBOARD_ADDRESS"
"""``raytune-ft dashboard --address`` hands the cluster address to the panel through this variable."""

SETTINGS: dict[str, Any] = {
    "lang": "en",
    "ray_address": os.environ.get(ADDRESS_ENV, ""),
    "runs_root": "./saves",
    "endpoint": "http://127.0.0.1:8000/v1",
    "api_key": "",
}
"""Sidebar settings and their defaults (an empty ray_address means the panel's own local Ray)."""


def setting(name: str) -> Any:
    return st.session_state.get(name, SETTINGS[name])


def t(key: str) -> str:
    """``key``'s label in the chosen language (English when a translation is missing)."""
    lang = setting("lang")
    return TEXT.get(lang if lang in LANGUAGES else "en", {}).get(key) or TEXT["en"][key]


@st.cache_resource(show_spinner="starting a local Ray ...")
def _local_address() -> str:
    return local_ray_address()


def jobs_address() -> tuple[str, bool]:
    """(Jobs API address, whether it is the panel's own local Ray)."""
    given = str(setting("ray_address")).strip()
    if given:
        return (given if "://" in given else f"http://{given}"), False
    return _local_address(), True
