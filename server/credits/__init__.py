"""Credits: the ledger, its audit, and the credits API."""
