"""Runs in the ingress replica process: the OpenAI HTTP API (`routes.py` behind `http_guard.py`),
request dispatch to one model or a pipeline (`dispatch.py`, `orchestration/`), the model handles
(`model_client.py`), tenancy (`tenancy/`), and the Ray Serve deployment itself (`deployment.py`)."""
