"""Language-model loaders and exact (original-numerics) embedding: ESM-2 and DNABERT-S."""
