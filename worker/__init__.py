"""The GPU side: Celery tasks around plain functions that train and evaluate CIFAR-10 models."""
