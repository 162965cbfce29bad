"""Dynamic batching: single requests in, model-sized batches out, on worker threads.

``batcher.DynamicBatcher`` queues and batches; ``policy.BatchPolicy`` says how. This room knows
nothing of models, gRPC or metrics: a runner callable does the work, and hooks report batches.
"""
