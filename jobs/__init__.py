"""arq worker: job functions and cron sweeps, sharing the server's services."""
