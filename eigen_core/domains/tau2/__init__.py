"""tau²-bench's airline, retail and telecom domains and tasks (needs the ``tau2`` extra).

``Tau2Domain`` wraps tau²'s own environment; ``load_tasks`` converts its task sets; ``to_tau2``
exports any of our tasks in tau²'s format. Registered in the domain registry as ``airline``,
``retail`` and ``telecom``.
"""

from eigen_core.domains.tau2._import import INSTALL_HINT
from eigen_core.domains.tau2.env import Tau2Domain, Tau2Env, tau2_domain
from eigen_core.domains.tau2.tasks import DOMAINS, from_tau2, load_tasks, splits, task_id, to_tau2

__all__ = [
    "DOMAINS",
    "INSTALL_HINT",
    "Tau2Domain",
    "Tau2Env",
    "from_tau2",
    "load_tasks",
    "splits",
    "task_id",
    "tau2_domain",
    "to_tau2",
]
