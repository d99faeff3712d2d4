"""Sweeps: a sweep's trials with their state and metric, the best one highlighted, and the metric
plotted against each swept hyperparameter."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from ..common import setting, t
from ..runs import find_sweeps, read_sweep

__all__ = ["render"]

_BEST = "background-color: rgba(33, 195, 84, 0.25)"


def render() -> None:
    st.title(t("nav.sweeps"))
    folders = [str(p) for p in find_sweeps(setting("runs_root"))]
    if not folders:
        st.info(t("sweeps.none"))
        return
    sweep = read_sweep(st.selectbox(t("sweeps.sweep"), folders))
    frame = pd.DataFrame(sweep.trials).rename(columns={"metric": sweep.metric})
    columns = ["trial_id", "status", "step", "total_steps", *sweep.keys, sweep.metric, "loss", "checkpoint"]
    frame = frame[[c for c in columns if c in frame]]
    st.dataframe(frame.style.apply(_highlight(sweep.best_trial), axis=1), hide_index=True, width="stretch")
    if sweep.best_trial is None:
        st.warning(t("sweeps.no_best"))
    else:
        best = frame[frame["trial_id"] == sweep.best_trial].iloc[0]
        drawn = ", ".join(f"{key}={best[key]}" for key in sweep.keys)
        st.success(f"{t('sweeps.best')}: {sweep.best_trial}: {sweep.metric} {best[sweep.metric]:.4g} ({drawn})")
    scored = frame.dropna(subset=[sweep.metric])
    for column, key in zip(st.columns(max(1, len(sweep.keys))), sweep.keys, strict=False):
        with column:
            st.markdown(f"**{sweep.metric}** {t('sweeps.against')} **{key}**")
            st.scatter_chart(scored, x=key, y=sweep.metric, height=240)


def _highlight(best: str | None) -> Any:
    def style(row: pd.Series) -> list[str]:
        return [_BEST if row["trial_id"] == best else "" for _ in row]

    return style
