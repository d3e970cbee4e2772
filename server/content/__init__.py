"""Generated content: images and videos made by the worker, paid from the ledger."""
