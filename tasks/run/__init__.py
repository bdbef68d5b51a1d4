"""One run: its options, shared context, brakes and budget; how runs are grouped (inbox, shards)."""
