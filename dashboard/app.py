"""``streamlit run dashboard/app.py``: the same panel as ``raytune-ft dashboard`` (which binds it to
127.0.0.1; so does ``.streamlit/config.toml`` when it is run from the repository root)."""

from raytune_ft.dashboard.app import main

main()
