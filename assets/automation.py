"""Declarative automation shared by the global data assets.

Eager: rematerialise when an upstream asset changed (after the landing sensor's ingest runs),
but never past a failed blocking check upstream; Dagster only enforces blocking checks inside
one run, so automated runs must ask for it explicitly.
"""

import dagster as dg

EAGER_BEHIND_GATES = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
