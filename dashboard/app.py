"""``streamlit run dashboard/app.py``: the same panel as ``raytune-ft dashboard`` (which binds it to
127.0.0.1; pass ``--server.address 127.0.0.1`` here to do the same)."""

from raytune_ft.dashboard.app import main

main()
