"""Training engine: trainer loop, distribution, checkpoints, MLflow tracking."""
