"""The Streamlit script behind ``raytune-ft dashboard`` (and ``streamlit run dashboard/app.py``):
the sidebar settings and the page navigation."""

from __future__ import annotations

import streamlit as st

from raytune_ft.dashboard.common import SETTINGS, t
from raytune_ft.dashboard.i18n import LANGUAGES
from raytune_ft.dashboard.views import chat, configure, export, launch, monitor, sweeps
from raytune_ft.dashboard.views.configure import FORM_PREFIX

__all__ = ["main"]

PAGES = {"configure": configure.render, "launch": launch.render, "monitor": monitor.render,
         "sweeps": sweeps.render, "chat": chat.render, "export": export.render}  # fmt: skip


def main() -> None:
    st.set_page_config(page_title="raytune-ft", page_icon=":material/tune:", layout="wide")
    _sidebar()
    pages = [st.Page(render, title=t(f"nav.{name}"), url_path=name, default=name == "configure")
             for name, render in PAGES.items()]  # fmt: skip
    st.navigation(pages).run()


def _sidebar() -> None:
    for name, default in SETTINGS.items():
        st.session_state.setdefault(name, default)
    for key in [key for key in st.session_state if str(key).startswith(FORM_PREFIX)]:
        st.session_state[key] = st.session_state[key]  # keep Configure's edits while another page shows
    with st.sidebar:
        st.markdown(f"### {t('app.title')}")
        st.radio(t("side.language"), list(LANGUAGES), format_func=LANGUAGES.__getitem__, key="lang", horizontal=True)
        st.text_input(t("side.ray_address"), key="ray_address", help=t("side.ray_address_help"),
                      placeholder="local")  # fmt: skip
        st.text_input(t("side.runs_root"), key="runs_root")
        st.text_input(t("side.endpoint"), key="endpoint")
        st.text_input(t("side.api_key"), key="api_key", type="password")


if __name__ == "__main__":
    main()
