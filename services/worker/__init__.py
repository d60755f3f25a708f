"""The Celery worker: answers queued jobs with ONNX Runtime ensembles from the model registry."""
