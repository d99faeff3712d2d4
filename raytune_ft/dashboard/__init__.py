"""Dashboard stage: the Streamlit control panel over everything the CLI does.

Configure writes the CLI's own YAML through the one config loader; Launch submits CLI commands as
Ray jobs through the Jobs API (a local Ray by default, any cluster by address); Monitor, Sweeps and
Export read the run folders training and tuning leave behind; Chat talks to the serve endpoint
through the ``openai`` client. The pure logic lives in ``forms``, ``jobs``, ``runs`` and ``endpoint``,
testable without a browser; ``views`` (one module per page) only lay it out. Streamlit is imported by
the views, ``common`` and ``app`` only.
"""

from pathlib import Path

__all__ = ["APP_FILE"]

APP_FILE = Path(__file__).with_name("app.py")
"""The Streamlit script ``raytune-ft dashboard`` runs (``streamlit run`` takes a file)."""
