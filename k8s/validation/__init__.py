"""Offline checks for ferry's Dockerfile and Kubernetes manifests; k8s/validate.py is the CLI."""
