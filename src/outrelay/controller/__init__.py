"""The controller: Registry, Policy, Audit and Enrollment over one SQLite store.

``store.Store`` owns all SQL; the services (``registry``, ``policy_service``,
``audit``) are thin over it; ``auth`` maps methods to roles; ``server``
assembles and runs everything (``run(config)`` mirrors ``outrelay
controller``). See docs/controller.md.
"""
