"""Namespace package: the runtime's ``azureml.contrib.services`` shim beside any other azureml."""

# pkgutil-style, like the azureml-* distributions: a user's own azureml packages (on sys.path
# before the runtime) and this shim share the ``azureml`` name instead of hiding each other.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
