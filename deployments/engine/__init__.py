"""The engine adapter, run inside the model replica process: vLLM behind the `Engine` interface
(`vllm_engine.py`), the per-device start gate and the GPU driver check. `amx_permission.py` is
imported by vLLM's own worker process (its `worker_extension_cls`)."""
