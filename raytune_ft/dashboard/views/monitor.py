"""Monitor: a run's loss, eval loss, learning rate and tokens/s against step, redrawn as
``metrics.jsonl`` grows; its checkpoints; and what the cluster has."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from raytune_ft.config import InputError

from ..common import jobs_address, setting, t
from ..jobs import cluster_nodes
from ..runs import CURVES, find_runs, list_checkpoints, read_metrics

__all__ = ["render"]

_REFRESH_S = 2.0


def render() -> None:
    st.title(t("nav.monitor"))
    runs = [str(p.resolve()) for p in find_runs(setting("runs_root"))]
    wanted = st.session_state.get("monitor_run")
    if wanted and wanted not in runs:
        runs.insert(0, wanted)  # a job just submitted: its folder appears with the first log line
    if not runs:
        st.info(t("monitor.no_runs"))
    else:
        run = st.selectbox(t("monitor.run"), runs, index=runs.index(wanted) if wanted in runs else 0)
        st.session_state["monitor_run"] = run
        _curves(run)
    _cluster()


_PER_ROW = 4
"""Curves side by side; an online-RL run's further curves go on a second row."""


@st.fragment(run_every=_REFRESH_S)
def _curves(run: str) -> None:
    records = read_metrics(run)
    if not records:
        st.info(t("monitor.waiting"))
        return
    frame = pd.DataFrame(records)
    shown = [name for name in CURVES if name in frame]
    for row in range(0, len(shown), _PER_ROW):
        names = shown[row : row + _PER_ROW]
        for column, name in zip(st.columns(_PER_ROW)[: len(names)], names, strict=True):
            series = frame[["step", name]].dropna().set_index("step")
            with column:
                st.markdown(f"**{name}**")
                st.line_chart(series, height=220)
                st.caption(f"{name}: {len(series)} {t('monitor.points')}, last {series[name].iloc[-1]:.4g}")
    _checkpoints(run)


def _checkpoints(run: str) -> None:
    st.subheader(t("monitor.checkpoints"))
    found = list_checkpoints(Path(run))
    if not found:
        st.caption(t("monitor.no_checkpoints"))
        return
    st.dataframe([{"step": c.step, "adapter": c.adapter, "path": str(c.path)} for c in found], hide_index=True)


def _cluster() -> None:
    st.subheader(t("monitor.cluster"))
    try:
        address, _ = jobs_address()
        st.dataframe(cluster_nodes(address), hide_index=True)
    except (InputError, ConnectionError, RuntimeError) as err:
        st.error(str(err))
