"""Declarative automation shared by the global data assets.

Eager: rematerialise when an upstream asset changed (after the landing sensor's ingest runs),
but never past a failed blocking check upstream; Dagster only enforces blocking checks inside
one run, so automated runs must ask for it explicitly. Each blocking check runs in its asset's
own step, so an automated run of the asset evaluates it and what follows can be planned with it.
"""

import dagster as dg

EAGER_BEHIND_GATES = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()

# Preference pairs are the fine-tuned model's answers on corpus records: they follow the model
# (and the preference files and config), not each corpus change, which reaches them through the
# retrained model. Following the corpus too would rebuild them with the model that the new data
# has just made stale, in the same run as the tokenisation whose gate they need.
FOLLOWS_THE_MODEL = EAGER_BEHIND_GATES.ignore(
    dg.AssetSelection.assets("deduplicated_corpus", "augmented_corpus")
)
