"""The Ray Serve application, one package per process.

- `app.py`: the builder (`import_path: deployments.app:build_app`); runs where Serve builds the
  application (the controller's build task, or `serve run`'s process).
- `ingress/`: the ingress replica process: the OpenAI HTTP API, pipelines, tenancy.
- `model/`: each model replica process: load state, drain, OpenAI serving over an engine.
- `engine/`: the engine adapter (vLLM), run inside the model replica process; its AMX extension
  runs in vLLM's own worker process.
- `model_directory.py`, `quota_store.py`: one small replica process each, shared by the others;
  `desired_state_store.py`: where the directory keeps desired load states (Ray's GCS), in its process.

What every process shares (wire models, errors, config, typed contracts) is in `serve_app`.
"""
