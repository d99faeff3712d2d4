"""Launch: submit train, tune, eval, export and serve as Ray jobs; list them, stop them, tail their logs."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import streamlit as st

from raytune_ft.config import InputError

from ..common import jobs_address, t
from ..jobs import ACTIONS, command_args, job_client, list_jobs, run_dir_of, stop_job, submit, tail_logs

__all__ = ["render"]

_REFRESH_S = 3.0


def render() -> None:
    st.title(t("nav.launch"))
    try:
        address, local = jobs_address()
        client = job_client(address)
    except (InputError, ConnectionError, RuntimeError) as err:
        st.error(str(err))
        return
    st.caption(f"{t('launch.target')}: {address}" + (f" ({t('launch.local')})" if local else ""))
    _submit_form(client, local)
    _jobs(client)


def _submit_form(client: object, local: bool) -> None:
    with st.form("launch"):
        action = st.selectbox(t("launch.action"), ACTIONS, key="launch_action")
        config = st.text_input(t("launch.config"), value=st.session_state.get("config_path", "configs/quickstart.yaml"))
        overrides = st.text_input(t("launch.overrides"), placeholder="train.max_steps=10 scaling.num_workers=1")
        checkpoint = st.text_input(t("launch.checkpoint"))
        out = st.text_input(t("launch.out"))
        sent = st.form_submit_button(t("launch.submit"), type="primary")
    if not sent:
        return
    try:
        pairs, chosen = shlex.split(overrides), config.strip() or None
        args = command_args(action, chosen, pairs, checkpoint.strip() or None, out.strip() or None)
        run_dir = run_dir_of(chosen, pairs, Path.cwd()) if action in ("train", "tune") else None
        job_id = submit(client, args, local, Path.cwd(), run_dir, chosen)
    except (InputError, ValueError, RuntimeError) as err:
        st.error(str(err))
        return
    st.session_state["selected_job"] = job_id
    if run_dir:
        st.session_state["monitor_run"] = run_dir
    st.success(f"{t('launch.submitted')}: {job_id} (`raytune-ft {shlex.join(args)}`)")


@st.fragment(run_every=_REFRESH_S)
def _jobs(client: object) -> None:
    st.subheader(t("launch.jobs"))
    rows = list_jobs(client)
    if not rows:
        st.info(t("launch.no_jobs"))
        return
    st.dataframe(
        [{"job": r.submission_id, "command": r.action, "status": r.status,
          "started": time.strftime("%H:%M:%S", time.localtime(r.start_time)) if r.start_time else "-",
          "run": r.run_dir or "-", "message": r.message} for r in rows],
        hide_index=True, width="stretch",
    )  # fmt: skip
    ids = [r.submission_id for r in rows]
    chosen = st.session_state.get("selected_job")
    job = st.selectbox(t("launch.job"), ids, index=ids.index(chosen) if chosen in ids else 0)
    st.session_state["selected_job"] = job
    if st.button(t("launch.stop"), disabled=next(r for r in rows if r.submission_id == job).status not in
                 ("PENDING", "RUNNING")):  # fmt: skip
        stop_job(client, job)
        st.info(t("launch.stopped"))
    st.caption(f"{t('launch.logs')}: {job}")  # the Job box is an input, so its value is named here too
    st.code(tail_logs(client, job) or "-", language=None)
