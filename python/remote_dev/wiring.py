"""Every registration one feature makes into another, by name, with its reason: the one
place that says which feature plugs into which (as mutagen lists its protocol handlers in
one file).  No feature imports another to reach into it; actions.py imports this module,
so the wiring is in force wherever the actions are.  Order here is order of use: status
parts appear in ``status()`` in this order, launchers are asked in this order.
"""

from __future__ import annotations

from . import alloc, kernels, services
from .status import STATUS_LINES, STATUS_PARTS

# Shells, kernels and notebook servers start as steps of a held Slurm allocation
# (`srun --jobid=JOB --overlap`) instead of on the login node.
services.LAUNCHERS["alloc"] = alloc.launcher

# :RemoteStatus shows the target's shells and services as last seen ...
STATUS_PARTS["services"] = services.status_part
STATUS_LINES["services"] = services.status_lines
# ... and the allocation held for a Slurm target.
STATUS_PARTS["alloc"] = alloc.status_part
STATUS_LINES["alloc"] = alloc.status_lines

# A kernel started as an allocation's step ends with it: its client lets go.
alloc.ON_END["kernel"] = kernels.alloc_ended
