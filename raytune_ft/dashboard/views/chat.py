"""Chat: a multi-turn, streamed conversation with a model or adapter the endpoint lists."""

from __future__ import annotations

import streamlit as st

from ..common import setting, t
from ..endpoint import client_for, list_models, stream_reply

__all__ = ["render"]


def render() -> None:
    st.title(t("nav.chat"))
    endpoint = str(setting("endpoint"))
    client = client_for(endpoint, setting("api_key") or None)
    try:
        models = list_models(client)
    except Exception as err:  # any failure to reach the endpoint is shown, not raised
        st.error(f"{t('chat.no_endpoint')} {endpoint}: {type(err).__name__}: {err}")
        st.info(t("chat.no_endpoint_hint"))
        return
    model = st.selectbox(t("chat.models"), models, key="chat_model")
    left, middle, right = st.columns(3)
    temperature = left.slider(t("chat.temperature"), 0.0, 2.0, 0.7, 0.05, key="chat_temperature")
    top_p = middle.slider(t("chat.top_p"), 0.05, 1.0, 0.95, 0.05, key="chat_top_p")
    max_tokens = int(right.number_input(t("chat.max_tokens"), 1, 4096, 256, key="chat_max_tokens"))
    history: list[dict[str, str]] = st.session_state.setdefault("chat_history", [])
    if st.button(t("chat.clear")):
        history.clear()
    for message in history:
        st.chat_message(message["role"]).write(message["content"])
    prompt = st.chat_input(t("chat.input"))
    if not prompt:
        return
    history.append({"role": "user", "content": prompt})
    st.chat_message("user").write(prompt)
    with st.chat_message("assistant"):
        try:
            answer = st.write_stream(stream_reply(client, model, history, temperature, top_p, max_tokens))
        except Exception as err:  # a refused request (400) is shown with the server's message
            history.pop()
            st.error(f"{type(err).__name__}: {err}")
            return
    history.append({"role": "assistant", "content": str(answer)})
