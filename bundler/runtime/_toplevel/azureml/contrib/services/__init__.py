"""Azure ML's ``azureml.contrib.services`` API for @rawhttp entry scripts, served by the runtime."""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)
