"""What lasts: states, the ledger, the manifest and results tables, verified files on disk."""
