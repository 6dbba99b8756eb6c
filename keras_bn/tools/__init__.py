"""Tools over a trained model's BN layers: `freezing` (freeze, unfreeze for fine-tuning),
`inspection` (the summary table) and `table` (aligned text tables)."""
