"""Serve stage: putting trained models in front of people. Today a terminal chat; the
OpenAI-compatible Ray Serve app (``build_app``) lands here too."""

from .chat import generate_reply, interactive_chat

__all__ = ["generate_reply", "interactive_chat"]
