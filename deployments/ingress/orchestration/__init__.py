"""Multi-model pipelines (critique, ensemble); run in the ingress replica process."""
