"""Dashboard helpers: session-state keys, cached model handles, shared widgets and Plotly figure builders.

Imported only by `app.py` and `pages/`; the library (`minillm_core`) never imports this package or streamlit.
"""
