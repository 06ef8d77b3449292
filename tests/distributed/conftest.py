"""Every test in this folder launches or joins a process group: mark it ``distributed``.

Select them with ``-m distributed``, leave them out with ``-m "not distributed"``.
"""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/distributed/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.distributed)
