"""Runs in each model replica process: the Ray Serve deployment (`server.py`), its Ray-free state
machine (`replica.py`: load, unload, drain, admission), the OpenAI serving logic over an engine
(`serving/`), and stream batching."""
