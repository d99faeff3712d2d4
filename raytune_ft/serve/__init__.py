"""Serve stage: putting trained models in front of people. A terminal chat, and the OpenAI-compatible
endpoint on Ray Serve with vLLM replicas (``build_app`` for Serve YAML, ``run_server`` for the CLI).

Importing this package stays light: vLLM and Ray Serve load only when an app is built.
"""

from .adapters import AdapterCatalog, InvalidModelName, UnknownModel
from .app import APP_NAME, build_app, load_plan, run_server, start_server
from .chat import Chatter, HFChatter, VllmChatter, generate_reply, interactive_chat
from .plan import API_KEY_ENV, ServePlan, plan_serving

__all__ = [
    "API_KEY_ENV",
    "APP_NAME",
    "AdapterCatalog",
    "Chatter",
    "HFChatter",
    "InvalidModelName",
    "ServePlan",
    "UnknownModel",
    "VllmChatter",
    "build_app",
    "generate_reply",
    "interactive_chat",
    "load_plan",
    "plan_serving",
    "run_server",
    "start_server",
]
