"""Model lifecycle: the registry of model versions, evaluation, the promotion gate, rollback and
the continuous-training cycle (docs/model-registry.md)."""
