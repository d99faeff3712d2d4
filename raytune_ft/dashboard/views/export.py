"""Export: pick a run's checkpoint, merge it into its base and write it (Hugging Face or GGUF);
the output path is shown with the command that chats with it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from raytune_ft.config import InputError, load_config
from raytune_ft.export import export_checkpoint
from raytune_ft.models import CONFIG_FILE

from ..common import setting, t
from ..runs import find_runs, list_checkpoints

__all__ = ["render"]


def render() -> None:
    st.title(t("nav.export"))
    runs = [run for run in find_runs(setting("runs_root")) if list_checkpoints(run)]
    if not runs:
        st.info(t("export.none"))
        return
    run = st.selectbox(t("export.run"), runs, format_func=str)
    found = list_checkpoints(run)
    checkpoint = st.selectbox(t("export.checkpoint"), found, format_func=lambda c: f"{c.path.name} (step {c.step})")
    fmt = st.radio(t("export.format"), ["hf", "gguf"], horizontal=True)
    gguf_type = st.radio(t("export.gguf_type"), ["f16", "q8_0"], horizontal=True, disabled=fmt != "gguf")
    out = st.text_input(t("export.out"), value=f"exports/{run.name}-{checkpoint.step}-{fmt}")
    overwrite = st.checkbox(t("export.overwrite"))
    if not st.button(t("export.go"), type="primary"):
        return
    try:
        cfg = load_config(checkpoint.path / CONFIG_FILE, [f"export.format={fmt}", f"export.gguf_type={gguf_type}"])
        with st.status(t("export.go"), expanded=True) as status:
            target = export_checkpoint(checkpoint.path, Path(out), cfg.export, overwrite=overwrite, log=st.write)
            status.update(state="complete")
    except InputError as err:
        st.error(str(err))
        return
    st.success(f"{t('export.done')} {target}")
    if fmt == "hf":
        st.code(f'raytune-ft chat --model {target} --prompt "Hello"', language="bash")
