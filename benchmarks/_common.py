"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform


def machine() -> dict:
    """What the numbers were measured on."""
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        gpu = None
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model or platform.processor() or platform.machine(), "gpu": gpu}
