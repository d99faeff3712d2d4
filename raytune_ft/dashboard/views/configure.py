"""Configure: load a YAML (ours or LLaMA-Factory's), edit the common fields, see every problem under
its field as you type, preview rendered samples, and save the YAML the CLI and Launch run."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import streamlit as st

from raytune_ft.config import ConfigError, InputError, JobConfig, dump_config, load_config
from raytune_ft.data import dataset_names
from raytune_ft.data.preview import render_samples
from raytune_ft.models import load_tokenizer, resolve_model_source

from ..common import t
from ..forms import (
    FORM_KEYS,
    choices,
    errors_by_key,
    field_info,
    form_values,
    parse_value,
    save_config,
    show_value,
    updated_config,
)

__all__ = ["FORM_PREFIX", "render"]

FORM_PREFIX = "form:"
"""Session-state prefix of the form widgets (``form:train.learning_rate``)."""
_SAMPLES = 3
_START = "configs/quickstart.yaml"


def render() -> None:
    st.title(t("nav.configure"))
    _load_box()
    base = JobConfig.model_validate(st.session_state.setdefault("cfg_base", {}))
    _fill_missing(base)
    cfg, errors = _validated(base)
    if errors:
        shown = {key for keys in FORM_KEYS.values() for key in keys}
        elsewhere = "\n".join(f"{key}: {text}" if key else text for key, text in errors.items() if key not in shown)
        st.error(t("configure.invalid") + (f"\n\n{elsewhere}" if elsewhere else ""))
    for section, keys in FORM_KEYS.items():
        with st.expander(t(f"section.{section}"), expanded=section in ("model", "dataset")):
            for key in keys:
                _widget(key)
                if key in errors:
                    st.error(f"{key}: {errors[key]}")
    if cfg is not None:
        _preview(cfg)
        _save_box(cfg)


def _load_box() -> None:
    path = st.text_input(t("configure.load_path"), value=_START, key="cfg_load_path")
    first_visit = "cfg_base" not in st.session_state and Path(path).is_file()
    if not (st.button(t("configure.load")) or first_visit):
        return
    try:
        cfg = load_config(path)
    except InputError as err:
        st.error(str(err))
        return
    st.session_state["cfg_base"] = cfg.model_dump(mode="json")
    _fill_missing(cfg, replace=True)
    st.session_state["config_path"] = path
    st.success(f"{t('configure.loaded')}: {path}")


def _fill_missing(cfg: JobConfig, replace: bool = False) -> None:
    """Widget state from ``cfg`` (set before the widgets are drawn, as Streamlit requires)."""
    for key, value in form_values(cfg).items():
        if replace or FORM_PREFIX + key not in st.session_state:
            st.session_state[FORM_PREFIX + key] = value if _native(key) else show_value(value)


def _native(key: str) -> bool:
    """Whether the widget holds the value itself (choice, checkbox, list) rather than YAML text."""
    return key == "data.dataset" or choices(key) is not None or field_info(key).annotation is bool


def _values() -> dict[str, Any]:
    values = {}
    for keys in FORM_KEYS.values():
        for key in keys:
            raw = st.session_state[FORM_PREFIX + key]
            values[key] = raw if _native(key) else parse_value(raw)
    return values


def _validated(base: JobConfig) -> tuple[JobConfig | None, dict[str, str]]:
    try:
        return updated_config(base, _values()), {}
    except ConfigError as err:
        return None, errors_by_key(err)
    except InputError as err:
        return None, {"": str(err)}


def _widget(key: str) -> None:
    info = field_info(key)
    wkey, help_text = FORM_PREFIX + key, info.description
    options = choices(key)
    if key == "data.dataset":
        folder = st.session_state.get(FORM_PREFIX + "data.dataset_dir") or None
        try:
            known = dataset_names(folder)
        except InputError as err:
            st.error(str(err))
            known = []
        chosen = list(st.session_state[wkey])
        st.multiselect(key, options=[*known, *(c for c in chosen if c not in known)], key=wkey, help=help_text)
    elif options is not None:
        st.selectbox(key, options=list(options), key=wkey, help=help_text)
    elif info.annotation is bool:
        st.checkbox(key, key=wkey, help=help_text)
    else:
        st.text_input(key, key=wkey, help=help_text, placeholder=_placeholder(info.annotation))


def _placeholder(annotation: Any) -> str:
    return "(none)" if type(None) in typing.get_args(annotation) else ""


def _preview(cfg: JobConfig) -> None:
    with st.expander(t("configure.yaml")):
        st.code(dump_config(cfg), language="yaml")
    if not st.button(t("configure.preview"), help=t("configure.preview_help")):
        return
    try:
        with st.spinner("..."):
            tokenizer = _tokenizer(cfg.model.source, cfg.model.cache_dir, cfg.model.trust_remote_code)
            samples = render_samples(cfg.data, tokenizer, _SAMPLES, cfg.method.rows)
    except InputError as err:
        st.error(str(err))
        return
    for path, row, text in samples:
        st.caption(f"{path} row {row}")
        st.code(text, language=None, wrap_lines=True)


@st.cache_resource(show_spinner=False, max_entries=4)
def _tokenizer(source: str, cache_dir: str | None, trust_remote_code: bool) -> Any:
    """The model's own tokenizer; ``render_samples`` installs the config's template itself."""
    folder = resolve_model_source(source, cache_dir)
    return load_tokenizer(folder, require_chat_template=False, trust_remote_code=trust_remote_code)


def _save_box(cfg: JobConfig) -> None:
    st.success(t("configure.valid"))
    left, right = st.columns([3, 1])
    path = left.text_input(t("configure.save_path"), value="configs/my_run.yaml", key="cfg_save_path")
    overwrite = right.checkbox(t("configure.overwrite"), key="cfg_overwrite")
    if not st.button(t("configure.save"), type="primary"):
        return
    try:
        saved = save_config(cfg, path, overwrite)
    except InputError as err:
        st.error(str(err))
        return
    st.session_state["config_path"] = str(saved)
    st.success(f"{t('configure.saved')} `raytune-ft train {saved}`")
