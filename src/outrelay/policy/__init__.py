"""Policy evaluation shared by every component (control.md §6).

``PolicyEngine`` holds rules indexed by target and answers ``decide``;
``glob_match`` is the ``*`` matcher; ``outrelay.policy.convert`` maps rules
to and from the ``outrelay.control.v1.PolicyRule`` message;
``outrelay.policy.names`` holds the service-name rule and the pattern shapes.
"""

from outrelay.policy.engine import (
    NO_MATCH,
    Action,
    Decision,
    P2PMode,
    PolicyEngine,
    RelayMode,
    Rule,
    Verdict,
    combine_p2p,
)
from outrelay.policy.glob import glob_match, has_wildcard

__all__ = [
    "NO_MATCH",
    "Action",
    "Decision",
    "P2PMode",
    "PolicyEngine",
    "RelayMode",
    "Rule",
    "Verdict",
    "combine_p2p",
    "glob_match",
    "has_wildcard",
]
