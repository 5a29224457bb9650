"""Serving logic for one model over the `Engine` interface; runs in the model replica process."""
