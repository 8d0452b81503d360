"""Loaded at interpreter start (PYTHONPATH) by tests/recipes/test_runtime.py: records every
torch.distributed collective a recipe makes, the devices of its tensors and who called it."""

import json
import os
import traceback

if os.environ.get("MMKIT_RECORD_COLLECTIVES"):
    import torch
    import torch.distributed as dist

    _names = (
        "all_reduce",
        "all_gather",
        "all_gather_into_tensor",
        "broadcast",
        "reduce_scatter_tensor",
        "barrier",
        "broadcast_object_list",
        "all_gather_object",
        "gather_object",
        "scatter_object_list",
    )

    def _caller() -> str:
        for frame in reversed(traceback.extract_stack()[:-2]):
            if "/torch/" not in frame.filename:
                return frame.filename
        return "torch"

    def _wrap(name, fn):
        def wrapped(*args, **kwargs):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, list) for t in a if isinstance(t, torch.Tensor)]
            backend = dist.get_backend() if dist.is_initialized() else "none"
            expected = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if backend == "nccl" else "cpu"
            record = {
                "op": name,
                "devices": sorted({str(t.device) for t in tensors}),
                "expected": expected,
                "caller": _caller(),
            }
            path = f"{os.environ['MMKIT_RECORD_COLLECTIVES']}.rank{os.environ.get('RANK', '0')}"
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
            return fn(*args, **kwargs)

        return wrapped

    for _n in _names:
        setattr(dist, _n, _wrap(_n, getattr(dist, _n)))
