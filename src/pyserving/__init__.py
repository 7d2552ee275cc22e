"""pyserving: a production model server, drop-in compatible with tensorflow_model_server."""

from pyserving.core.handle import ServableHandle, ServableRequest
from pyserving.core.loader import Loader, ResourceEstimate
from pyserving.core.manager import AspiredVersionsManager, ManagerOptions
from pyserving.core.monitor import ManagerState, ServableState, ServableStateMonitor
from pyserving.core.source import ServableData, ServableId, Source, SourceAdapter, Target
from pyserving.errors import Code, ServingError

__version__ = "0.1.0"

__all__ = [
    "AspiredVersionsManager",
    "Code",
    "Loader",
    "ManagerOptions",
    "ManagerState",
    "ResourceEstimate",
    "ServableData",
    "ServableHandle",
    "ServableId",
    "ServableRequest",
    "ServableState",
    "ServableStateMonitor",
    "ServingError",
    "Source",
    "SourceAdapter",
    "Target",
    "__version__",
]
