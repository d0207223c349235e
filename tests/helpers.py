"""Small builders shared by the data tests."""
from __future__ import annotations

from perturbmerge.config import DataSettings
from perturbmerge.data.base import LoadRequest


def request(seed: int = 0, num_tasks: int = 5, data_dir: str | None = None, backbone: str = "mlp",
            **data: object) -> LoadRequest:
    return LoadRequest(seed, num_tasks, data_dir, backbone, DataSettings(**data))
