"""Kubernetes (KubeRay on AWS EKS) deployment of the inference service.

`python -m k8s.render` renders one RayService per preset from serve_config.yaml and presets/.
"""
