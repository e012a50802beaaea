"""Measuring what the trial engine keeps, for the engine-option and memory-estimate tests."""

import torch


def saved_bytes(engine, x, y) -> int:
    """Bytes of the tensors autograd keeps for backward, parameters aside."""
    params = {p.untyped_storage().data_ptr() for p in engine.model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        engine.forward(x, y)
    return sum(kept.values())
