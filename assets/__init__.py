"""Software-defined assets, one module per stage: what exists and what it depends on."""
