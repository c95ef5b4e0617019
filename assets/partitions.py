"""Partitions: each landing file of the per-file data assets, and each prompt variant of the prompt evaluations.

Landing files: the key is the file's path under landing/. Prompt variants: the key is the
variant's name in the `prompts:` list; `prompt_variants` holds every variant (the config source),
`prompts_base` / `prompts_fine_tuned` the ones scored on that model kind. All four are dynamic: the
keys follow the files and the config the instance has seen (`assets.sources.sync_prompt_partitions`),
not the YAML the code location happened to load with, so a per-run override or another config
(the tests') gets its own variants.
"""

import dagster as dg

landing_files = dg.DynamicPartitionsDefinition(name="landing_files")
prompt_variants = dg.DynamicPartitionsDefinition(name="prompt_variants")
prompts_by_model = {
    "base": dg.DynamicPartitionsDefinition(name="prompts_base"),
    "fine_tuned": dg.DynamicPartitionsDefinition(name="prompts_fine_tuned"),
}
