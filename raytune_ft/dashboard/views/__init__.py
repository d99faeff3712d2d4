"""The panel's pages (not named ``pages``: Streamlit would list such a folder as pages of its own);
each module's ``render()`` draws one page from the sidebar settings."""

__all__: list[str] = []
