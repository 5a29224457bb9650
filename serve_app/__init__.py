"""What every process of the application shares, Ray-free: configuration (`config/`), the OpenAI
wire models (`protocol/`, `tools.py`), errors, the typed contracts that cross Ray hops
(`contracts.py`, `engine_api.py`), SSE framing, the drain switch and the metrics interfaces.

The processes themselves are in `deployments/` (one package each)."""
