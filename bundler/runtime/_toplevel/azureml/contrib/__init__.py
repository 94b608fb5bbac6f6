"""Namespace package ``azureml.contrib`` (pkgutil-style, shared with other distributions)."""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)
